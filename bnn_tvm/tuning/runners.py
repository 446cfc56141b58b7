"""Where candidates are built and measured: the search's builder and runners, and the re-measurers.

The search builds with ``build_candidate`` / ``export_candidate`` (a linked .so, cross-linked for a board) and
measures with MetaSchedule's local runner, ``BoardFarmRunner`` (boards behind a tracker) or
``EmulatedCycleRunner`` (estimated cycles on the emulated board). After the search, a measurer
(``LocalMeasurer``, ``BoardMeasurer``, ``EmulatedMeasurer``) re-measures each kernel's best candidates beside its
untuned schedule, where the search measured them, the same way for all of them (``timing.time_kernels``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from .. import targets as _targets
from ..board import BoardError, registered_boards, request_session
from ..tuning_database import write_atomically
from .timing import BOARD_TIMER_RESOLUTION_SEC, LOCAL_THREADS, ROUND_SEC, ROUNDS, TIMER_RESOLUTION_SEC, time_kernels


# ---------------------------------------------------------------------------------------------------------------
# Building


def build_candidate(mod, target, _params):
    """MetaSchedule's default build without its ``import tvm.s_tir.tensor_intrin``, which registers
    every vendor's intrinsics and costs each fresh build worker about 20 s here."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def export_candidate(mod, cross_compiler: str | None = None) -> str:
    """Link a candidate into a .so (cross-linked for a board); MetaSchedule's default .tar is relinked
    at every load and a board cannot link it."""
    path = os.path.join(tempfile.mkdtemp(prefix="bnn-tvm-candidate-"), "candidate.so")
    kwargs = {"fcompile": tvm.support.cc.cross_compiler(cross_compiler)} if cross_compiler else {}
    mod.export_library(path, **kwargs)
    return path


def remove_candidate(path: str) -> None:
    """Delete a built candidate: ``export_candidate``'s folder with it, or the file MetaSchedule's default wrote."""
    folder = os.path.dirname(path)
    if os.path.basename(folder).startswith("bnn-tvm-candidate-"):  # made by export_candidate
        shutil.rmtree(folder, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


@derived_object
class TimedBuilder(ms.builder.PyBuilder):
    """A builder that keeps count of its time per candidate (its batches' wall time over their candidates, so with
    its workers' parallelism), for the estimate of the building after the search."""

    def __init__(self, builder):
        self.builder, self.seconds, self.built = builder, 0.0, 0

    def build(self, build_inputs) -> list:
        start = time.monotonic()
        results = self.builder.build(build_inputs)
        self.seconds += time.monotonic() - start
        self.built += len(build_inputs)
        return results

    def per_candidate(self, fallback: float) -> float:
        return self.seconds / self.built if self.built else fallback


# ---------------------------------------------------------------------------------------------------------------
# The search's runners


def create_board_session(rpc_config):
    """A session on a board of the key, or ``BoardError`` within ``session_timeout_sec`` (MetaSchedule's own
    request waits with no limit: a board that died while requests were queued for it would hang the tuning).
    The candidate is then recorded as failed and tuning goes on."""
    return request_session(f"{rpc_config.tracker_host}:{rpc_config.tracker_port}", rpc_config.tracker_key,
                           timeout=rpc_config.session_timeout_sec, session_timeout=rpc_config.session_timeout_sec)


@derived_object
class BoardFarmRunner(ms.runner.PyRunner):
    """MetaSchedule's ``RPCRunner`` measuring one candidate per board registered under the key at a time.

    The tracker hands each session to a free board of the key, so a pool of as many workers as boards keeps
    every board busy. The boards are counted when tuning starts and again before each batch: a board that
    joins widens the pool. A board that dies is not subtracted: the extra worker's session request waits at
    the tracker for a board that is alive, and the dead board costs only the candidate it was running.
    """

    def __init__(self, rpc_config: ms.runner.RPCConfig, evaluator_config: ms.runner.EvaluatorConfig, say=print):
        self.rpc_config, self.evaluator_config, self.say = rpc_config, evaluator_config, say
        # Narrower pools stay referenced: the task scheduler joins a batch after sending the next one, and a
        # collected pool kills its workers.
        self.pools: list[ms.runner.RPCRunner] = []
        self.width = 0
        self._widen(max(1, self._boards()))

    def _boards(self) -> int:
        try:
            return len(registered_boards(self.rpc_config.tracker_host, self.rpc_config.tracker_port,
                                         self.rpc_config.tracker_key))
        except (BoardError, OSError):  # the sessions will fail and say why; the run goes on
            return 0

    def _widen(self, boards: int) -> None:
        self.width = boards
        self.pools.append(ms.runner.RPCRunner(
            f_create_session=create_board_session, rpc_config=self.rpc_config,
            evaluator_config=self.evaluator_config, max_workers=boards))
        self.say(f"measuring on {boards} board{'s' * (boards > 1)} of key {self.rpc_config.tracker_key!r}, "
                 f"one candidate per board at a time")

    def run(self, runner_inputs) -> list:
        if (boards := self._boards()) > self.width:
            self._widen(boards)
        return self.pools[-1].run(runner_inputs)


@derived_object
class _Measured(ms.runner.PyRunnerFuture):
    """A measurement already taken."""

    def __init__(self, result: ms.runner.RunnerResult):
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> ms.runner.RunnerResult:
        return self._result


@derived_object
class EmulatedCycleRunner(ms.runner.PyRunner):
    """Ranks a batch of aarch64 candidates by their estimated cycles on the preset's core, counted on the
    emulated board (``bnn_tvm.armprofile.kernel_cycles``), reported as seconds at the preset's clock (1 GHz
    where it has none). qemu's wall time would rank emulation speed, not the ARM core's."""

    def __init__(self, target: str):
        self.target = target
        self.hertz = (_targets.presets()[target].clock_ghz or 1.0) * 1e9

    def run(self, runner_inputs) -> list:
        from ..armprofile import ProfileError, kernel_cycles

        kernels = [(str(i.artifact_path), [info.as_json() for info in i.args_info]) for i in runner_inputs]
        try:
            cycles = kernel_cycles(kernels, self.target)
        except ProfileError as error:
            cycles, failure = [None] * len(kernels), str(error)
        else:
            failure = "the candidate failed on the emulated board"
        return [_Measured(ms.runner.RunnerResult([c / self.hertz], None) if c is not None else
                          ms.runner.RunnerResult(None, failure)) for c in cycles]


# ---------------------------------------------------------------------------------------------------------------
# Re-measuring a kernel's candidates side by side


def kernel_worker(spec_path: str, result_path: str) -> None:
    """The local re-measurement, in a process of its own (``LocalMeasurer``): on ``LOCAL_THREADS`` threads, as
    ``compare_with_default`` runs the model."""
    from ..runtime import set_threads

    spec = json.loads(Path(spec_path).read_text())
    set_threads(spec["threads"])
    device = tvm.cpu()
    fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")
    groups = []
    for group in spec["groups"]:
        modules = []
        for path in group["paths"]:
            try:
                modules.append(tvm.runtime.load_module(path))
            except Exception as error:  # noqa: BLE001
                modules.append(f"could not be loaded: {error}")
        groups.append(time_kernels(modules, group["args"], device, fill, TIMER_RESOLUTION_SEC))
    write_atomically(Path(result_path), [json.dumps(groups)])


class LocalMeasurer:
    """Re-measures the candidates here: all kernels in one process of their own, ``LOCAL_THREADS`` threads."""

    resolution, rounds = TIMER_RESOLUTION_SEC, ROUNDS

    def measure(self, groups: list[tuple[list, list[str]]]) -> list[list[dict]]:
        """``groups``: per kernel, its arguments (MetaSchedule ``ArgInfo`` JSON) and its candidates' libraries,
        the untuned schedule's first. Returns per kernel, per candidate, ``interleaved``'s result."""
        with tempfile.TemporaryDirectory(prefix="bnn-tvm-settle-") as scratch:
            spec, result = Path(scratch) / "spec.json", Path(scratch) / "result.json"
            spec.write_text(json.dumps({"threads": LOCAL_THREADS,
                                        "groups": [{"args": args, "paths": paths} for args, paths in groups]}))
            command = [sys.executable, "-c", "import sys; from bnn_tvm.tuning.runners import kernel_worker; "
                       "kernel_worker(sys.argv[1], sys.argv[2])", str(spec), str(result)]
            timeout = 120 + sum(len(paths) for _, paths in groups) * (ROUNDS + 2) * max(ROUND_SEC, 1.0)
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                why = f"the measuring process did not finish within {timeout:.0f} s"
            else:
                if done.returncode == 0:
                    return json.loads(result.read_text())
                why = f"the measuring process failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        return [[{"error": why} for _ in paths] for _, paths in groups]


class BoardMeasurer:
    """Re-measures the candidates on a board of the key, all through one RPC session, as the server runs them."""

    resolution, rounds = BOARD_TIMER_RESOLUTION_SEC, ROUNDS

    def __init__(self, rpc_config: ms.runner.RPCConfig):
        # One session serves every kernel's rounds: longer than one candidate's measurement.
        self.rpc_config = rpc_config._replace(session_timeout_sec=max(rpc_config.session_timeout_sec, 1800))

    def measure(self, groups: list[tuple[list, list[str]]]) -> list[list[dict]]:
        try:
            session = create_board_session(self.rpc_config)
            fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
            results = []
            for number, (args, paths) in enumerate(groups):
                modules = []
                for index, path in enumerate(paths):
                    remote = f"settle-{number}-{index}.so"
                    session.upload(path, remote)
                    modules.append(session.load_module(remote))
                results.append(time_kernels(modules, args, session.cpu(), fill, self.resolution))
            return results
        except (BoardError, OSError, tvm.TVMError) as error:
            return [[{"error": f"the board failed: {error}"} for _ in paths] for _, paths in groups]


class EmulatedMeasurer:
    """Counts the candidates' cycles on the emulated board, all in one emulated process: deterministic, one
    round each, so the untuned schedule wins ties."""

    rounds = 1

    def __init__(self, runner: EmulatedCycleRunner):
        self.runner = runner
        self.resolution = 1 / runner.hertz  # a cycle

    def measure(self, groups: list[tuple[list, list[str]]]) -> list[list[dict]]:
        inputs = [ms.runner.RunnerInput(path, "cpu", [ms.arg_info.ArgInfo.from_json(a) for a in args])
                  for args, paths in groups for path in paths]
        flat = [future.result() for future in self.runner.run(inputs)]
        results = []
        for _, paths in groups:
            taken, flat = flat[:len(paths)], flat[len(paths):]
            results.append([{"rounds": [float(r.run_secs[0])]} if r.error_msg is None else {"error": r.error_msg}
                            for r in taken])
        return results
