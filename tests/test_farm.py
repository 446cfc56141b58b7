"""A farm of boards behind one tracker: real tracker, two real emulated boards under one key, a real tuning run."""

import os
import re
import signal

import bnn_tvm
from bnn_tvm import board, zoo
from bnn_tvm.tuning import tune
from tvm.s_tir import meta_schedule as ms

CASE = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)
TRIALS = 2


def measured(log) -> int:
    """Candidates a board's RPC server loaded: one per session MetaSchedule opened on it."""
    return log.read_text(errors="replace").count("INFO load_module ")


def test_two_boards_measure_one_run_and_one_dying_leaves_the_other_to_finish(tmp_path):
    port = board.free_port()
    tracker, key = f"127.0.0.1:{port}", f"farm-{port}"
    board.start_tracker(port)
    try:
        pids = board.start_emulated_board(tracker, key, port=board.free_port(), count=2)
        assert len(pids) == 2 and len(board.registered_boards("127.0.0.1", port, key)) == 2
        logs = board.board_logs(key)
        assert len(logs) == 2
        messages, at_kill = [], []

        def kill_second_board_once_both_measured(message):
            messages.append(message)
            if not at_kill and "trials, best" in message and all(measured(log) for log in logs):
                at_kill.extend(measured(log) for log in logs)
                os.killpg(pids[1], signal.SIGKILL)  # unplugged: no goodbye to the tracker

        path = zoo.cached_tflite(CASE)
        # One batch of two candidates per kernel, one candidate per board. The board dies once the first kernel's
        # batch is measured: the second kernel's may be running on it, and each kernel's untuned schedule is
        # measured after the search, by the survivor alone.
        log_dir = tune(path, "rpi4", trials=TRIALS, log_dir=tmp_path / "log", rpc_tracker=tracker, rpc_key=key,
                       only_binary=True, say=kill_second_board_once_both_measured, run_timeout=30)
        survivors = board.registered_boards("127.0.0.1", port, key)
    finally:
        board.stop_board(key)
        board.stop_tracker(port)
    assert any("measuring on 2 boards" in m for m in messages), messages
    assert at_kill, f"the two boards never both measured: {[measured(log) for log in logs]} candidates\n{messages}"
    assert len(survivors) == 1  # the tracker dropped the dead board
    # The survivor measured the rest of the run; the dead board cost at most the candidate it was running.
    assert measured(logs[0]) >= at_kill[0] + 2, (at_kill, measured(logs[0]))
    failed = sum(int(n) for m in messages for n in re.findall(r"\((\d+) of this batch failed\)", m))
    assert failed <= 1, messages
    database = ms.database.JSONDatabase(work_dir=str(log_dir))  # stock MetaSchedule reads it
    assert len(database) >= 2 * TRIALS + 2 - 1
    reports = []
    bnn_tvm.compile(path, "rpi4", tuning_records=log_dir, report=lambda tuned, _total, _folder: reports.append(tuned))
    assert reports[0] >= 2  # both binary kernels have a record
