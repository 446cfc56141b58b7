"""tune(): search the schedules of a model's kernels with MetaSchedule, locally or on a board.

The search spaces are our schedule rules themselves (``spaces``): their knobs default to what the untuned
build uses, and MetaSchedule's evolutionary search, guided by its XGBoost cost model, varies them. Float
kernels (TVM's own ops) are tuned too, unless ``only_binary``. Candidates are built and measured here, on a
board behind a tracker, or by estimated cycles on the emulated board (``runners``).

The search's measurement only ranks candidates. What decides a kernel's record is a re-measurement after the
search (``settle``): its untuned schedule and the search's best three, side by side; the untuned schedule
stays unless a candidate is faster beyond the noise (``timing.choose_schedule``).
``whole_model.settle_with_whole_model`` then times the whole model and sets back the kernels that lost if it is
not faster.

The records go to the log folder's tuning database (``bnn_tvm.tuning_database``): the settled records under
each kernel's workload, which is what ``compile(..., tuning_records=folder)`` applies, and the search's under
a marked twin of it. Tuning again with the same folder resumes: the search's records seed the search and count
as trials done.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from pathlib import Path

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..board import check_key_served, parse_address
from ..build import import_model, legalize
from ..schedule_pass import is_binary_task
from ..tuning_database import AtomicJSONDatabase, SearchHistoryView, mean_seconds
from .runners import (
    BoardFarmRunner,
    BoardMeasurer,
    EmulatedCycleRunner,
    EmulatedMeasurer,
    LocalMeasurer,
    TimedBuilder,
    build_candidate,
    export_candidate,
)
from .settle import TOP_CANDIDATES, KeepBest, SettledFile, adopt_unsettled, settle_records, summary_table
from .spaces import BinarySpace, float_space, tuning_target
from .timing import LOCAL_THREADS, ROUND_SEC, ROUNDS, format_minutes, format_us, valid_seconds

# Building a candidate on 2 cores can take a while; a board over qemu even longer to run it.
BUILD_TIMEOUT_SEC = 120
RUN_TIMEOUT_SEC = 120

WORKER_START_SEC = 5.0  # a measuring process's start (importing TVM), for the time-left estimate


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
        text = f"~{format_minutes(left)} left"
        if self.settle_seconds is not None:
            text += f", then ~{format_minutes(self.settle_seconds(per_trial))} re-measuring"
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
                 + (f"{format_us(best)} us" if best < float("inf") else "none yet")
                 + (f" ({failed} of this batch failed)" if failed else "")
                 + f" | run {done}/{total} trials, {format_minutes(now - self.start)} elapsed, {self.time_left(now)}")
        out_of_time = self.deadline is not None and now > self.deadline
        if out_of_time and not self.out_of_time:
            self.out_of_time = True
            self.say(f"time budget reached after {format_minutes(now - self.start)}: ending the run after the batches "
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

    After the search, each task's record is settled (``settle_records``): its untuned schedule and the search's
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
    tvm_target, preset = tuning_target(target)
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
    state = SettledFile(log_dir)
    adopt_unsettled(database, contexts, state, say)
    search = SearchHistoryView(database)
    done = [len(search.records_of(context.mod)) for context in contexts]
    active = [i for i in range(len(contexts)) if done[i] < trials]
    if any(done):
        say(f"resuming from the records in {log_dir}: {len(contexts) - len(active)} of {len(contexts)} tasks have "
            f"their {trials} trials, {sum(trials - done[i] for i in active)} trials to go")

    cross = preset.cross_compiler if preset is not None else None
    # The cores this process may use: MetaSchedule's default counts the machine's, ignoring taskset and cpusets.
    builder = TimedBuilder(ms.builder.LocalBuilder(
        max_workers=len(os.sched_getaffinity(0)), timeout_sec=BUILD_TIMEOUT_SEC, f_build=build_candidate,
        f_export=functools.partial(export_candidate, cross_compiler=cross)))
    deadline = time.monotonic() + budget_minutes * 60 if budget_minutes is not None else None

    def settle_seconds(per_trial: float) -> float:
        # Building each task's untuned schedule, at the search's building rate; timing every task's candidates.
        return (len(contexts) * builder.per_candidate(per_trial) + WORKER_START_SEC
                + len(contexts) * (TOP_CANDIDATES + 1) * (ROUNDS + 2) * ROUND_SEC)

    progress = _Progress([names[i] for i in active], [trials - done[i] for i in active], say, deadline,
                         settle_seconds)
    keeper = KeepBest(active, TOP_CANDIDATES)
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
                measurer = BoardMeasurer(rpc_config)
            elif emulated:
                runner = EmulatedCycleRunner(preset.name)
                measurer = EmulatedMeasurer(runner)
                say(f"measuring on the emulated board: estimated {preset.core} cycles, not qemu's time")
            else:
                runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=5, repeat=1))
                measurer = LocalMeasurer()
            if active:
                budgets = [trials - done[i] for i in active]
                ms.tune_tasks(
                    tasks=[contexts[i] for i in active], task_weights=[weights[i] for i in active],
                    work_dir=str(log_dir), max_trials_global=sum(budgets), max_trials_per_task=max(budgets),
                    num_trials_per_iter=min(trials_per_iter, trials), builder=builder, runner=runner,
                    database=search, cost_model="xgb",
                    # MetaSchedule's default callbacks, but the best candidates' libraries are kept for settle_records.
                    measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel(),
                                       keeper, progress],
                )
            say("measuring the untuned schedules and re-measuring the best candidates beside them")
            figures = settle_records(contexts, binary, builder, measurer, database, search, keeper, state, say)
    finally:
        progress.close()
        keeper.discard()
    for line in summary_table(names, figures):
        say(line)
    return log_dir
