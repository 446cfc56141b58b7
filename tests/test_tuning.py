"""Tuning with MetaSchedule (XGBoost cost model): locally and on the emulated board, few trials but real.

Checks that the records are used by compile (the compiled kernels are the database's best schedules,
compared structurally, not just the count compile prints) and that tuned builds stay bit-exact.
"""

import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms

import bnn_tvm
from bnn_tvm import zoo
from bnn_tvm.build import legalize, load_model
from bnn_tvm.runtime import load_remote
from bnn_tvm.schedule_pass import is_binary_task
from bnn_tvm.tuning import apply_tuning_records, tune

from .test_lce import input_for

CASE = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)
TRIALS = 2


def assert_compiled_with_records(path, target_name, log_dir):
    """Every binary kernel of the model, as compile schedules it with ``log_dir``, is the best record's."""
    target = bnn_tvm.targets.resolve(target_name)[0]
    before = legalize(load_model(path), target)
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


def test_host_tuning_records_are_used_and_bitexact(tmp_path, build_and_load):
    path = zoo.cached_tflite(CASE)
    messages = []
    log_dir = tune(path, "host", trials=TRIALS, log_dir=tmp_path / "log", only_binary=True, say=messages.append)
    assert any("trials, best" in m for m in messages), messages  # progress was shown
    records = (log_dir / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= 2 * TRIALS
    assert_compiled_with_records(path, "host", log_dir)

    reports = []
    so = tmp_path / "tuned.so"
    bnn_tvm.compile(path, "host", tuning_records=log_dir, report=lambda t, n: reports.append((t, n))).export_library(so)
    assert reports and reports[0][0] >= 2
    x = input_for(CASE)
    np.testing.assert_array_equal(bnn_tvm.load(so)(x), zoo.lce_interpreter(path).predict(x))

    # Tuning again resumes: the records are kept and new ones appended.
    tune(path, "host", trials=TRIALS, log_dir=log_dir, only_binary=True, say=messages.append)
    assert len((log_dir / "database_tuning_record.json").read_text().splitlines()) > len(records)


def test_board_tuning_through_tracker(emulated_board, tmp_path, build_and_load):
    path = zoo.cached_tflite(CASE)
    tracker, key = emulated_board
    messages = []
    log_dir = tune(path, "rpi4", trials=TRIALS, log_dir=tmp_path / "log", rpc_tracker=tracker, rpc_key=key,
                   only_binary=True, say=messages.append)
    assert any(" us" in m for m in messages), messages  # candidates were measured on the board
    assert_compiled_with_records(path, "rpi4", log_dir)
    so = tmp_path / "tuned-rpi4.so"
    bnn_tvm.compile(path, "rpi4", tuning_records=log_dir).export_library(so)
    x = input_for(CASE)
    np.testing.assert_array_equal(load_remote(so, tracker, key)(x), build_and_load(path)(x))


def test_tuning_a_board_target_needs_a_board(tmp_path):
    with pytest.raises(ValueError, match="rpc-tracker"):
        tune(zoo.cached_tflite(CASE), "rpi4", trials=1, log_dir=tmp_path)


def test_board_dying_mid_tuning_costs_trials_not_the_run(tmp_path):
    """Kill the board once the first batch is measured: tuning finishes, the log stays usable."""
    from bnn_tvm import board

    port = board.free_port()
    key = f"doomed-{port}"
    board.start_tracker(port)
    try:
        board.start_emulated_board(f"127.0.0.1:{port}", key, port=board.free_port())
        messages = []

        def kill_after_first_batch(message):
            messages.append(message)
            if "trials, best" in message:
                board.stop_board(key)

        path = zoo.cached_tflite(CASE)
        # Two batches per kernel: the first is measured, the board dies, the second finds no board.
        log_dir = tune(path, "rpi4", trials=2 * TRIALS, log_dir=tmp_path / "log", rpc_tracker=f"127.0.0.1:{port}",
                       rpc_key=key, only_binary=True, trials_per_iter=TRIALS, say=kill_after_first_batch,
                       run_timeout=15)
    finally:
        board.stop_board(key)
        board.stop_tracker(port)
    assert any("failed" in m for m in messages), messages  # later batches failed, and said so
    database = ms.database.JSONDatabase(work_dir=str(log_dir))  # still loads
    assert len(database) >= 1
    reports = []
    bnn_tvm.compile(path, "rpi4", tuning_records=log_dir, report=lambda t, n: reports.append(t))
    assert reports[0] >= 1  # the measured kernel's record is used
