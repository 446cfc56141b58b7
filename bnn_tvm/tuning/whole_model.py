"""The whole model decides: timed with a log folder's records against the default schedules, the kernels that
lost set back to their untuned schedules (``settle_with_whole_model``); ``compare_with_default`` only times.

Measured as ``tune`` re-measures kernels: on the board of the key, by estimated cycles on the emulated board
for an aarch64 preset, or here in a process of its own on ``LOCAL_THREADS`` thread(s) (``model_worker``), the
two builds alternating round by round (``timing.interleaved``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms

from .. import targets as _targets
from ..board import request_session
from ..build import compile as compile_model
from ..build import import_model, legalize
from ..runtime import CompiledModel, load
from ..tuning_database import AtomicJSONDatabase, write_atomically
from .settle import SettledFile, replay, schedule_key
from .spaces import tuning_target
from .timing import (
    BOARD_TIMER_RESOLUTION_SEC,
    LOCAL_THREADS,
    MODEL_ROUND_SEC,
    ROUNDS,
    SHARE_REPEATS,
    TIMER_RESOLUTION_SEC,
    faster_beyond_noise,
    interleaved,
)


@dataclass
class WholeModel:
    """The whole model timed with a log folder's records and with the default schedules, and what that decided.

    Attributes
    ----------
    default, tuned : float
        Medians over the rounds, in ``unit``: the default schedules' and the log folder's, as it is now (after
        any revert).
    unit : str
        "ms here, 1 thread", "ms on the board" or "estimated <core> cycles".
    reverted : list of str
        Kernels whose records were set back to their untuned schedules, because the model was not faster.
    note : str
        The decision, in one line.
    kernels : dict
        ``{kernel: (default, tuned)}`` inside the model, in the measurement's own units (seconds, or cycles), as
        the last measurement timed them (when it did: always on the emulated board, here only the first one).
    """

    default: float
    tuned: float
    unit: str
    reverted: list[str] = field(default_factory=list)
    note: str = ""
    kernels: dict = field(default_factory=dict)


def model_worker(spec_path: str, result_path: str) -> None:
    """Time the builds of a spec side by side in this process, on ``LOCAL_THREADS`` threads (``_measure_builds``),
    and, if asked, each kernel inside them (``profiler.per_kernel``, builds alternating)."""
    import numpy as np

    from ..profiler import per_kernel

    spec = json.loads(Path(spec_path).read_text())
    models = [load(path, threads=spec["threads"]) for path in spec["paths"]]
    with np.load(spec["inputs"]) as saved:
        arrays = [saved[name] for name in models[0].signature().names()]
    device = models[0].device
    inputs = [tvm.runtime.tensor(x, device) for x in arrays]
    evaluators = [functools.partial(lambda number, repeat, min_ms, model: model.vm.time_evaluator(
        "main", device, number=number, repeat=repeat, min_repeat_ms=min_ms), model=m) for m in models]
    results = interleaved(evaluators, inputs, spec["rounds"], MODEL_ROUND_SEC, TIMER_RESOLUTION_SEC)
    kernels: dict[str, list[list[float]]] = {}
    if spec["kernels"] and all("rounds" in r for r in results):
        # Each kernel's time per inference inside the model, the builds alternating; per round the least of
        # SHARE_REPEATS timings (as interleaved), each of as many inferences as last MODEL_ROUND_SEC / SHARE_REPEATS.
        runs = max(1, math.ceil(MODEL_ROUND_SEC / SHARE_REPEATS / statistics.median(results[0]["rounds"])))
        for _ in range(spec["rounds"]):
            for index, model in enumerate(models):
                least: dict[str, float] = {}
                for _ in range(SHARE_REPEATS):
                    for row in per_kernel(model, arrays, runs):
                        least[row["kernel"]] = min(least.get(row["kernel"], math.inf), row["ms"] / 1e3)
                for kernel, seconds in least.items():
                    kernels.setdefault(kernel, [[] for _ in models])[index].append(seconds)
    write_atomically(Path(result_path), [json.dumps({"results": results, "kernels": kernels})])


def _measure_builds(builds: dict[str, Path], preset, rpc_tracker, rpc_key, folder: Path, kernels: bool) -> dict:
    """Time the "default" and "tuned" builds as ``compare_with_default`` does: ``{"default": rounds, "tuned":
    rounds, "unit": ..., "scale": unit per round value, "deterministic": bool, "kernels": {kernel: (default
    rounds, tuned rounds)}}`` (per kernel inside the model, if ``kernels`` and the measure gives them; rounds in
    seconds or cycles)."""
    from .. import armprofile
    from ..signature import read_inputs, save_inputs

    if preset is not None and not preset.runnable_here and not rpc_tracker:
        profiles = {name: armprofile.profile(so, preset.name) for name, so in builds.items()}
        per_kernel = {}
        for name, profile in profiles.items():
            for kernel in profile.kernels:
                per_kernel.setdefault(kernel.name, {"default": [0.0], "tuned": [0.0]})[name] = [kernel.cycles]
        return {"default": [profiles["default"].cycles], "tuned": [profiles["tuned"].cycles], "scale": 1.0,
                "unit": f"estimated {preset.core} cycles", "deterministic": True,
                "kernels": {k: (v["default"], v["tuned"]) for k, v in per_kernel.items()}}
    if rpc_tracker:
        session = request_session(rpc_tracker, rpc_key)  # both builds in one session, alternating
        models = []
        for so in builds.values():
            session.upload(os.fspath(so))
            models.append(CompiledModel(session.load_module(os.path.basename(so)), session.cpu(), so))
        inputs = [tvm.runtime.tensor(x, session.cpu()) for x in read_inputs(models[0].signature(), seed=0)]
        evaluators = [functools.partial(lambda number, repeat, min_ms, model: model.vm.time_evaluator(
            "main", model.device, number=number, repeat=repeat, min_repeat_ms=min_ms), model=m) for m in models]
        results = interleaved(evaluators, inputs, ROUNDS, MODEL_ROUND_SEC, BOARD_TIMER_RESOLUTION_SEC)
        measured, unit = {"results": results, "kernels": {}}, "ms on the board"
    else:
        spec, result = folder / "spec.json", folder / "result.json"
        signature = load(builds["default"]).signature()
        inputs_path = save_inputs(folder / "inputs.npz", signature, read_inputs(signature, seed=0))
        spec.write_text(json.dumps({"threads": LOCAL_THREADS, "paths": [str(so) for so in builds.values()],
                                    "inputs": str(inputs_path), "rounds": ROUNDS, "kernels": kernels}))
        done = subprocess.run([sys.executable, "-c", "import sys; from bnn_tvm.tuning.whole_model import model_worker; "
                               "model_worker(sys.argv[1], sys.argv[2])", str(spec), str(result)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"timing the whole model failed ({done.returncode}):\n{done.stderr.strip()[-3000:]}")
        measured, unit = json.loads(result.read_text()), f"ms here, {LOCAL_THREADS} thread"
    for name, outcome in zip(builds, measured["results"], strict=True):
        if "error" in outcome:
            raise RuntimeError(f"the {name} build could not be timed: {outcome['error']}")
    return {"default": measured["results"][0]["rounds"], "tuned": measured["results"][1]["rounds"],
            "unit": unit, "scale": 1e3, "deterministic": False,
            "kernels": {k: tuple(v) for k, v in measured["kernels"].items()}}


def _build_pair(model, target, log_dir, folder: Path, input_shapes, trust_model_code) -> dict[str, Path]:
    """The model built with the default schedules and with ``log_dir``'s records (neither with the shipped
    pre-tuned ones), exported to ``folder``."""
    builds = {}
    for name, records in (("default", None), ("tuned", log_dir)):
        builds[name] = compile_model(model, target, tuning_records=records, pretuned=False, input_shapes=input_shapes,
                                     trust_model_code=trust_model_code).export_library(folder / f"{name}.so")
    return builds


def compare_with_default(model, target, log_dir, rpc_tracker: str | None = None, rpc_key: str | None = None,
                         input_shapes=None, trust_model_code: bool = False, workdir=None) -> tuple[float, float, str]:
    """The whole model's latency with ``log_dir``'s records and with the default schedules (neither with the
    shipped pre-tuned ones), measured as ``tune`` measured its candidates: on the board of ``rpc_key`` (one
    session, the two builds alternating, ``ROUNDS`` rounds), by estimated cycles on the emulated board for an
    aarch64 preset, or here (both builds in one process of their own, ``LOCAL_THREADS`` thread, alternating
    ``ROUNDS`` rounds of as many runs as last ``MODEL_ROUND_SEC``). Returns the medians ``(default, tuned, unit)``.
    (``settle_with_whole_model`` measures the same way, and acts on it.)
    """
    _, preset = _targets.resolve(target)
    folder = Path(workdir or tempfile.mkdtemp(prefix="bnn-tvm-compare-"))
    builds = _build_pair(model, target, log_dir, folder, input_shapes, trust_model_code)
    measured = _measure_builds(builds, preset, rpc_tracker, rpc_key, folder, kernels=False)
    return (statistics.median(measured["default"]) * measured["scale"],
            statistics.median(measured["tuned"]) * measured["scale"], measured["unit"])


def _kernel_workloads(model, target, database: AtomicJSONDatabase, input_shapes, trust_model_code) -> dict:
    """``{workload key: (workload module, [names of the model's functions that are that workload])}`` for the
    model's kernels that have records in ``database``."""
    tvm_target, _ = tuning_target(target)
    mod = legalize(import_model(model, input_shapes=input_shapes, trust_model_code=trust_model_code), tvm_target)
    found = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        workload = ms.tune_context._normalize_mod(func)  # as MetaSchedule keys its records
        if database.records_of(workload):
            found.setdefault(schedule_key(workload), (workload, []))[1].append(gvar.name_hint)
    return found


def _revert(database: AtomicJSONDatabase, state: SettledFile, workloads: list[tuple[str, tvm.IRModule]]) -> None:
    """Give each of ``workloads`` (key, module) its untuned schedule's record back (no record, if it has none:
    compile then uses the untuned schedule), in one atomic rewrite; ``settled.json`` says so."""
    replacements = {}
    for key, mod in workloads:
        entry = state.entries.setdefault(key, {})
        untuned = [r for r in database.records_of(mod) if entry.get("default") is not None
                   and (sch := replay(r.trace, mod)) is not None and schedule_key(sch.mod) == entry["default"]]
        replacements[mod] = untuned[-1:]
        entry.update(winner=entry.get("default") if untuned else None, best_secs=entry.get("default_secs"),
                     reverted="the whole model was not faster")
    database.replace_records(replacements)
    state.save()


def _kernel_medians(measured: dict) -> dict:
    return {name: (statistics.median(default), statistics.median(tuned))
            for name, (default, tuned) in measured["kernels"].items() if default and tuned}


def settle_with_whole_model(model, target, log_dir, rpc_tracker: str | None = None, rpc_key: str | None = None,
                            input_shapes=None, trust_model_code: bool = False, say=print,
                            workdir=None) -> WholeModel:
    """Time the whole model with ``log_dir``'s records against the default schedules (as ``compare_with_default``)
    and keep the tuned records only if they make the model faster.

    The rule is ``choose_schedule``'s, for the model: every round of the tuned build must be faster than every
    round of the default build (on the emulated board: fewer estimated cycles). If not, the tuned kernels that
    lost go back to their untuned schedules in the database: those not faster by the same rule inside the model
    (each kernel timed inside both builds, alternating; its estimated cycles on the emulated board; all of them
    on a board, where kernels cannot be timed inside the model). The model is then built and timed again, and if
    it is still not faster, every tuned kernel goes back: the tuned build is then the default build. On the
    emulated board, whose estimates are deterministic, a kernel with more cycles inside the model goes back even
    if the model is faster. ``say`` hears the decision in one line, which is also the result's ``note``.

    Parameters
    ----------
    model, target, log_dir, rpc_tracker, rpc_key, input_shapes, trust_model_code
        As ``tune`` had them.
    say : callable
        Hears the decision, one line.
    workdir : path, optional
        Where the builds go (a temporary folder by default).

    Returns
    -------
    WholeModel
        The last measurement, of the database as it is left.
    """
    _, preset = _targets.resolve(target)
    log_dir = Path(log_dir)
    folder = Path(workdir or tempfile.mkdtemp(prefix="bnn-tvm-compare-"))
    database, state = AtomicJSONDatabase(log_dir), SettledFile(log_dir)
    # The tuned kernels: those whose record is not their untuned schedule (or that no settling wrote).
    tuned = {key: (mod, functions)
             for key, (mod, functions) in _kernel_workloads(model, target, database, input_shapes,
                                                              trust_model_code).items()
             if key not in state.entries or state.entries[key].get("winner") != state.entries[key].get("default")}
    on_board = bool(rpc_tracker)

    def measure(where: Path, kernels: bool):
        where.mkdir(parents=True, exist_ok=True)
        builds = _build_pair(model, target, log_dir, where, input_shapes, trust_model_code)
        measured = _measure_builds(builds, preset, rpc_tracker, rpc_key, where, kernels)
        medians = (statistics.median(measured[side]) * measured["scale"] for side in ("default", "tuned"))
        return measured, *medians

    def names(keys) -> list[str]:
        return sorted(name for key in keys for name in tuned[key][1])

    measured, default, tuned_time = measure(folder, kernels=not on_board and bool(tuned))
    unit, rounds = measured["unit"], len(measured["default"])

    def lost(key) -> bool:
        times = [measured["kernels"].get(name) for name in tuned[key][1]]
        if on_board or not times or any(t is None for t in times):
            return True
        inside = [[sum(t[side][r] for t in times) for r in range(len(times[0][side]))] for side in (0, 1)]
        return not faster_beyond_noise(inside[1], inside[0])

    # Estimated cycles are the same at every count: there, a kernel that takes more of them inside the model goes
    # back even when the model as a whole is faster (it can only gain). Timings are noisy per kernel: the model's
    # time decides alone.
    losers = [key for key in tuned if lost(key)] if tuned else []
    faster = faster_beyond_noise(measured["tuned"], measured["default"])
    if faster and not (measured["deterministic"] and losers):
        note = (f"the whole model is faster tuned, beyond the noise ({rounds} round{'s' * (rounds > 1)} each): "
                f"the records stand")
        say(note)
        return WholeModel(default, tuned_time, unit, [], note, _kernel_medians(measured))
    if not tuned:
        note = ("no kernel's tuned schedule beat its untuned one: the tuned build is the default build (the "
                "difference measured is noise)")
        say(note)
        return WholeModel(default, tuned_time, unit, [], note, _kernel_medians(measured))

    first = (default, tuned_time)
    if losers and len(losers) < len(tuned):
        _revert(database, state, [(key, tuned[key][0]) for key in losers])
        measured, default, tuned_time = measure(folder / "again", kernels=False)
        if faster_beyond_noise(measured["tuned"], measured["default"]):
            note = (f"the whole model was {'' if faster else 'not '}faster tuned ({first[1]:.4g} vs {first[0]:.4g} "
                    f"{unit}); kept the untuned schedules of {', '.join(names(losers))} (not faster inside the "
                    f"model) and measured again: faster beyond the noise")
            say(note)
            return WholeModel(default, tuned_time, unit, names(losers), note, _kernel_medians(measured))
    _revert(database, state, [(key, mod) for key, (mod, _) in tuned.items()])
    why = "faster tuned, but every tuned kernel slower inside it" if faster else "not faster tuned"
    note = (f"the whole model was {why} ({tuned_time:.4g} vs {default:.4g} {unit}); kept the untuned schedules of "
            f"every kernel ({', '.join(names(tuned))}): the tuned build is now the default build")
    say(note)
    # The database gives every kernel its untuned schedule now: the two builds run the same kernels.
    return WholeModel(default, default, unit, names(tuned), note)
