"""tune(): search the schedules of a model's kernels with MetaSchedule, locally or on a board.

The search spaces are our schedule rules themselves (registered with MetaSchedule
by ``strategies``): their ``sample_perfect_tile`` / ``sample_categorical`` knobs
default to what the untuned build uses, and MetaSchedule's evolutionary search,
guided by its XGBoost cost model, varies them. A structural alternative a rule
declares (the ARM bconv not tensorized) is a design space of its own. Float
kernels (TVM's own ops) are tuned with MetaSchedule's default CPU rules, and
with our schedule where we have one (the float convolutions), unless
``only_binary``.

The search's measurement only ranks candidates. What decides a kernel's record is
a re-measurement after the search (``_settle``): its untuned schedule and the
search's best three, side by side, measured as the whole model is compared; the
untuned schedule stays unless a candidate is faster beyond the noise
(``choose_schedule``). ``settle_with_whole_model`` then times the whole model
and sets back the kernels that lost if it is not faster.

The records go to a MetaSchedule JSON database in the log folder, written
atomically (``AtomicJSONDatabase``) so that a run killed mid-write leaves it
readable: the settled records under each kernel's workload, which is what
``compile(..., tuning_records=folder)`` applies, and the search's under a marked
twin of it (``is_search_history``). Tuning again with the same folder resumes:
the search's records seed the search and count as trials done.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import tvm
import tvm_ffi
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from . import strategies
from . import targets as _targets
from .board import BoardError, check_key_served, parse_address, registered_boards
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
        self._records: list[tuple[int, ms.database.TuningRecord]] = []  # beside its line: (workload index, record)
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
            record = _ffi_api.TuningRecordFromJSON(value[1], workload)
            self._memory.commit_tuning_record(record)
            index = self._index(workload)
            self._records.append((index, record))
            self._record_lines.append(_json_line([index, value[1]]))

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
        index = self._index(record.workload)
        self._records.append((index, record))
        self._record_lines.append(_json_line([index, record.as_json()]))
        _write_atomically(self.path_tuning_record, self._record_lines)

    def commit_tuning_records(self, records: list) -> None:
        """Commit several records in one atomic write of the record file (all or none of them, if killed)."""
        for record in records:
            self._memory.commit_tuning_record(record)
            index = self._index(record.workload)
            self._records.append((index, record))
            self._record_lines.append(_json_line([index, record.as_json()]))
        if records:
            _write_atomically(self.path_tuning_record, self._record_lines)

    def _find(self, mod: tvm.IRModule) -> int | None:
        """The index of ``mod``'s workload (structurally equal), or None if it has none, committing nothing."""
        if not self._memory.has_workload(mod):
            return None
        workload = self._memory.commit_workload(mod)  # the existing one: it is there
        return next(index for index, known in enumerate(self._workloads) if known.same_as(workload))

    def records_of(self, mod: tvm.IRModule) -> list:
        """Every record of ``mod``'s workload in file order, failed measurements included."""
        index = self._find(mod)
        return [record for known, record in self._records if known == index] if index is not None else []

    def replace_records(self, replacements: dict) -> None:
        """Give each workload of ``replacements`` (``{IRModule: [TuningRecord, ...]}``) exactly those records, in
        one atomic rewrite of the record file: its other lines keep their order, the replaced workloads' new
        lines go at the end. (MetaSchedule's databases only append; a re-measurement that overrules the
        search has to remove what it overrules.)"""
        indices = {self._index(self.commit_workload(mod)): records for mod, records in replacements.items()}
        kept = [(index, record) for index, record in self._records if index not in indices]
        added = [(index, record) for index, records in indices.items() for record in records]
        # MemoryDatabase cannot forget a record: rebuild it, same workloads in the same order.
        memory = ms.database.MemoryDatabase()
        workloads = [memory.commit_workload(known.mod) for known in self._workloads]
        entries = []
        for index, record in kept + added:
            record = ms.database.TuningRecord(record.trace, workloads[index], record.run_secs, record.target,
                                              record.args_info)
            memory.commit_tuning_record(record)
            entries.append((index, record))
        lines = [_json_line([index, record.as_json()]) for index, record in entries]
        _write_atomically(self.path_tuning_record, lines)
        self._memory, self._workloads, self._records, self._record_lines = memory, workloads, entries, lines

    def get_top_k(self, workload, top_k: int):
        # By structure, not identity: a caller may hold a workload of the memory database before a rebuild.
        if not self._memory.has_workload(workload.mod):
            return []
        return self._memory.get_top_k(self._memory.commit_workload(workload.mod), top_k)

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
    far, and the run's progress with an estimate of the time left (a bar on a terminal).

    ``budgets`` are the trials each task has to run (fewer than ``--trials`` for a task resumed part-way); a task
    that has them is ended, and past ``deadline`` (``time.monotonic()``) every task is: the task scheduler stops
    after the batches in flight. The time left is the search's, extrapolated from the trials done, and never
    more than the time to the deadline; ``settle_seconds(seconds per trial)`` estimates the phase after the
    search (building the untuned schedules, re-measuring the best candidates), shown beside it.
    """

    def __init__(self, names: list[str], budgets: list[int], say, deadline: float | None = None,
                 settle_seconds=None):
        from tqdm import tqdm

        self.names, self.budgets, self.say, self.deadline = names, list(budgets), say, deadline
        self.settle_seconds = settle_seconds
        self.done = [0] * len(names)
        self.best = [float("inf")] * len(names)
        self.start = time.monotonic()
        self.out_of_time = False
        # On a terminal only (disable=None); the per-batch lines go to ``say`` either way.
        self.bar = tqdm(total=sum(self.budgets), unit="trial", disable=None, leave=False, dynamic_ncols=True)

    def time_left(self, now: float) -> str:
        """``~XmYYs left`` of the search (at most the time to the deadline), then the settling phase's estimate."""
        done, total = sum(self.done), sum(self.budgets)
        if not done:
            return "time left unknown"
        per_trial = (now - self.start) / done
        left = per_trial * max(0, total - done)
        if self.deadline is not None:
            left = min(left, max(0.0, self.deadline - now))
        text = f"~{_minutes(left)} left"
        if self.settle_seconds is not None:
            text += f", then ~{_minutes(self.settle_seconds(per_trial))} re-measuring"
        return text

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        if not runner_results:
            return  # the search had no new candidate for this task
        for result in runner_results:
            self.done[task_id] += 1
            if result.error_msg is None and result.run_secs and valid_seconds(mean_seconds(result.run_secs)):
                self.best[task_id] = min(self.best[task_id], mean_seconds(result.run_secs))
        self.bar.update(len(runner_results))
        failed = sum(r.error_msg is not None for r in runner_results)
        best, done, total = self.best[task_id], sum(self.done), sum(self.budgets)
        now = time.monotonic()
        self.say(f"[{self.names[task_id]}] {self.done[task_id]}/{self.budgets[task_id]} trials, best "
                 + (f"{_us(best)} us" if best < float("inf") else "none yet")
                 + (f" ({failed} of this batch failed)" if failed else "")
                 + f" | run {done}/{total} trials, {_minutes(now - self.start)} elapsed, {self.time_left(now)}")
        out_of_time = self.deadline is not None and now > self.deadline
        if out_of_time and not self.out_of_time:
            self.out_of_time = True
            self.say(f"time budget reached after {_minutes(now - self.start)}: ending the run after the batches "
                     f"in flight")
        # The scheduler ends a task itself once its search has MetaSchedule's per-task maximum (the largest budget;
        # ending it twice fails); one with a smaller budget left (resumed) is ended here once it has it.
        most = max(self.budgets)
        for task in range(len(self.names)):
            if task_scheduler.tasks_[task].is_terminated or self.done[task] >= most:
                continue
            if out_of_time or self.done[task] >= self.budgets[task]:
                task_scheduler.terminate_task(task)

    def close(self) -> None:
        self.bar.close()


def mean_seconds(run_secs) -> float:
    """A measurement's mean of its repeats (MetaSchedule records one time per repeat)."""
    return sum(float(s) for s in run_secs) / len(run_secs)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _us(seconds: float) -> str:
    """Microseconds to three significant digits or so: a kernel of 20 ns must not print as 0.0."""
    us = seconds * 1e6
    return f"{us:.{1 if us >= 10 else 2 if us >= 1 else 3 if us >= 0.1 else 4}f}"


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


# ---------------------------------------------------------------------------------------------------------------
# Settling: the best candidates of the search and the untuned schedule re-measured side by side decide the record

# The search ranks candidates by one measurement each, in MetaSchedule's runner process (whose TVM thread pool,
# left unconfigured, charges every parallel loop a worker's wake-up: some 5 us here, a kernel's whole cost on a
# small model). What it ranks first is re-measured against the untuned schedule before it becomes a record:
TOP_CANDIDATES = 3  # the search's best this many, by its own measurement
ROUNDS = 7  # each round times every candidate once, back to back: A, B, C, untuned, A, B, C, untuned, ...
ROUND_SEC = 0.005  # a candidate's share of a round: as many calls as fill it
SHARE_REPEATS = 5  # a share is timed in this many repeats, and the least counts (``_interleaved``)
MODEL_ROUND_SEC = 0.02  # the same for a whole model
MIN_ROUND_TICKS = 1000  # a repeat is sized to last this many ticks of the timer, to resolve to 0.1%,
MIN_VALID_TICKS = 100  # and one that lasts fewer than this many (1%) is no measurement (the sizing can be 10x off)
# Here, kernels and models are timed on one thread, as ``compare_with_default`` times the whole model (a board
# runs them as its server is configured, an emulated board counts one thread's cycles).
LOCAL_THREADS = 1
# TVM's CPU timer is std::chrono's clock (CLOCK_REALTIME here); a board's clock is not known here: 1 us assumed.
TIMER_RESOLUTION_SEC = max(time.clock_getres(time.CLOCK_REALTIME), 1e-9)
BOARD_TIMER_RESOLUTION_SEC = 1e-6
FAILED_SECS = 1e9  # MetaSchedule records a run that failed as 1e10 s
# Estimated cycles of the same code, summed in another order, differ in their last digits (14058.48960523426 vs
# 14058.489605234263, measured): as close as this is a tie, which the untuned schedule wins.
TIE_RELATIVE = 1e-9
SETTLED_FILE = "settled.json"
# The search's own records go under a twin of each workload, the function marked with this attribute: the same
# two files hold them (stock JSONDatabase reads the folder), and compile, which looks workloads up by structure,
# never applies a record the re-measurement did not settle.
SEARCH_ATTR = "bnn_tvm.search_history"
WORKER_START_SEC = 5.0  # a measuring process's start (importing TVM), for the time-left estimate


def valid_seconds(seconds, resolution: float = TIMER_RESOLUTION_SEC) -> bool:
    """Whether ``seconds`` per call can be the measurement of a kernel that ran.

    Parameters
    ----------
    seconds : float
        A time per call (a MetaSchedule record's mean ``run_secs``, or one round of a re-measurement).
    resolution : float
        The least time that counts as measured: a tick of the timer (``TIMER_RESOLUTION_SEC``), a cycle's time
        for estimated cycles.

    Returns
    -------
    bool
        True for a finite time of at least ``resolution`` and below MetaSchedule's mark of a failed run (1e10 s).
        0.0 is what a timer reads around a call that did no work, or around calls too short for its clock
        (``time_evaluator`` gives up re-timing zero-length runs after 100 tries and reports 0); neither says
        anything of the kernel, so neither may rank it.
    """
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return False
    return math.isfinite(seconds) and resolution <= seconds < FAILED_SECS


def faster_beyond_noise(candidate: list[float], baseline: list[float]) -> bool:
    """Whether ``candidate`` was faster than ``baseline`` beyond the noise of either: its slowest round took less
    than the baseline's fastest (rounds of the two timed back to back; one round each for deterministic numbers,
    where this is "strictly less", ties being equal to ``TIE_RELATIVE``)."""
    return bool(candidate) and bool(baseline) and max(candidate) < min(baseline) * (1 - TIE_RELATIVE)


def choose_schedule(default: list[float] | None, candidates: list[list[float] | None],
                    resolution: float = TIMER_RESOLUTION_SEC) -> int | None:
    """Which re-measured candidate replaces the untuned schedule: its index in ``candidates``, or None to keep
    the untuned one.

    The rule: the untuned schedule is kept unless a candidate wins beyond the measured noise
    (``faster_beyond_noise``): every round of the candidate took less time than every round of the untuned
    schedule, the rounds timing all of them back to back (7 rounds each: a candidate exactly as fast passes by
    chance once in 3432). Of the candidates that win, the one of the lowest median. A round that is not a valid
    measurement (``valid_seconds``: 0.0, below ``resolution``, failed) disqualifies its candidate; if the untuned
    schedule's measurement is not valid, nothing is compared and it is kept. With one round of deterministic
    numbers (estimated cycles) this is "strictly fewer": the untuned schedule wins ties.

    Parameters
    ----------
    default : list of float or None
        The untuned schedule's seconds per call, one per round (None: not measured).
    candidates : list of (list of float or None)
        Each candidate's seconds per call in the same rounds (None: not measured).
    resolution : float
        See ``valid_seconds``.

    Returns
    -------
    int or None
    """
    def measured(rounds):
        return bool(rounds) and all(valid_seconds(s, resolution) for s in rounds)

    if not measured(default):
        return None
    winners = [i for i, rounds in enumerate(candidates) if measured(rounds) and faster_beyond_noise(rounds, default)]
    return min(winners, key=lambda i: statistics.median(candidates[i])) if winners else None


def _key(mod: tvm.IRModule) -> str:
    """A schedule's (or workload's) identity: the structural hash of its module."""
    return f"{tvm_ffi.structural_hash(mod):x}"


def is_search_history(mod: tvm.IRModule) -> bool:
    """Whether a database workload is the search's twin of a kernel (its records: every candidate the search
    measured, ranked by the search's measurement), not one that compile applies."""
    func = mod["main"]
    return func.attrs is not None and SEARCH_ATTR in func.attrs


def _search_twin(mod: tvm.IRModule) -> tvm.IRModule:
    return mod if is_search_history(mod) else tvm.IRModule({"main": mod["main"].with_attr(SEARCH_ATTR, 1)})


@derived_object
class _SearchView(ms.database.PyDatabase):
    """The database as MetaSchedule's search sees it: every workload replaced by its twin (``_search_twin``).

    The search's measurements (and the seeds a resumed search starts from) stay in the log folder's files, one
    workload away from what compile applies, which only the re-measurement (``_settle``) writes.
    """

    def __init__(self, database: AtomicJSONDatabase):
        self.database = database

    def has_workload(self, mod: tvm.IRModule) -> bool:
        return self.database.has_workload(_search_twin(mod))

    def commit_workload(self, mod: tvm.IRModule):
        return self.database.commit_workload(_search_twin(mod))

    def commit_tuning_record(self, record) -> None:
        if not is_search_history(record.workload.mod):
            record = ms.database.TuningRecord(record.trace, self.commit_workload(record.workload.mod),
                                              record.run_secs, record.target, record.args_info)
        self.database.commit_tuning_record(record)

    def get_top_k(self, workload, top_k: int):
        return self.database.get_top_k(self.commit_workload(workload.mod), top_k)

    def get_all_tuning_records(self):
        return [r for r in self.database.get_all_tuning_records() if is_search_history(r.workload.mod)]

    def records_of(self, mod: tvm.IRModule) -> list:
        return self.database.records_of(_search_twin(mod))

    def __len__(self) -> int:
        return len(self.get_all_tuning_records())


class _Settled:
    """``settled.json`` in the log folder: per workload (``_key``), what its last settling compared and kept.

    ``candidates``: the schedules it measured; ``default``, ``winner``: the untuned schedule's and the kept
    one's; ``default_secs``, ``best_secs``: their medians. A resumed run does not measure a workload again
    whose candidates are the same and whose record is still the winner. Written atomically after the database:
    a run killed between the two settles that workload again.
    """

    def __init__(self, log_dir: Path):
        self.path = log_dir / SETTLED_FILE
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                warnings.warn(f"{self.path} is not valid JSON; every kernel will be re-measured", RuntimeWarning,
                              stacklevel=2)

    def save(self) -> None:
        _write_atomically(self.path, [json.dumps(self.entries, indent=1, sort_keys=True)])


def untuned_schedule(mod: tvm.IRModule, target: tvm.target.Target, binary: bool,
                     space_generator=None) -> s_tir.Schedule:
    """The schedule the untuned build gives ``mod``'s kernel, as a traced schedule whose trace is a record.

    A binary kernel's is its space's default decisions (the first design space of ``space_generator``, the task's
    ``BinarySpace``); a float kernel's is ``schedule_pass.schedule_function``'s: the first strategy that applies
    to one of its blocks, else the generic CPU schedule. (The trace is unprocessed, as the untuned build is.)
    """
    if binary:
        return space_generator.generate_design_space(mod)[0]
    from .schedule_pass import rule_of
    from .schedules.generic import schedule_generic

    sch = s_tir.Schedule(mod)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    with target:
        for block in blocks:
            name = sch.get(block).name_hint
            choices = strategies.candidates(rule_of(sch.get(block)), target)
            if choices:
                trial = sch.copy()
                if any(choice(trial, trial.get_sblock(name)) is not None for choice in choices):
                    return trial
        for block in blocks:
            schedule_generic(sch, block)
    return sch


def _replay(trace, mod: tvm.IRModule) -> s_tir.Schedule | None:
    """``trace`` applied to ``mod`` (postprocessing included, as compile applies a record), or None if it fails."""
    sch = s_tir.Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=False)
    except (tvm.TVMError, s_tir.ScheduleError):
        return None
    return sch


def _remove_artifact(path: str) -> None:
    folder = os.path.dirname(path)
    if os.path.basename(folder).startswith("bnn-tvm-candidate-"):  # made by export_candidate
        shutil.rmtree(folder, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


@derived_object
class _KeepBest(ms.measure_callback.PyMeasureCallback):
    """MetaSchedule's ``RemoveBuildArtifact``, except for the ``keep`` fastest validly measured candidates of each
    task, which the re-measurement loads instead of building them again. ``tasks``: the run's task of each
    scheduler task id."""

    def __init__(self, tasks: list[int], keep: int):
        self.tasks, self.keep = tasks, keep
        self.kept: dict[int, list[tuple[float, str, str]]] = {}  # task: [(seconds, schedule key, artifact)]

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        best = self.kept.setdefault(self.tasks[task_id], [])
        for candidate, built, ran in zip(measure_candidates, builder_results, runner_results, strict=True):
            if built.error_msg is not None or not built.artifact_path:
                continue
            seconds = mean_seconds(ran.run_secs) if ran.error_msg is None and ran.run_secs else None
            if seconds is not None and valid_seconds(seconds):
                best.append((seconds, _key(candidate.sch.mod), built.artifact_path))
            else:
                _remove_artifact(built.artifact_path)
        best.sort(key=lambda entry: entry[0])
        for _, _, path in best[self.keep:]:
            _remove_artifact(path)
        del best[self.keep:]

    def artifact(self, task: int, key: str) -> str | None:
        return next((path for _, known, path in self.kept.get(task, []) if known == key and os.path.exists(path)),
                    None)

    def discard(self) -> None:
        for entries in self.kept.values():
            for _, _, path in entries:
                _remove_artifact(path)
        self.kept.clear()


def _same_outputs(outputs: list, reference: list) -> bool:
    """Whether a candidate's arguments after one call equal the untuned schedule's (inputs unchanged, outputs
    computed): integers exactly, floats to a reordered sum's rounding."""
    import numpy as np

    for out, ref in zip(outputs, reference, strict=True):
        if out.shape != ref.shape or out.dtype != ref.dtype:
            return False
        if np.issubdtype(ref.dtype, np.floating):
            scale = float(np.nanmax(np.abs(ref))) if ref.size and not np.all(np.isnan(ref)) else 1.0
            if not np.allclose(out, ref, rtol=1e-3, atol=1e-3 * max(scale, 1.0), equal_nan=True):
                return False
        elif not np.array_equal(out, ref):
            return False
    return True


def _interleaved(evaluators: list, args: list, rounds: int, round_sec: float, resolution: float) -> list[dict]:
    """Time each of ``evaluators`` on ``args``, ``rounds`` times round-robin.

    ``evaluators``: per candidate, ``make(number, repeat, min_repeat_ms)`` returning a ``time_evaluator`` (or a
    string saying why there is none). A candidate's share of a round is ``SHARE_REPEATS`` repeats of as many calls
    as last ``round_sec / SHARE_REPEATS`` and ``MIN_ROUND_TICKS`` ticks of the timer (a repeat under
    ``MIN_VALID_TICKS`` ticks disqualifies the candidate: the clock cannot resolve it); its time for the round is
    the least of those repeats: another process taking the core only ever adds time, and on a shared machine
    it takes it often (measured here under load: single 5 ms timings of one kernel ranged 0.19-1.4 us). Returns
    per evaluator ``{"rounds": [seconds per call, ...], "number": calls per repeat}`` or ``{"error": why}``.
    """
    floor = max(round_sec / SHARE_REPEATS, MIN_ROUND_TICKS * resolution)
    timers, results = [], []
    for make in evaluators:
        timers.append(None)
        if isinstance(make, str):
            results.append({"error": make})
            continue
        try:  # time_evaluator raises the kernel's error: a run that did not execute is no measurement
            probe = float(make(1, 1, max(1, math.ceil(floor * 1e3)))(*args).mean)
        except Exception as error:  # noqa: BLE001 - any failure of the candidate is its own
            results.append({"error": f"did not run: {error}"})
            continue
        if not probe > 0:
            results.append({"error": "timed at 0 s: it did not run, or the clock did not move"})
            continue
        number = max(1, math.ceil(floor / probe))
        # The first calls can be much slower than the rest (an emulated board translates the code as it first runs
        # it): size the repeat again on calls at that count, until it fills half of its time at least.
        for _ in range(3):
            try:
                per_call = float(make(number, 1, 0)(*args).mean)
            except Exception as error:  # noqa: BLE001
                probe = None
                results.append({"error": f"did not run: {error}"})
                break
            if not per_call > 0 or per_call * number >= floor / 2:
                break
            number = max(number + 1, math.ceil(floor / per_call))
        if probe is None:
            continue
        timers[-1] = make(number, SHARE_REPEATS, 0)
        results.append({"rounds": [], "number": number})
    for _ in range(rounds):
        for timer, result in zip(timers, results, strict=True):
            if timer is None or "error" in result:
                continue
            try:
                repeats = [float(t) for t in timer(*args).results]
            except Exception as error:  # noqa: BLE001
                result.clear()
                result["error"] = f"did not run: {error}"
                continue
            per_call = min(repeats)
            if not per_call * result["number"] >= MIN_VALID_TICKS * resolution:
                result["error"] = (f"{result['number']} calls took {per_call * result['number']:.3g} s, under "
                                   f"{MIN_VALID_TICKS} ticks of the timer ({resolution:g} s)")
                del result["rounds"]
                continue
            result["rounds"].append(per_call)
    return results


def _time_kernels(modules: list, args_info: list, device, fill, resolution: float) -> list[dict]:
    """``_interleaved`` over the candidate ``modules`` of one kernel (the untuned schedule first), on one set of
    random arguments; then each run once more on fresh copies of them, and a candidate whose results differ from
    the untuned schedule's is rejected: it did not compute the kernel."""
    args = []
    for _, dtype, shape in args_info:
        arg = tvm.runtime.empty(shape, dtype, device)
        fill(arg)
        args.append(arg)
    initial = [arg.numpy() for arg in args]
    evaluators = [m if isinstance(m, str) else functools.partial(
        lambda number, repeat, min_ms, module: module.time_evaluator(
            module.entry_name, device, number=number, repeat=repeat, min_repeat_ms=min_ms), module=m)
        for m in modules]
    results = _interleaved(evaluators, args, ROUNDS, ROUND_SEC, resolution)
    reference = None
    for i, (module, result) in enumerate(zip(modules, results, strict=True)):
        if "error" in result:
            continue
        fresh = [tvm.runtime.tensor(value, device) for value in initial]
        module[module.entry_name](*fresh)
        outputs = [arg.numpy() for arg in fresh]
        if i == 0:
            reference = outputs
        elif reference is not None and not _same_outputs(outputs, reference):
            results[i] = {"error": "its results differ from the untuned schedule's: it did not compute the kernel"}
    return results


def _kernel_worker(spec_path: str, result_path: str) -> None:
    """The local re-measurement, in a process of its own (``_LocalKernels``): on ``LOCAL_THREADS`` threads, as
    ``compare_with_default`` runs the model."""
    from .runtime import set_threads

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
        groups.append(_time_kernels(modules, group["args"], device, fill, TIMER_RESOLUTION_SEC))
    _write_atomically(Path(result_path), [json.dumps(groups)])


class _LocalKernels:
    """Re-measures the candidates here: all kernels in one process of their own, ``LOCAL_THREADS`` threads."""

    resolution = TIMER_RESOLUTION_SEC

    def measure(self, groups: list[tuple[list, list[str]]]) -> list[list[dict]]:
        """``groups``: per kernel, its arguments (MetaSchedule ``ArgInfo`` JSON) and its candidates' libraries,
        the untuned schedule's first. Returns per kernel, per candidate, ``_interleaved``'s result."""
        with tempfile.TemporaryDirectory(prefix="bnn-tvm-settle-") as scratch:
            spec, result = Path(scratch) / "spec.json", Path(scratch) / "result.json"
            spec.write_text(json.dumps({"threads": LOCAL_THREADS,
                                        "groups": [{"args": args, "paths": paths} for args, paths in groups]}))
            command = [sys.executable, "-c", "import sys; from bnn_tvm.tuning import _kernel_worker; "
                       "_kernel_worker(sys.argv[1], sys.argv[2])", str(spec), str(result)]
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


class _BoardKernels:
    """Re-measures the candidates on a board of the key, all through one RPC session, as the server runs them."""

    resolution = BOARD_TIMER_RESOLUTION_SEC

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
                results.append(_time_kernels(modules, args, session.cpu(), fill, self.resolution))
            return results
        except (BoardError, OSError, tvm.TVMError) as error:
            return [[{"error": f"the board failed: {error}"} for _ in paths] for _, paths in groups]


class _EmulatedKernels:
    """Counts the candidates' cycles on the emulated board, all in one emulated process: deterministic, one
    round each, so the untuned schedule wins ties."""

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


def _settle(contexts, binary: list[bool], builder, measurer, database: AtomicJSONDatabase, search: _SearchView,
            keeper: _KeepBest | None, state: _Settled, say) -> list[dict]:
    """Decide each task's record by measuring, the same way and side by side, its untuned schedule and the
    search's ``TOP_CANDIDATES`` best (with the record an earlier run kept, when resumed): ``choose_schedule``'s
    rule.

    The records compile applies are appended, all tasks' in one atomic write: on a task's first settling its
    untuned schedule and the winner if that is another, at their re-measured times (the winner's mean, which
    compile ranks by, is then the least: each of its rounds was faster); later, if the verdict differs from the
    record there, the same, unless the record of the earlier run is still the least (then it stands, and nothing
    is appended). The file only grows, and a run killed at any instant leaves the records of the last settling.
    A task whose untuned schedule could not be measured gets no record (compile uses the untuned schedule).
    Search measurements that are not valid (``valid_seconds``) are never candidates. A task measured before with
    the same candidates, whose record is still the one it kept, is not measured again. Returns per task
    ``{"default", "best"}`` (medians this run, seconds, or None), ``"kept"``: whether its record is the untuned
    schedule, and ``"earlier"``: whether an earlier run's record stands against this run's verdict.
    """
    plans, figures, current_winner = [], [None] * len(contexts), []
    for i, context in enumerate(contexts):
        real = database.commit_workload(context.mod)
        default = untuned_schedule(context.mod, context.target, binary[i], context.space_generator)
        schedules, keys = [default], [_key(default.mod)]
        history = sorted((mean_seconds(r.run_secs), n, r) for n, r in enumerate(search.records_of(context.mod))
                         if r.run_secs and valid_seconds(mean_seconds(r.run_secs)))

        def add(record) -> str | None:
            sch = _replay(record.trace, context.mod)
            if sch is None:
                return None
            if _key(sch.mod) not in keys:
                schedules.append(sch)
                keys.append(_key(sch.mod))
            return _key(sch.mod)

        for _, _, record in history:
            if len(schedules) > TOP_CANDIDATES:
                break
            add(record)
        # The record an earlier run kept competes again, so that a resumed run replaces it only by a winner.
        current = database.get_top_k(real, 1)
        winner = add(current[0]) if current else None
        entry = state.entries.get(_key(context.mod))
        if entry and entry.get("candidates") == sorted(keys) and entry.get("winner") == winner:
            figures[i] = {"default": entry.get("default_secs"), "best": entry.get("best_secs"),
                          "kept": entry.get("winner") in (None, entry.get("default")), "unchanged": True}
            continue
        plans.append((i, real, schedules, keys))
        current_winner.append(winner)
    if not plans:
        return figures

    missing = [(p, n) for p, (i, _, schedules, keys) in enumerate(plans) for n in range(len(schedules))
               if keeper is None or keeper.artifact(i, keys[n]) is None]
    built = builder.build([ms.builder.BuilderInput(plans[p][2][n].mod, contexts[plans[p][0]].target)
                           for p, n in missing]) if missing else []
    artifacts = {(p, n): result.artifact_path if result.error_msg is None else None
                 for (p, n), result in zip(missing, built, strict=True)}
    say(f"re-measuring {sum(len(s) for _, _, s, _ in plans)} schedules of {len(plans)} kernels side by side "
        f"({len(missing)} built again), {ROUNDS if not isinstance(measurer, _EmulatedKernels) else 1} round(s)")
    groups, paths = [], {}
    for p, (i, _, schedules, keys) in enumerate(plans):
        paths[p] = [artifacts.get((p, n)) or (keeper.artifact(i, keys[n]) if keeper else None)
                    for n in range(len(schedules))]
        args = [info.as_json() for info in ms.arg_info.ArgInfo.from_prim_func(contexts[i].mod["main"])]
        groups.append((_plain_json(args), [path for path in paths[p] if path is not None]))
    try:
        measured = measurer.measure(groups) if any(g[1] for g in groups) else [[] for _ in groups]
    finally:
        for path in artifacts.values():
            if path is not None:
                _remove_artifact(path)

    appended = []
    for p, (i, real, schedules, keys) in enumerate(plans):
        results = iter(measured[p])
        rounds = [next(results) if path is not None else {"error": "it did not build"} for path in paths[p]]
        context = contexts[i]
        args_info = ms.arg_info.ArgInfo.from_prim_func(context.mod["main"])
        for n, result in enumerate(rounds[1:], start=1):
            if "error" in result:
                say(f"[{context.task_name}] candidate {n} rejected: {result['error'][:300]}")
        default_rounds = rounds[0].get("rounds")
        choice = choose_schedule(default_rounds, [r.get("rounds") for r in rounds[1:]], measurer.resolution)
        winner = None if choice is None else choice + 1

        def record(n):
            return ms.database.TuningRecord(schedules[n].trace, real, rounds[n]["rounds"], context.target, args_info)

        recorded = [r for r in database.records_of(real.mod) if r.run_secs and valid_seconds(mean_seconds(r.run_secs))]
        verdict = keys[winner or 0]
        before = len(appended)
        if not (default_rounds and all(valid_seconds(s, measurer.resolution) for s in default_rounds)):
            verdict = None
            say(f"[{context.task_name}] its untuned schedule could not be measured ({rounds[0].get('error')}): "
                f"nothing recorded" + ("" if recorded else ", compile keeps the untuned schedule"))
        elif not recorded or verdict != current_winner[p]:
            # The database only grows: this run's verdict is appended (a winner beside the untuned schedule's rounds
            # it beat), and compile applies the least mean. On a first settling that is the verdict; later, a record
            # of an earlier run may still be less (another run, another load on the machine): then it stands.
            appended += [record(0)] + ([record(winner)] if winner else [])
        kept = _best_key(database, real, appended, context.mod)
        if verdict is not None and kept != verdict:
            del appended[before:]  # nothing this run measured changes the record: keep the file as it is
            say(f"[{context.task_name}] this run's verdict differs from the record an earlier run kept, which is "
                f"faster by that run's measurement: that stands")
        median = {n: statistics.median(r["rounds"]) for n, r in enumerate(rounds) if r.get("rounds")}
        best = median.get(keys.index(kept)) if kept in keys else None
        figures[i] = {"default": median.get(0), "best": best, "kept": kept in (None, keys[0]),
                      "earlier": verdict is not None and kept != verdict}
        state.entries[_key(context.mod)] = {
            "name": context.task_name, "candidates": sorted(keys), "default": keys[0], "winner": kept,
            "default_secs": median.get(0), "best_secs": best}
    database.commit_tuning_records(appended)
    state.save()  # after the database: killed in between, the next run settles these again
    return figures


def _best_key(database: AtomicJSONDatabase, real, appended: list, mod: tvm.IRModule) -> str | None:
    """The schedule key of the record compile will apply to ``real``'s workload once ``appended`` is committed."""
    records = [r for r in database.records_of(real.mod) + [r for r in appended if r.workload.same_as(real)]
               if r.run_secs and valid_seconds(mean_seconds(r.run_secs))]
    if not records:
        return None
    sch = _replay(min(records, key=lambda r: mean_seconds(r.run_secs)).trace, mod)
    return _key(sch.mod) if sch is not None else None


def _adopt_unsettled(database: AtomicJSONDatabase, contexts, state: _Settled, say) -> None:
    """Records of a task's workload that no settling wrote (a folder an older bnn-tvm tuned, or ``tune`` killed
    between writing the database and ``settled.json``) become search history, in one atomic rewrite: they were
    ranked by the search's measurement only, and may be the 0.0 this module now rejects."""
    replacements = {}
    for context in contexts:
        if _key(context.mod) in state.entries:
            continue
        records = database.records_of(context.mod)
        if records:
            twin = database.commit_workload(_search_twin(context.mod))
            replacements[context.mod] = []
            replacements[twin.mod] = database.records_of(twin.mod) + [
                ms.database.TuningRecord(r.trace, twin, r.run_secs, r.target, r.args_info) for r in records]
    if replacements:
        database.replace_records(replacements)
        say(f"{len(replacements) // 2} kernels had records no re-measurement settled: they now seed the search "
            f"and are re-measured against the untuned schedules")


def _summary_table(names: list[str], figures: list[dict | None]) -> list[str]:
    """A line per kernel: its untuned and its kept schedule's re-measured time and the speedup, marked where the
    untuned schedule was kept, or where a record of an earlier run stands against this run's verdict."""
    width = max(len(name) for name in names)
    lines = [f"{'kernel':<{width}}  {'default us':>10}  {'best us':>10}  speedup"]
    for name, figure in zip(names, figures, strict=True):
        figure = figure or {}
        default, best = figure.get("default"), figure.get("best")
        gain = f"{default / best:6.2f}x" if default and best else "      -"
        note = "  (default kept)" if figure.get("kept") else "  (earlier record kept)" if figure.get("earlier") else ""
        lines.append(f"{name:<{width}}  {_us(default) if default else '-':>10}  {_us(best) if best else 'none':>10}  "
                     f"{gain}{note}")
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
    """A session on a board of the key, or ``BoardError`` within ``session_timeout_sec`` (MetaSchedule's own
    request waits with no limit: a board that died while requests were queued for it would hang the tuning).
    The candidate is then recorded as failed and tuning goes on."""
    from .board import request_session

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
class _TimedBuilder(ms.builder.PyBuilder):
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


def _tuning_target(target):
    """``target`` resolved as ``tune`` tunes it: with MetaSchedule's "num-cores" (this machine's physical cores
    for an x86 preset, which is tuned here)."""
    tvm_target, preset = _targets.resolve(target)
    if "num-cores" not in tvm_target.attrs:
        tvm_target = tvm.target.Target({**tvm_target.export(), "num-cores": physical_cores()})
    return tvm_target, preset


@contextlib.contextmanager
def _child_threads(threads: int):
    """TVM's thread count for the processes started meanwhile (MetaSchedule's runner workers): so that the search
    measures on the threads the re-measurement and ``compare_with_default`` use. (Unconfigured, the runner's pool
    hands every parallel loop to a sleeping worker, some 5 us each here.) It overrides a value the user exported:
    the search must rank as the final measurement measures."""
    names = {"TVM_NUM_THREADS": str(threads), "TVM_BIND_THREADS": "0"}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def tune(
    model,
    target="host",
    trials: int = 64,
    log_dir: str | os.PathLike = "tuning",
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    rpc_timeout: float = 30.0,
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
    that board (``BoardError`` if none registers under ``rpc_key`` within ``rpc_timeout`` seconds); a board
    that fails, dies or does not answer within ``run_timeout`` seconds costs the
    trials it was running (recorded as failed), not the run. An aarch64 preset without a board is measured
    on the emulated board by estimated cycles (``EmulatedCycleRunner``). Here, candidates are measured on
    ``LOCAL_THREADS`` thread(s), as ``compare_with_default`` measures the model.

    After the search, each task's record is settled (``_settle``): its untuned schedule and the search's
    ``TOP_CANDIDATES`` best are re-measured side by side, ``ROUNDS`` rounds of each in turn (in one process
    here, over one RPC session on a board, in one emulated process), and the untuned schedule stays the record
    unless a candidate was faster beyond the noise (``choose_schedule``: the rule, and what is rejected as no
    measurement). The kept schedule's record then has the least mean time of its workload, so compile applies
    it; the search's own measurements stay in the folder as history (``is_search_history``), which a resumed
    run seeds its search with and counts as trials done: a task with ``trials`` of them is not searched again,
    and a task whose candidates did not change is not re-measured.

    ``input_shapes`` and ``trust_model_code`` are ``bnn_tvm.compile``'s (pass the same to compile the tuned
    model: the records are for those shapes); ``trust_model_code`` runs code the model file carries.
    ``budget_minutes`` ends the search at that time (the batches in flight finish and are recorded; the
    re-measurement follows): the database is complete and usable either way. At the end ``say`` hears a table
    of each kernel's untuned and kept time, as re-measured. ``settle_with_whole_model`` then checks the model.
    """
    tvm_target, preset = _tuning_target(target)
    if bool(rpc_tracker) != bool(rpc_key):
        raise ValueError("rpc_tracker and rpc_key go together")
    if rpc_tracker:
        check_key_served(rpc_tracker, rpc_key, timeout=rpc_timeout)  # a wrong key fails now, not at measuring
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
    binary = [is_binary for _, is_binary in tasks]
    names = [c.task_name for c in contexts]
    say(f"tuning {len(contexts)} tasks ({sum(binary)} binary), {trials} trials each, records in {log_dir}")

    database = AtomicJSONDatabase(log_dir)
    state = _Settled(log_dir)
    _adopt_unsettled(database, contexts, state, say)
    search = _SearchView(database)
    done = [len(search.records_of(context.mod)) for context in contexts]
    active = [i for i in range(len(contexts)) if done[i] < trials]
    if any(done):
        say(f"resuming from the records in {log_dir}: {len(contexts) - len(active)} of {len(contexts)} tasks have "
            f"their {trials} trials, {sum(trials - done[i] for i in active)} trials to go")

    cross = preset.cross_compiler if preset is not None else None
    # The cores this process may use: MetaSchedule's default counts the machine's, ignoring taskset and cpusets.
    builder = _TimedBuilder(ms.builder.LocalBuilder(
        max_workers=len(os.sched_getaffinity(0)), timeout_sec=BUILD_TIMEOUT_SEC, f_build=build_candidate,
        f_export=functools.partial(export_candidate, cross_compiler=cross)))
    deadline = time.monotonic() + budget_minutes * 60 if budget_minutes is not None else None

    def settle_seconds(per_trial: float) -> float:
        # Building each task's untuned schedule, at the search's building rate; timing every task's candidates.
        return (len(contexts) * builder.per_candidate(per_trial) + WORKER_START_SEC
                + len(contexts) * (TOP_CANDIDATES + 1) * (ROUNDS + 2) * ROUND_SEC)

    progress = _Progress([names[i] for i in active], [trials - done[i] for i in active], say, deadline,
                         settle_seconds)
    keeper = _KeepBest(active, TOP_CANDIDATES)
    local = not rpc_tracker and not emulated
    try:
        with _child_threads(LOCAL_THREADS) if local else contextlib.nullcontext(), tvm_target:
            # (The schedule rules read the target: aarch64 and armv7 use different NEON intrinsics.)
            if rpc_tracker:
                host, port = parse_address(rpc_tracker)
                rpc_config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                                 session_timeout_sec=int(run_timeout))
                runner = BoardFarmRunner(
                    rpc_config, ms.runner.EvaluatorConfig(number=3, repeat=1, enable_cpu_cache_flush=False), say)
                measurer = _BoardKernels(rpc_config)
            elif emulated:
                runner = EmulatedCycleRunner(preset.name)
                measurer = _EmulatedKernels(runner)
                say(f"measuring on the emulated board: estimated {preset.core} cycles, not qemu's time")
            else:
                runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=5, repeat=1))
                measurer = _LocalKernels()
            if active:
                budgets = [trials - done[i] for i in active]
                ms.tune_tasks(
                    tasks=[contexts[i] for i in active], task_weights=[weights[i] for i in active],
                    work_dir=str(log_dir), max_trials_global=sum(budgets), max_trials_per_task=max(budgets),
                    num_trials_per_iter=min(trials_per_iter, trials), builder=builder, runner=runner,
                    database=search, cost_model="xgb",
                    # MetaSchedule's default callbacks, but the best candidates' libraries are kept for _settle.
                    measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel(),
                                       keeper, progress],
                )
            say("measuring the untuned schedules and re-measuring the best candidates beside them")
            figures = _settle(contexts, binary, builder, measurer, database, search, keeper, state, say)
    finally:
        progress.close()
        keeper.discard()
    for line in _summary_table(names, figures):
        say(line)
    return log_dir


# ---------------------------------------------------------------------------------------------------------------
# The whole model


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


def _model_worker(spec_path: str, result_path: str) -> None:
    """Time the builds of a spec side by side in this process, on ``LOCAL_THREADS`` threads (``_measure_builds``),
    and, if asked, each kernel inside them (``bench.per_kernel``, builds alternating)."""
    import numpy as np

    from .bench import per_kernel
    from .runtime import load

    spec = json.loads(Path(spec_path).read_text())
    models = [load(path, threads=spec["threads"]) for path in spec["paths"]]
    with np.load(spec["inputs"]) as saved:
        arrays = [saved[name] for name in models[0].signature().names()]
    device = models[0].device
    inputs = [tvm.runtime.tensor(x, device) for x in arrays]
    evaluators = [functools.partial(lambda number, repeat, min_ms, model: model.vm.time_evaluator(
        "main", device, number=number, repeat=repeat, min_repeat_ms=min_ms), model=m) for m in models]
    results = _interleaved(evaluators, inputs, spec["rounds"], MODEL_ROUND_SEC, TIMER_RESOLUTION_SEC)
    kernels: dict[str, list[list[float]]] = {}
    if spec["kernels"] and all("rounds" in r for r in results):
        # Each kernel's time per inference inside the model, the builds alternating; per round the least of
        # SHARE_REPEATS timings (as _interleaved), each of as many inferences as last MODEL_ROUND_SEC / SHARE_REPEATS.
        runs = max(1, math.ceil(MODEL_ROUND_SEC / SHARE_REPEATS / statistics.median(results[0]["rounds"])))
        for _ in range(spec["rounds"]):
            for index, model in enumerate(models):
                least: dict[str, float] = {}
                for _ in range(SHARE_REPEATS):
                    for row in per_kernel(model, arrays, runs):
                        least[row["kernel"]] = min(least.get(row["kernel"], math.inf), row["ms"] / 1e3)
                for kernel, seconds in least.items():
                    kernels.setdefault(kernel, [[] for _ in models])[index].append(seconds)
    _write_atomically(Path(result_path), [json.dumps({"results": results, "kernels": kernels})])


def _measure_builds(builds: dict[str, Path], preset, rpc_tracker, rpc_key, folder: Path, kernels: bool) -> dict:
    """Time the "default" and "tuned" builds as ``compare_with_default`` does: ``{"default": rounds, "tuned":
    rounds, "unit": ..., "scale": unit per round value, "deterministic": bool, "kernels": {kernel: (default
    rounds, tuned rounds)}}`` (per kernel inside the model, if ``kernels`` and the measure gives them; rounds in
    seconds or cycles)."""
    from . import armprofile
    from .bench import save_inputs
    from .runtime import CompiledModel, load
    from .signature import read_inputs

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
        from .board import request_session

        session = request_session(rpc_tracker, rpc_key)  # both builds in one session, alternating
        models = []
        for so in builds.values():
            session.upload(os.fspath(so))
            models.append(CompiledModel(session.load_module(os.path.basename(so)), session.cpu(), so))
        inputs = [tvm.runtime.tensor(x, session.cpu()) for x in read_inputs(models[0].signature(), seed=0)]
        evaluators = [functools.partial(lambda number, repeat, min_ms, model: model.vm.time_evaluator(
            "main", model.device, number=number, repeat=repeat, min_repeat_ms=min_ms), model=m) for m in models]
        results = _interleaved(evaluators, inputs, ROUNDS, MODEL_ROUND_SEC, BOARD_TIMER_RESOLUTION_SEC)
        measured, unit = {"results": results, "kernels": {}}, "ms on the board"
    else:
        spec, result = folder / "spec.json", folder / "result.json"
        signature = load(builds["default"]).signature()
        inputs_path = save_inputs(folder / "inputs.npz", signature, read_inputs(signature, seed=0))
        spec.write_text(json.dumps({"threads": LOCAL_THREADS, "paths": [str(so) for so in builds.values()],
                                    "inputs": str(inputs_path), "rounds": ROUNDS, "kernels": kernels}))
        done = subprocess.run([sys.executable, "-c", "import sys; from bnn_tvm.tuning import _model_worker; "
                               "_model_worker(sys.argv[1], sys.argv[2])", str(spec), str(result)],
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
    from .build import compile as compile_model

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
    tvm_target, _ = _tuning_target(target)
    mod = legalize(import_model(model, input_shapes=input_shapes, trust_model_code=trust_model_code), tvm_target)
    found = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        workload = ms.tune_context._normalize_mod(func)  # as MetaSchedule keys its records
        if database.records_of(workload):
            found.setdefault(_key(workload), (workload, []))[1].append(gvar.name_hint)
    return found


def _revert(database: AtomicJSONDatabase, state: _Settled, workloads: list[tuple[str, tvm.IRModule]]) -> None:
    """Give each of ``workloads`` (key, module) its untuned schedule's record back (no record, if it has none:
    compile then uses the untuned schedule), in one atomic rewrite; ``settled.json`` says so."""
    replacements = {}
    for key, mod in workloads:
        entry = state.entries.setdefault(key, {})
        untuned = [r for r in database.records_of(mod) if entry.get("default") is not None
                   and (sch := _replay(r.trace, mod)) is not None and _key(sch.mod) == entry["default"]]
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
    database, state = AtomicJSONDatabase(log_dir), _Settled(log_dir)
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
