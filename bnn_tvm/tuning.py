"""tune(): search the schedules of a model's kernels with MetaSchedule, locally or on a board.

The search spaces are our schedule rules themselves (registered with MetaSchedule
by ``strategies``): their ``sample_perfect_tile`` / ``sample_categorical`` knobs
default to what the untuned build uses, and MetaSchedule's evolutionary search,
guided by its XGBoost cost model, varies them. A structural alternative a rule
declares (the ARM bconv not tensorized) is a design space of its own. Float
kernels (TVM's own ops) are tuned with MetaSchedule's default CPU rules, and
with our schedule where we have one (the float convolutions), unless
``only_binary``.

The records go to a MetaSchedule JSON database in the log folder, written
atomically (``AtomicJSONDatabase``) so that a run killed mid-write leaves it
readable. Tuning again with the same folder resumes: the records already there
seed the search and count as found. ``compile(..., tuning_records=folder)``
applies the best ones.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import statistics
import struct
import tempfile
import threading
import time
import warnings
from pathlib import Path

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from . import strategies
from . import targets as _targets
from .board import BoardError, parse_address, registered_boards
from .build import import_model, legalize
from .runtime import physical_cores
from .schedule_pass import is_binary_task

# Building a candidate on 2 cores can take a while; a board over qemu even longer to run it.
BUILD_TIMEOUT_SEC = 120
RUN_TIMEOUT_SEC = 120

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def _plain_json(obj):
    """``obj`` (the FFI containers MetaSchedule's ``AsJSON`` returns) as plain Python, as its C++ writer
    prints it: immediates as numbers, booleans as 0/1."""
    if isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, int | float | str):
        return obj
    if isinstance(obj, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return obj.value
    if isinstance(obj, tvm_ffi.Array | list | tuple):
        return [_plain_json(item) for item in obj]
    if isinstance(obj, tvm_ffi.Map | dict):
        return {str(key): _plain_json(value) for key, value in obj.items()}
    raise TypeError(f"cannot write {type(obj).__name__} to a tuning database")


def _json_line(obj) -> str:
    return json.dumps(_plain_json(obj), separators=(",", ":"), sort_keys=True)


def _compact_workload(value) -> list:
    """A workload line (``[structural hash, base64(uint64 length + the module's JSON)]``) with the module's JSON
    re-encoded without the indentation TVM's SaveJSON writes: the same module in half the bytes."""
    structural_hash, encoded = _plain_json(value)
    module_json = json.loads(base64.b64decode(encoded)[8:])
    compact = json.dumps(module_json, separators=(",", ":")).encode()
    return [structural_hash, base64.b64encode(struct.pack("<Q", len(compact)) + compact).decode()]


def _write_atomically(path: Path, lines: list[str]) -> None:
    """Replace ``path`` by ``lines`` so that a reader (or a crash) sees the old file or the new one, whole."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in lines))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    # The rename itself is durable only once the folder is.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _read_lines(path: Path) -> list[tuple[int, object]]:
    """The JSON lines of ``path`` as (line number, value); a line that does not parse (the torn last
    line an append-only writer leaves when killed) is dropped with a warning."""
    if not path.exists():
        return []
    parsed = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed.append((number, json.loads(line)))
        except json.JSONDecodeError:
            warnings.warn(f"{path}: line {number} is not valid JSON (a write cut short?); dropped it",
                          RuntimeWarning, stacklevel=3)
    return parsed


@derived_object
class AtomicJSONDatabase(ms.database.PyDatabase):
    """MetaSchedule's JSON database (same two files, same lines), rewritten atomically on every commit.

    ``ms.database.JSONDatabase`` appends a line per record; a process killed mid-append leaves a torn
    last line, and then neither it nor ``MetaScheduleApplyDatabase`` can open the folder. Here the
    records live in memory and each commit replaces the file through a temporary file (fsync, then
    rename), so the folder is readable at every instant, by this class and by ``JSONDatabase`` alike.
    A folder an append-only writer left torn loads without the torn line (with a warning), and the
    next commit writes it back whole.

    Parameters
    ----------
    work_dir : str or os.PathLike
        The folder of ``database_workload.json`` and ``database_tuning_record.json`` (created, with the
        files, if missing).
    """

    def __init__(self, work_dir: str | os.PathLike):
        folder = Path(work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.path_workload, self.path_tuning_record = folder / WORKLOAD_FILE, folder / RECORD_FILE
        # The queries are MemoryDatabase's; this class only keeps the files in step with it.
        self._memory = ms.database.MemoryDatabase()
        self._workloads: list = []  # in file order: a record line names its workload by this index
        self._workload_lines: list[str] = []
        self._record_lines: list[str] = []
        for stale in folder.glob(".database_*.tmp"):  # left by a writer killed mid-write
            stale.unlink(missing_ok=True)
        self._load()
        for path, lines in ((self.path_workload, self._workload_lines), (self.path_tuning_record, self._record_lines)):
            if not path.exists():
                _write_atomically(path, lines)

    def _load(self) -> None:
        from tvm.s_tir.meta_schedule import _ffi_api

        by_line = {}
        for number, value in _read_lines(self.path_workload):
            workload = self._memory.commit_workload(_ffi_api.WorkloadFromJSON(value).mod)
            by_line[number] = workload
            if not any(workload.same_as(known) for known in self._workloads):
                self._workloads.append(workload)
                self._workload_lines.append(_json_line(value))  # as written: compacting is the writer's job
        # Record lines index the workload file's lines (0-based); map them through the lines kept.
        index_of_line = {number - 1: workload for number, workload in by_line.items()}
        for number, value in _read_lines(self.path_tuning_record):
            workload = index_of_line.get(value[0]) if isinstance(value, list) and len(value) == 2 else None
            if workload is None:
                warnings.warn(f"{self.path_tuning_record}: line {number} names no workload of "
                              f"{self.path_workload}; dropped it", RuntimeWarning, stacklevel=2)
                continue
            self._memory.commit_tuning_record(_ffi_api.TuningRecordFromJSON(value[1], workload))
            self._record_lines.append(_json_line([self._index(workload), value[1]]))

    def _index(self, workload) -> int:
        """The workload's line in the workload file (committing it first if it came from elsewhere)."""
        for _ in range(2):
            for index, known in enumerate(self._workloads):
                if known.same_as(workload):
                    return index
            workload = self.commit_workload(workload.mod)
        raise AssertionError("unreachable: a committed workload is in the list")

    def has_workload(self, mod: tvm.IRModule) -> bool:
        return self._memory.has_workload(mod)

    def commit_workload(self, mod: tvm.IRModule):
        workload = self._memory.commit_workload(mod)
        if not any(workload.same_as(known) for known in self._workloads):
            self._workloads.append(workload)
            self._workload_lines.append(_json_line(_compact_workload(workload.as_json())))
            _write_atomically(self.path_workload, self._workload_lines)
        return workload

    def commit_tuning_record(self, record) -> None:
        self._memory.commit_tuning_record(record)
        self._record_lines.append(_json_line([self._index(record.workload), record.as_json()]))
        _write_atomically(self.path_tuning_record, self._record_lines)

    def get_top_k(self, workload, top_k: int):
        return self._memory.get_top_k(workload, top_k)

    def get_all_tuning_records(self):
        return self._memory.get_all_tuning_records()

    def __len__(self) -> int:
        return len(self._memory)


def _binary_rules() -> tuple[list, list, dict]:
    """Schedule rules, postprocessors and mutators of binary kernels: only our rule for blocks it tags
    and nothing else rewriting what it scheduled; evolution turns the perfect-tile knobs (a categorical
    knob varies through the fresh samples of each initial population)."""
    return ([ms.schedule_rule.ApplyCustomRule()],
            [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteReductionBlock()],
            {ms.mutator.MutateTileSize(): 1.0})


@derived_object
class BinarySpace(ms.space_generator.PySpaceGenerator):
    """The design spaces of a binary kernel: its schedule rule as is, and once per alternative it declares.

    A trace can change its decisions, not its instructions, so a structural choice (to tensorize or
    not) is a design space of its own: the rule is generated again inside
    ``schedules.generic._util.choosing(name)`` for every declared alternative, and the spaces that
    differ from the default are added.
    """

    def __init__(self):
        self.sch_rules, self.postprocs, self.mutator_probs = _binary_rules()
        self._apply = ms.space_generator.PostOrderApply(None, *_binary_rules())

    def _initialize_with_tune_context(self, context) -> None:
        self._apply._initialize_with_tune_context(context)

    def generate_design_space(self, mod: tvm.IRModule) -> list:
        from .schedules.generic._util import ALTERNATIVES, choosing

        spaces = []
        for names in [(), *((name,) for name in ALTERNATIVES)]:
            with choosing(*names):
                for space in self._apply.generate_design_space(mod):
                    if not any(tvm_ffi.structural_equal(space.mod, known.mod) for known in spaces):
                        spaces.append(space)
        return spaces

    def clone(self) -> BinarySpace:
        return BinarySpace()


def _our_float_schedule(sch) -> list:
    """Our schedule of a float kernel, where the strategies have one (the float convolutions): the
    first block a strategy schedules, as ``schedule_pass`` picks it for the untuned build."""
    target = tvm.target.Target.current()
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        name = sch.get(block).name_hint
        for schedule in strategies.candidates(f"topi:{name}", target):
            trial = sch.copy()
            if schedule(trial, trial.get_sblock(name)) is not None:
                return [trial]
    return []


def float_space() -> ms.space_generator.SpaceGeneratorUnion:
    """The design spaces of a float kernel (TVM's own ops): MetaSchedule's, and ours beside them where we
    have a schedule, so that the search also starts from the untuned build's schedule and its knobs."""
    return ms.space_generator.SpaceGeneratorUnion(
        [ms.space_generator.PostOrderApply(), ms.space_generator.ScheduleFn(_our_float_schedule)])


def _task_loggers(log_dir: Path, names: list[str]) -> list[logging.Logger]:
    """One logger per task, writing to LOG_DIR/logs/<task>.log.

    (MetaSchedule's own ``get_loggers_from_work_dir`` re-runs ``logging.config.dictConfig`` with the
    names of the handlers it finds, and breaks on the third call in a process once an unnamed handler
    is attached.)
    """
    folder = log_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s")
    loggers = []
    for index, name in enumerate(names):
        logger = logging.getLogger(f"bnn_tvm.tuning.task_{index}_{name[:100]}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        handler = logging.FileHandler(folder / f"task_{index}_{name[:100]}.log")
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        loggers.append(logger)
    return loggers


def _search(trials: int) -> ms.search_strategy.EvolutionarySearch:
    """MetaSchedule's evolutionary search, its population scaled to the trial budget: the default
    (512, 4 generations) spends minutes per batch on 2 cores for spaces of a few knobs."""
    population = max(32, min(512, 8 * trials))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 2), genetic_num_iters=2)


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Shows, after each batch of measurements: the task, its trials done of its budget, its best latency so
    far, and the run's progress with an estimate of the time left (a bar on a terminal). Past ``deadline``
    (``time.monotonic()``) it ends every task: the task scheduler stops after the batches in flight."""

    def __init__(self, names: list[str], budget: int, say, deadline: float | None = None):
        from tqdm import tqdm

        self.names, self.budget, self.say, self.deadline = names, budget, say, deadline
        self.done = [0] * len(names)
        self.best = [float("inf")] * len(names)
        self.start = time.monotonic()
        self.out_of_time = False
        # On a terminal only (disable=None); the per-batch lines go to ``say`` either way.
        self.bar = tqdm(total=budget * len(names), unit="trial", disable=None, leave=False, dynamic_ncols=True)

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        if not runner_results:
            return  # the search had no new candidate for this task
        for result in runner_results:
            self.done[task_id] += 1
            if result.error_msg is None and result.run_secs:
                self.best[task_id] = min(self.best[task_id], mean_seconds(result.run_secs))
        self.bar.update(len(runner_results))
        failed = sum(r.error_msg is not None for r in runner_results)
        best, done, total = self.best[task_id], sum(self.done), self.budget * len(self.names)
        elapsed = time.monotonic() - self.start
        self.say(f"[{self.names[task_id]}] {self.done[task_id]}/{self.budget} trials, best "
                 + (f"{best * 1e6:.1f} us" if best < float("inf") else "none yet")
                 + (f" ({failed} of this batch failed)" if failed else "")
                 + f" | run {done}/{total} trials, {_minutes(elapsed)} elapsed, "
                 + (f"~{_minutes(elapsed / done * (total - done))} left" if done else "time left unknown"))
        if self.deadline is not None and time.monotonic() > self.deadline and not self.out_of_time:
            self.out_of_time = True
            self.say(f"time budget reached after {_minutes(elapsed)}: ending the run after the batches in flight")
            # A task whose trials are all done is ended by the scheduler itself once this returns (twice fails).
            for task in range(len(self.names)):
                if not task_scheduler.tasks_[task].is_terminated and self.done[task] < self.budget:
                    task_scheduler.terminate_task(task)

    def close(self) -> None:
        self.bar.close()


def mean_seconds(run_secs) -> float:
    """A measurement's mean of its repeats (MetaSchedule records one time per repeat)."""
    return sum(float(s) for s in run_secs) / len(run_secs)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


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
        from .armprofile import ProfileError, kernel_cycles

        kernels = [(str(i.artifact_path), [info.as_json() for info in i.args_info]) for i in runner_inputs]
        try:
            cycles = kernel_cycles(kernels, self.target)
        except ProfileError as error:
            cycles, failure = [None] * len(kernels), str(error)
        else:
            failure = "the candidate failed on the emulated board"
        return [_Measured(ms.runner.RunnerResult([c / self.hertz], None) if c is not None else
                          ms.runner.RunnerResult(None, failure)) for c in cycles]


def _record_defaults(contexts, binary, builder, runner, database) -> dict[int, float]:
    """Measure each binary task's untuned schedule (its space's default decisions) after the search and record
    it: the best record, which compile applies, is then never worse than the untuned build on this measure.
    (Recorded after the search, which would replay and mutate it: its trace is the unprocessed design space.)
    All are built, then measured, in one batch. Returns each measured task's default seconds by index."""
    tasks = [i for i, is_binary in enumerate(binary) if is_binary]
    defaults = {i: contexts[i].space_generator.generate_design_space(contexts[i].mod)[0] for i in tasks}
    built = builder.build([ms.builder.BuilderInput(defaults[i].mod, contexts[i].target) for i in tasks])
    tasks = [i for i, result in zip(tasks, built, strict=True) if result.error_msg is None]
    artifacts = [result.artifact_path for result in built if result.error_msg is None]
    args_info = {i: ms.arg_info.ArgInfo.from_prim_func(defaults[i].mod["main"]) for i in tasks}
    futures = runner.run([ms.runner.RunnerInput(path, "cpu", args_info[i])
                          for i, path in zip(tasks, artifacts, strict=True)])
    measured = {}
    for i, future in zip(tasks, futures, strict=True):
        result = future.result()
        if result.error_msg is None:
            context = contexts[i]
            database.commit_tuning_record(ms.database.TuningRecord(
                defaults[i].trace, database.commit_workload(context.mod), result.run_secs, context.target,
                args_info[i]))
            measured[i] = mean_seconds(result.run_secs)
    return measured


def _summary_table(names: list[str], defaults: dict[int, float], best: list[float]) -> list[str]:
    """A line per kernel: its default and best time and the speedup (float kernels have no measured default)."""
    width = max(len(name) for name in names)
    lines = [f"{'kernel':<{width}}  {'default us':>10}  {'best us':>10}  speedup"]
    for i, name in enumerate(names):
        tuned = min(best[i], defaults.get(i, float("inf")))
        default = f"{defaults[i] * 1e6:10.1f}" if i in defaults else f"{'-':>10}"
        found = f"{tuned * 1e6:10.1f}" if tuned < float("inf") else f"{'none':>10}"
        gain = f"{defaults[i] / tuned:6.2f}x" if i in defaults and tuned < float("inf") else "      -"
        lines.append(f"{name:<{width}}  {default}  {found}  {gain}")
    return lines


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


def create_board_session(rpc_config):
    """Connect to a board of the key, or fail within the session timeout.

    MetaSchedule's own session request waits for a board with no time limit: a board that died while
    requests were queued for it would hang the tuning forever. Here a missing board fails at once and
    a request the tracker cannot serve in time fails after ``session_timeout_sec``; either way the
    candidate is recorded as failed and tuning goes on.
    """
    from .board import BoardError

    tracker = rpc_config.connect_tracker()
    servers = [s for s in tracker.summary().get("server_info", []) if s.get("key") == f"server:{rpc_config.tracker_key}"]
    if not servers:
        raise BoardError(f"no board is registered under key {rpc_config.tracker_key!r} at the tracker")
    outcome = {}

    def connect():
        try:
            outcome["session"] = rpc_config.connect_server()
        except Exception as err:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = err

    waiter = threading.Thread(target=connect, daemon=True)
    waiter.start()
    waiter.join(rpc_config.session_timeout_sec)
    if waiter.is_alive():
        raise BoardError(f"no board of key {rpc_config.tracker_key!r} became free within "
                         f"{rpc_config.session_timeout_sec} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["session"]


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


def tune(
    model,
    target="host",
    trials: int = 64,
    log_dir: str | os.PathLike = "tuning",
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    only_binary: bool = False,
    trials_per_iter: int = 16,
    say=print,
    run_timeout: float = RUN_TIMEOUT_SEC,
    input_shapes=None,
    trust_model_code: bool = False,
    budget_minutes: float | None = None,
) -> Path:
    """Tune ``model``'s kernels for ``target``, ``trials`` measurements per task; records go to ``log_dir``.

    With ``rpc_tracker`` (``HOST:PORT``) and ``rpc_key`` the candidates are cross-linked and measured on
    that board; a board that fails, dies or does not answer within ``run_timeout`` seconds costs the
    trials it was running (recorded as failed), not the run. An aarch64 preset without a board is measured
    on the emulated board by estimated cycles (``EmulatedCycleRunner``). Each binary task's untuned
    schedule is measured and recorded too, so tuning never makes a kernel slower on its own measure.
    ``input_shapes`` and ``trust_model_code`` are ``bnn_tvm.compile``'s (pass the same to compile the tuned
    model: the records are for those shapes); ``trust_model_code`` runs code the model file carries.
    ``budget_minutes`` ends the search at that time (the batches in flight finish and are recorded; the
    untuned schedules are measured after it): the database is complete and usable either way. At the end
    ``say`` hears a table of each kernel's default and best time.
    """
    tvm_target, preset = _targets.resolve(target)
    if "num-cores" not in tvm_target.attrs:  # MetaSchedule requires it; an x86 preset is tuned on this machine
        tvm_target = tvm.target.Target({**tvm_target.export(), "num-cores": physical_cores()})
    if bool(rpc_tracker) != bool(rpc_key):
        raise ValueError("rpc_tracker and rpc_key go together")
    emulated = preset is not None and not preset.runnable_here and not rpc_tracker
    if emulated and preset.core is None:
        raise ValueError(f"target {preset.name} cannot run on this machine nor on the emulated board: tune it on "
                         f"a board (--rpc-tracker HOST:PORT --rpc-key KEY)")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    # The module compile starts from, so that the records apply.
    mod = legalize(import_model(model, input_shapes=input_shapes, trust_model_code=trust_model_code), tvm_target)
    tasks = [(t, is_binary_task(t.dispatched[0]["main"])) for t in ms.relax_integration.extract_tasks(mod, tvm_target)]
    tasks = [(t, binary) for t, binary in tasks if binary or not only_binary]
    if not tasks:
        raise ValueError("the model has no kernels to tune")
    contexts, weights = [], []
    loggers = _task_loggers(log_dir, [t.task_name for t, _ in tasks])
    for (task, binary), logger, seed in zip(tasks, loggers, ms.utils.fork_seed(None, n=len(tasks)), strict=True):
        contexts.append(ms.TuneContext(
            mod=task.dispatched[0], target=task.target,
            space_generator=BinarySpace() if binary else float_space(),
            search_strategy=_search(trials), task_name=task.task_name, logger=logger, rand_state=seed,
            num_threads="physical",
        ).clone())
        weights.append(float(task.weight))
    say(f"tuning {len(contexts)} tasks ({sum(binary for _, binary in tasks)} binary), "
        f"{trials} trials each, records in {log_dir}")

    cross = preset.cross_compiler if preset is not None else None
    # The cores this process may use: MetaSchedule's default counts the machine's, ignoring taskset and cpusets.
    builder = ms.builder.LocalBuilder(max_workers=len(os.sched_getaffinity(0)), timeout_sec=BUILD_TIMEOUT_SEC,
                                      f_build=build_candidate,
                                      f_export=functools.partial(export_candidate, cross_compiler=cross))
    if rpc_tracker:
        host, port = parse_address(rpc_tracker)
        runner = BoardFarmRunner(
            ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                session_timeout_sec=int(run_timeout)),
            ms.runner.EvaluatorConfig(number=3, repeat=1, enable_cpu_cache_flush=False), say)
    elif emulated:
        runner = EmulatedCycleRunner(preset.name)
        say(f"measuring on the emulated board: estimated {preset.core} cycles, not qemu's time")
    else:
        runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=5, repeat=1))
    database = AtomicJSONDatabase(log_dir)
    names = [c.task_name for c in contexts]
    deadline = time.monotonic() + budget_minutes * 60 if budget_minutes is not None else None
    progress = _Progress(names, trials, say, deadline)
    callbacks = ms.measure_callback.MeasureCallback.create("default") + [progress]
    try:
        with tvm_target:  # the schedule rules read it (aarch64 and armv7 use different NEON intrinsics)
            ms.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(log_dir), max_trials_global=trials * len(contexts),
                max_trials_per_task=trials, num_trials_per_iter=min(trials_per_iter, trials), builder=builder,
                runner=runner, database=database, cost_model="xgb", measure_callbacks=callbacks,
            )
            say("measuring the untuned schedules")
            defaults = _record_defaults(contexts, [is_binary for _, is_binary in tasks], builder, runner, database)
    finally:
        progress.close()
    for line in _summary_table(names, defaults, progress.best):
        say(line)
    return log_dir


def compare_with_default(model, target, log_dir, rpc_tracker: str | None = None, rpc_key: str | None = None,
                         input_shapes=None, trust_model_code: bool = False, workdir=None) -> tuple[float, float, str]:
    """The whole model's latency with ``log_dir``'s records and with the default schedules (neither with the
    shipped pre-tuned ones), measured once each as ``tune`` measured its candidates: on the board of
    ``rpc_key`` (median of 5 runs), by estimated cycles on the emulated board for an aarch64 preset, or here
    (each build timed in its own process, median of 20 runs). Returns ``(default, tuned, unit)``.
    """
    import numpy as np

    from . import armprofile, bench
    from .build import compile as compile_model
    from .runtime import load, load_remote, median_ms

    _, preset = _targets.resolve(target)
    folder = Path(workdir or tempfile.mkdtemp(prefix="bnn-tvm-compare-"))
    builds = {}
    for name, records in (("default", None), ("tuned", log_dir)):
        builds[name] = compile_model(model, target, tuning_records=records, pretuned=False, input_shapes=input_shapes,
                                     trust_model_code=trust_model_code).export_library(folder / f"{name}.so")
    if preset is not None and not preset.runnable_here and not rpc_tracker:
        default, tuned = (armprofile.profile(so, preset.name).cycles for so in builds.values())
        return default, tuned, f"estimated {preset.core} cycles"
    x_path = folder / "x.npy"
    shape, dtype = load_remote(builds["default"], rpc_tracker, rpc_key).input_signature() if rpc_tracker else \
        load(builds["default"]).input_signature()
    np.save(x_path, np.random.default_rng(0).standard_normal(shape).astype(dtype))
    if rpc_tracker:
        default, tuned = (median_ms(load_remote(so, rpc_tracker, rpc_key).time(np.load(x_path), repeat=5))
                          for so in builds.values())
        return default, tuned, "ms on the board"
    default, tuned = (statistics.median(bench.spawn_worker("bnn-tvm", so, x_path, 1, 20, 3, folder / f"{name}.json",
                                                            None, False)["samples_ms"])
                      for name, so in builds.items())
    return default, tuned, "ms here, 1 thread"


def apply_tuning_records(mod: tvm.IRModule, target, log_dir, report=None) -> tvm.IRModule:
    """Give the functions that ``log_dir``'s database has records of their best tuned schedule;
    ``report(tuned, total)`` hears how many functions this database scheduled, of how many."""
    from tvm import relax

    def scheduled(module) -> int:
        return sum(isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "tirx.is_scheduled" in f.attrs
                   for _, f in module.functions_items())

    log_dir = Path(log_dir)
    if not (log_dir / RECORD_FILE).exists():
        raise FileNotFoundError(f"no tuning records in {log_dir} (expected {RECORD_FILE})")
    total = sum(isinstance(f, tvm.tirx.PrimFunc) for _, f in mod.functions_items())
    before = scheduled(mod)  # by a database applied earlier
    with AtomicJSONDatabase(log_dir):  # tolerates the torn last line an older, append-only run left
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    if report is not None:
        report(scheduled(mod) - before, total)
    return mod
