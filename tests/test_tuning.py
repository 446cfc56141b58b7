"""Tuning with MetaSchedule (XGBoost cost model): locally and on the emulated board, few trials but real.

Checks that the records are used by compile (the compiled kernels are the database's best schedules, compared
structurally, not just the count compile prints) and that tuned builds are bit-exact; that a tuned build is never
slower than the default build by the tuner's own final measurement (the side-by-side re-measurement decides each
kernel's record, the whole model overrules it), and no invalid measurement (0.0, below the timer's resolution)
becomes a record; that a budget bounds the time-left estimate and a resumed run measures nothing twice. (The
database itself: tests/test_tuning_database.py.)
"""

import json
import re
import shutil
import time

import numpy as np
import pytest
import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

import bnn_tvm
from bnn_tvm import zoo
from bnn_tvm.build import import_model, legalize
from bnn_tvm.runtime import load_remote
from bnn_tvm.schedule_pass import is_binary_task, schedule_function
from bnn_tvm.tuning import _Progress, tune
from bnn_tvm.tuning.runners import LocalMeasurer, build_candidate, export_candidate
from bnn_tvm.tuning.settle import SETTLED_FILE, SettledFile, adopt_unsettled, schedule_key, settle_records
from bnn_tvm.tuning.spaces import BinarySpace, float_space, tuning_target, untuned_schedule
from bnn_tvm.tuning.timing import TIMER_RESOLUTION_SEC, choose_schedule, valid_seconds
from bnn_tvm.tuning.whole_model import settle_with_whole_model
from bnn_tvm.tuning_database import (
    RECORD_FILE,
    WORKLOAD_FILE,
    AtomicJSONDatabase,
    SearchHistoryView,
    apply_tuning_records,
    plain_json,
)

from .test_lce import input_for
from .test_tuning_database import split_record, tiny_workload

CASE = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)
# Quantize, a bconv with packed output, a binary max-pool of a few words (a kernel of some 20 ns), a bconv.
MAXPOOL = zoo.ConvCase("bmaxpool", output="packed", maxpool=True, channels_out=64)
TRIALS = 2
HOST = bnn_tvm.targets.resolve("host")[0]
# A kernel's line of the table tune prints: name, default and best microseconds, speedup.
# A progress line with a measured best: "[task] 2/2 trials, best 1.23 us | run ..." (not "best none yet").
PROGRESS_LINE = re.compile(r"^\[[^\]]+\] \d+/\d+ trials, best (?=[0-9.]*[1-9])[0-9.]+ us")
KERNEL_LINE = re.compile(r"^(bnn_\w+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)x(  \(default kept\))?"
                         r"(  \(earlier record kept\))?$")


def assert_compiled_with_records(path, target_name, log_dir):
    """Every binary kernel of the model, as compile schedules it with ``log_dir``, is the best record's."""
    target = bnn_tvm.targets.resolve(target_name)[0]
    before = legalize(import_model(path), target)
    with target:
        after = apply_tuning_records(before, target, log_dir)
    database = ms.database.JSONDatabase(work_dir=str(log_dir))
    checked = 0
    for gvar, func in before.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or not is_binary_task(func):
            continue
        workload = ms.tune_context._normalize_mod(func)  # as MetaSchedule keys its records
        best = database.query_schedule(workload, target, workload_name="main")
        assert best is not None, f"no record for {gvar.name_hint}"
        tvm.ir.assert_structural_equal(after[gvar.name_hint].body, best.mod["main"].body)
        checked += 1
    assert checked >= 2


def kernel_tasks(path, target=HOST):
    """The model's kernels as tuning extracts them: {name: workload module}."""
    mod = legalize(import_model(path), target)
    return {t.task_name: t.dispatched[0] for t in ms.relax_integration.extract_tasks(mod, target)}


def best_schedule(log_dir, workload) -> tvm.IRModule:
    """The schedule compile applies to ``workload`` from ``log_dir``, as stock MetaSchedule reads the folder."""
    best = ms.database.JSONDatabase(work_dir=str(log_dir)).query_schedule(workload, HOST, workload_name="main")
    assert best is not None
    return best.mod


def untuned_kernel(workload) -> tvm.IRModule:
    """The kernel the untuned build compiles for ``workload``."""
    return tvm.IRModule({"main": schedule_function(workload["main"], HOST)})


def left_seconds(messages) -> list[tuple[int, int]]:
    """(elapsed, estimated left) seconds of each progress line."""
    found = [re.search(r"(\d+)m(\d\d)s elapsed, ~(\d+)m(\d\d)s left", m) for m in messages]
    return [(int(f[1]) * 60 + int(f[2]), int(f[3]) * 60 + int(f[4])) for f in found if f]


# ---------------------------------------------------------------- a host run cut short by its budget, then resumed


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """MAXPOOL tuned here with a budget that ends the search after its first batch (one kernel's two trials); the
    folder's files as that run left them."""
    log_dir = tmp_path_factory.mktemp("interrupted") / "log"
    messages = []
    tune(zoo.cached_tflite(MAXPOOL), "host", trials=TRIALS, log_dir=log_dir, say=messages.append,
         budget_minutes=0.001)
    snapshot = tmp_path_factory.mktemp("snapshot")
    for name in (RECORD_FILE, WORKLOAD_FILE, SETTLED_FILE):
        shutil.copy(log_dir / name, snapshot / name)
    return log_dir, messages, snapshot


@pytest.fixture(scope="module")
def resumed(interrupted, tmp_path_factory):
    """The interrupted run resumed to its end, in a copy of its folder."""
    log_dir = tmp_path_factory.mktemp("resumed") / "log"
    shutil.copytree(interrupted[0], log_dir)
    messages = []
    tune(zoo.cached_tflite(MAXPOOL), "host", trials=TRIALS, log_dir=log_dir, say=messages.append)
    return log_dir, messages


def test_a_budget_bounds_the_time_left(interrupted):
    _, messages, _ = interrupted
    assert any("time budget reached" in m for m in messages), messages
    lines = left_seconds(messages)
    assert lines, messages
    # A 0.06 s budget is past at the first line: nothing of the search is left (at its pace, 6 more trials).
    assert all(left == 0 for _, left in lines), messages


def test_the_time_left_is_never_past_the_deadline():
    """30 s into a run of 128 trials with 2 done, the pace says 31 minutes are left; a 90 s budget has 60 s."""
    progress = _Progress(["a", "b"], [64, 64], [].append, deadline=time.monotonic() + 60,
                         settle_seconds=lambda per_trial: 12.0)
    try:
        progress.start -= 30
        progress.done = [2, 0]
        text = progress.time_left(time.monotonic())
    finally:
        progress.close()
    found = re.fullmatch(r"~(\d+)m(\d\d)s left, then ~0m12s re-measuring", text)
    assert found, text
    assert 55 <= int(found[1]) * 60 + int(found[2]) <= 60, text


def test_resume_continues_the_run_and_measures_nothing_twice(interrupted, resumed):
    """The resumed run keeps every line the first run wrote, in order, ahead of its own; a kernel that had its trials
    gets neither a trial nor a re-measurement more (its records and its settling are the first run's, to the last
    digit of the times); no schedule of a kernel is measured twice; every kernel has its trials at the end."""
    _, _, snapshot = interrupted
    log_dir, messages = resumed
    for name in (RECORD_FILE, WORKLOAD_FILE):
        old, new = (snapshot / name).read_text().splitlines(), (log_dir / name).read_text().splitlines()
        assert new[:len(old)] == old, f"{name}: the first run's lines are not the start of the resumed run's"
    before, after = AtomicJSONDatabase(snapshot), AtomicJSONDatabase(log_dir)
    settled_before, settled_after = SettledFile(snapshot).entries, SettledFile(log_dir).entries
    tasks = kernel_tasks(zoo.cached_tflite(MAXPOOL))
    complete = [name for name, mod in tasks.items() if len(SearchHistoryView(before).records_of(mod)) >= TRIALS]
    assert 1 <= len(complete) < len(tasks), complete  # the budget cut the first run short
    for name, mod in tasks.items():
        searched = [_record_lines(SearchHistoryView(database).records_of(mod)) for database in (before, after)]
        assert len(searched[1]) >= TRIALS, name
        assert searched[1][:len(searched[0])] == searched[0], f"{name}: the first run's trials were not kept"
        measured = [schedule_key(_replayed(r, mod)) for r in SearchHistoryView(after).records_of(mod)]
        assert len(measured) == len(set(measured)), f"{name}: a schedule was measured twice"
        if name in complete:
            assert searched[1] == searched[0], f"{name} was searched again"
            settled = [_record_lines(database.records_of(mod)) for database in (before, after)]
            assert settled[1] == settled[0], f"{name} got records again"
            assert settled_after[schedule_key(mod)] == settled_before[schedule_key(mod)], f"{name} was re-measured"
    assert any("re-measuring" in m and f"of {len(tasks) - len(complete)} kernels" in m for m in messages), messages


def _record_lines(records) -> list[str]:
    """Records as the database file writes them (trace, times, target, arguments), to compare two runs' records."""
    return [json.dumps(plain_json(record.as_json()), sort_keys=True) for record in records]


def assert_bit_exact(actual, expected):
    """The same array to the bit: dtype, shape and bytes (``assert_array_equal`` takes 0.0 == -0.0, NaN == NaN, and
    equal values of different dtypes)."""
    actual, expected = np.ascontiguousarray(actual), np.ascontiguousarray(expected)
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), (actual.dtype, actual.shape,
                                                                             expected.dtype, expected.shape)
    differ = np.flatnonzero(actual.view(np.uint8) != expected.view(np.uint8))
    assert not differ.size, f"{differ.size} bytes differ, the first at byte {differ[0]}"


def test_tuned_records_are_used_and_bitexact(resumed, tmp_path):
    log_dir, messages = resumed
    path = zoo.cached_tflite(MAXPOOL)
    assert any(PROGRESS_LINE.search(m) for m in messages), messages  # progress showed a measured best
    assert_compiled_with_records(path, "host", log_dir)
    reports = []
    so = tmp_path / "tuned.so"
    bnn_tvm.compile(path, "host", tuning_records=log_dir,
                    report=lambda t, n, _folder: reports.append((t, n))).export_library(so)
    assert reports and reports[0][0] == 4  # every kernel has a record (its untuned schedule, at least)
    x = input_for(MAXPOOL)
    assert_bit_exact(bnn_tvm.load(so)(x), zoo.lce_interpreter(path).predict(x))


def test_the_untuned_schedule_stays_unless_a_candidate_beats_it_beyond_noise(resumed):
    """Per kernel, the record compile applies is the untuned build's own kernel where the re-measurement kept it;
    elsewhere the winner's every round was faster than every round of the untuned schedule, recorded beside it."""
    log_dir, messages = resumed
    table = {m[1]: m for m in (KERNEL_LINE.match(line) for line in messages) if m}
    tasks = kernel_tasks(zoo.cached_tflite(MAXPOOL))
    assert table.keys() == tasks.keys(), messages
    settled = SettledFile(log_dir).entries
    database = AtomicJSONDatabase(log_dir)
    for name, workload in tasks.items():
        entry = settled[schedule_key(workload)]
        records = [(schedule_key(_replayed(r, workload)), [float(s) for s in r.run_secs], r)
                   for r in database.records_of(workload)]
        assert records and all(valid_seconds(s) for _, rounds, _ in records for s in rounds), name
        if entry["winner"] == entry["default"]:
            tvm.ir.assert_structural_equal(best_schedule(log_dir, workload), untuned_kernel(workload))
            assert table[name][5], table[name][0]  # the table says so
        else:
            # The winner's line follows the untuned schedule's rounds it was re-measured beside.
            last = max(n for n, (key, _, _) in enumerate(records) if key == entry["winner"])
            untuned = [rounds for key, rounds, _ in records[:last] if key == entry["default"]][-1]
            assert max(records[last][1]) < min(untuned), name
            tvm.ir.assert_structural_equal(best_schedule(log_dir, workload), _replayed(records[last][2], workload))
            assert not table[name][5] and (table[name][6] or float(table[name][4]) >= 1.0), table[name][0]


def _replayed(record, workload) -> tvm.IRModule:
    sch = s_tir.Schedule(workload)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod


def test_the_whole_model_is_never_slower_tuned(resumed, tmp_path):
    """As tuned, by the tuner's own final measurement: faster, or every tuned kernel back to its untuned schedule."""
    log_dir = tmp_path / "log"
    shutil.copytree(resumed[0], log_dir)
    said = []
    result = settle_with_whole_model(zoo.cached_tflite(MAXPOOL), "host", log_dir, say=said.append,
                                     workdir=tmp_path / "builds")
    assert result.unit == "ms here, 1 thread" and said == [result.note]
    assert 0 < result.tuned <= result.default, result
    for name in result.reverted:
        workload = kernel_tasks(zoo.cached_tflite(MAXPOOL))[name]
        tvm.ir.assert_structural_equal(best_schedule(log_dir, workload), untuned_kernel(workload))


def slow_schedule(workload) -> s_tir.Schedule:
    """``workload`` with each block's innermost spatial loop parallel: a thread-pool launch per iteration of the
    loops around it (MAXPOOL's bnn_bconv2d, 1 thread, here: 6.6 us, 1.9 us untuned; unscheduled, 0.6 us)."""
    sch = s_tir.Schedule(workload)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        spatial = [iv.iter_type == 0 for iv in sch.get(block).iter_vars]
        inner = max((i for i, is_spatial in enumerate(spatial) if is_spatial), default=0)
        if inner > 0 and all(spatial[:inner + 1]):
            sch.parallel(sch.get_loops(block)[inner])
    return sch


def test_the_whole_model_sets_back_a_kernel_that_made_it_slower(resumed, tmp_path):
    """A record that makes the model slower, entered as bnn_bconv2d's winner, is found out by timing the model and
    replaced by the untuned schedule."""
    log_dir = tmp_path / "log"
    shutil.copytree(resumed[0], log_dir)
    path = zoo.cached_tflite(MAXPOOL)
    workload = kernel_tasks(path)["bnn_bconv2d"]
    database, settled = AtomicJSONDatabase(log_dir), SettledFile(log_dir)
    slow = slow_schedule(workload)
    database.commit_tuning_record(ms.database.TuningRecord(
        slow.trace, database.commit_workload(workload), [1e-9], HOST,
        ms.arg_info.ArgInfo.from_prim_func(workload["main"])))
    settled.entries[schedule_key(workload)]["winner"] = schedule_key(slow.mod)
    settled.save()
    tvm.ir.assert_structural_equal(best_schedule(log_dir, workload), slow.mod)  # compile would apply it
    result = settle_with_whole_model(path, "host", log_dir, say=[].append, workdir=tmp_path / "builds")
    assert "bnn_bconv2d" in result.reverted and "not faster tuned" in result.note, result
    tvm.ir.assert_structural_equal(best_schedule(log_dir, workload), untuned_kernel(workload))
    assert result.tuned <= result.default, result


# ---------------------------------------------------------------- the re-measurement's rules, on real kernels


def test_invalid_measurements_are_never_chosen():
    default = [1e-6] * 7
    for bogus in ([0.0] * 7, [1e-12] * 7, [float("nan")] * 7, [1e10] * 7, [5e-7] * 6 + [0.0], [], None):
        assert choose_schedule(default, [bogus]) is None, bogus
    assert choose_schedule(default, [[0.0] * 7, [5e-7] * 7]) == 1  # the measured one wins, not the 0.0
    assert choose_schedule([0.0] * 7, [[5e-7] * 7]) is None  # nothing compares with an unmeasured default
    # Beyond the noise: the candidate's slowest round is faster than the default's fastest.
    assert choose_schedule([1.0, 1.1, 1.2], [[0.9, 0.95, 1.05]]) is None
    assert choose_schedule([1.0, 1.1, 1.2], [[0.9, 0.95, 0.99]]) == 0
    assert choose_schedule([7e-9], [[7e-9]]) is None  # one deterministic round: the default wins ties
    assert not valid_seconds(TIMER_RESOLUTION_SEC / 2) and valid_seconds(TIMER_RESOLUTION_SEC)


def test_a_measurement_of_zero_never_becomes_the_best_record(tmp_path):
    """A folder an earlier tuner left with the float kernel b = a + 1 measured at 0.0 s, below the timer's resolution
    and at a plausible time: the re-measurement compares the untuned schedule with the plausible one only, and
    records nothing of the two bogus figures."""
    mod = tiny_workload()
    stock = ms.database.JSONDatabase(work_dir=str(tmp_path))  # as an older bnn-tvm, or MetaSchedule, wrote it
    for inner, seconds in ((1, 0.0), (2, 1e-12), (4, 3e-7)):
        stock.commit_tuning_record(split_record(stock, mod, inner, seconds))
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    context = ms.TuneContext(mod=mod, target=target, space_generator=float_space(), task_name="tiny")
    database, settled, said = AtomicJSONDatabase(tmp_path), SettledFile(tmp_path), []
    adopt_unsettled(database, [context], settled, said.append)
    assert database.records_of(mod) == [] and len(SearchHistoryView(database).records_of(mod)) == 3
    builder = ms.builder.LocalBuilder(max_workers=1, f_build=build_candidate, f_export=export_candidate)
    figures = settle_records([context], [False], builder, LocalMeasurer(), database, SearchHistoryView(database),
                             None, settled, said.append)
    entry = settled.entries[schedule_key(mod)]
    assert len(entry["candidates"]) == 2, entry  # the untuned schedule and the inner-4 split
    records = database.records_of(mod)
    assert records and all(valid_seconds(float(s)) for r in records for s in r.run_secs), said
    best = ms.database.JSONDatabase(work_dir=str(tmp_path)).query_tuning_record(mod, target, "main")
    assert all(float(s) > 1e-10 for s in best.run_secs)
    assert figures[0]["default"] and figures[0]["best"], figures


def test_the_untuned_schedule_is_what_the_untuned_build_compiles():
    """The untuned schedule recorded beside the candidates is the untuned build's kernel, binary and float."""
    tuning = tuning_target("host")[0]  # with the "num-cores" MetaSchedule wants; compile has none
    for name, workload in kernel_tasks(zoo.cached_tflite(MAXPOOL), tuning).items():
        context = ms.TuneContext(mod=workload, target=tuning, space_generator=BinarySpace(), task_name=name)
        with tuning:
            sch = untuned_schedule(workload, tuning, True, context.space_generator)
        tvm.ir.assert_structural_equal(sch.mod, untuned_kernel(workload))
    tiny = tiny_workload()
    tvm.ir.assert_structural_equal(untuned_schedule(tiny, tuning, False).mod, untuned_kernel(tiny))
    replayed = s_tir.Schedule(tiny)
    untuned_schedule(tiny, tuning, False).trace.apply_to_schedule(replayed, remove_postproc=False)
    tvm.ir.assert_structural_equal(replayed.mod, untuned_kernel(tiny))  # its trace, as a record, replays it


# ---------------------------------------------------------------- on a board


def test_board_tuning_through_tracker(emulated_board, tmp_path, build_and_load):
    path = zoo.cached_tflite(CASE)
    tracker, key = emulated_board
    messages = []
    log_dir = tune(path, "rpi4", trials=TRIALS, log_dir=tmp_path / "log", rpc_tracker=tracker, rpc_key=key,
                   only_binary=True, say=messages.append)
    # Candidates were measured on the board, and each kernel re-measured there.
    assert any(PROGRESS_LINE.search(m) for m in messages), messages
    kernels = [m for m in map(KERNEL_LINE.match, messages) if m]
    assert len(kernels) == 3 and all(float(k[2]) > 0 and float(k[3]) > 0 for k in kernels), messages
    assert_compiled_with_records(path, "rpi4", log_dir)
    so = tmp_path / "tuned-rpi4.so"
    bnn_tvm.compile(path, "rpi4", tuning_records=log_dir).export_library(so)
    x = input_for(CASE)
    assert_bit_exact(load_remote(so, tracker, key)(x), build_and_load(path)(x))


def test_tuning_a_target_nothing_here_runs_needs_a_board(tmp_path):
    with pytest.raises(ValueError, match="rpc-tracker"):
        tune(zoo.cached_tflite(CASE), "rpi3", trials=1, log_dir=tmp_path)  # armv7: no emulated board


def test_emulated_board_tuning_ranks_by_estimated_cycles(emulated_board, tmp_path):
    """rpi4 without a board: candidates ranked by estimated Cortex-A72 cycles; once the whole model has settled the
    records, no tuned kernel takes more estimated cycles inside the model than its untuned schedule, and the tuned
    build is bit-exact with LCE (run on the emulated board).

    (A kernel's estimate alone, on random arguments, and inside the model differ: measured on this case's bconv,
    a candidate 0.56% under the untuned schedule alone was 3.0% over it inside the model. The whole model's
    per-kernel estimates are what set such a kernel back.)"""
    path = zoo.cached_tflite(CASE)
    messages = []
    log_dir = tune(path, "rpi4", trials=TRIALS, log_dir=tmp_path / "log", only_binary=True, say=messages.append)
    assert any("estimated cortex-a72 cycles" in m for m in messages), messages
    assert any(PROGRESS_LINE.search(m) for m in messages), messages
    kernels = [m for m in map(KERNEL_LINE.match, messages) if m]
    assert len(kernels) == 3 and all(float(k[2]) > 0 and float(k[3]) > 0 for k in kernels), messages
    result = settle_with_whole_model(path, "rpi4", log_dir, say=messages.append, workdir=tmp_path / "builds")
    assert result.unit == "estimated cortex-a72 cycles" and result.tuned <= result.default, result
    if result.tuned < result.default:  # some tuned kernels stand: each one is no slower inside the model
        settled = SettledFile(log_dir).entries
        workloads = kernel_tasks(path, bnn_tvm.targets.resolve("rpi4")[0])
        tuned = [name for name, mod in workloads.items()
                 if settled[schedule_key(mod)]["winner"] not in (None, settled[schedule_key(mod)]["default"])]
        assert tuned and all(name in result.kernels for name in tuned), (tuned, result.kernels)
        # (Untuned kernels are the same code in both libraries, whose estimates still differ by up to 0.4%,
        # measured: a block of the library's own code is counted to one kernel or the other.)
        assert all(result.kernels[name][1] < result.kernels[name][0] for name in tuned), result.kernels
    assert_compiled_with_records(path, "rpi4", log_dir)
    so = tmp_path / "tuned-rpi4.so"
    bnn_tvm.compile(path, "rpi4", tuning_records=log_dir, pretuned=False).export_library(so)
    tracker, key = emulated_board
    x = input_for(CASE)
    assert_bit_exact(load_remote(so, tracker, key)(x), zoo.lce_interpreter(path).predict(x))


# A board dying mid-run: tests/test_farm.py kills one of two boards during a tuning run; the other finishes it
# and the database loads (the test that killed a lone board here cost CI two more minutes for the same path).


def test_cli_tune_with_a_budget_stops_early_and_reports(tmp_path):
    """A budget too short for the run ends it after the first batch, with a usable database, the per-kernel table
    and the whole model measured tuned against the default schedules; no time-left estimate passes the budget."""
    from .test_bundle import bnn_tvm_cli

    log_dir = tmp_path / "log"
    done = bnn_tvm_cli("tune", str(zoo.cached_tflite(CASE)), "--target", "host", "--trials", "64", "--only-binary",
                       "--budget", "0.001", "--log", str(log_dir))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "time budget reached" in out and " left" in out, out
    assert all(left == 0 for _, left in left_seconds(out.splitlines())), out  # 64 trials each would take minutes
    assert re.search(r"kernel\s+default us\s+best us\s+speedup", out), out
    assert len([line for line in out.splitlines() if KERNEL_LINE.match(line)]) == 3, out
    assert re.search(r"whole model: default schedules [0-9.,]+, tuned [0-9.,]+ ms here, 1 thread: [0-9.]+x", out), out
    records = ms.database.JSONDatabase(work_dir=str(log_dir)).get_all_tuning_records()
    tasks = len(re.findall(r"^\[[^\]]+\] \d+/64 trials", out, flags=re.M))
    assert 0 < len(records) < 64 * 3 and tasks >= 1  # stopped long before 64 trials of each kernel
