"""Tuning with MetaSchedule (XGBoost cost model): locally and on the emulated board, few trials but real.

Checks that the records are used by compile (the compiled kernels are the database's best schedules,
compared structurally, not just the count compile prints) and that tuned builds stay bit-exact, and that
the database stays readable when the tuning process is killed while writing it.
"""

import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tvm
from tvm import s_tir, te
from tvm.s_tir import meta_schedule as ms

import bnn_tvm
from bnn_tvm import armprofile, zoo
from bnn_tvm.build import import_model, legalize
from bnn_tvm.runtime import load_remote
from bnn_tvm.schedule_pass import is_binary_task
from bnn_tvm.tuning import (
    RECORD_FILE,
    WORKLOAD_FILE,
    AtomicJSONDatabase,
    apply_tuning_records,
    tune,
)

from .test_lce import input_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)
TRIALS = 2


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
    bnn_tvm.compile(path, "host", tuning_records=log_dir, report=lambda t, n, _folder: reports.append((t, n))).export_library(so)
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


def test_tuning_a_target_nothing_here_runs_needs_a_board(tmp_path):
    with pytest.raises(ValueError, match="rpc-tracker"):
        tune(zoo.cached_tflite(CASE), "rpi3", trials=1, log_dir=tmp_path)  # armv7: no emulated board


def test_emulated_board_tuning_ranks_by_estimated_cycles(tmp_path, build_and_load):
    """rpi4 without a board: candidates ranked by estimated Cortex-A72 cycles; the tuned bconv kernels are no
    slower than the untuned ones by the profile's own estimate, and bit-exact."""
    path = zoo.cached_tflite(CASE)
    messages = []
    log_dir = tune(path, "rpi4", trials=TRIALS, log_dir=tmp_path / "log", only_binary=True, say=messages.append)
    assert any("estimated cortex-a72 cycles" in m for m in messages), messages
    assert any("trials, best" in m and " us" in m for m in messages), messages
    assert_compiled_with_records(path, "rpi4", log_dir)
    builds = {}
    for name, records in (("default", None), ("tuned", log_dir)):
        builds[name] = tmp_path / f"{name}-rpi4.so"
        bnn_tvm.compile(path, "rpi4", tuning_records=records, pretuned=False).export_library(builds[name])
    default, tuned = (armprofile.profile(builds[name], "rpi4") for name in ("default", "tuned"))
    cycles = {name: {k.name: k.cycles for k in p.kernels if k.binary_macs} for name, p in
              (("default", default), ("tuned", tuned))}
    assert cycles["tuned"].keys() == cycles["default"].keys() and len(cycles["tuned"]) == 2
    # The runner estimates a candidate alone, the profile inside the whole model; the same code's two estimates
    # differ (measured on this case's default schedules: 1869 cycles alone vs 1856 in the model, 0.74%; 19339 vs
    # 19434, 0.49%), so a candidate that ranked below the default alone can land up to twice that gap above it in
    # the model (the two errors of opposite sign): 1.5%. CI saw +0.024% on the small kernel.
    for kernel, estimate in cycles["tuned"].items():
        assert estimate <= cycles["default"][kernel] * 1.015, (kernel, cycles)


# A board dying mid-run: tests/test_farm.py kills one of two boards during a tuning run; the other finishes it
# and the database loads (the test that killed a lone board here cost CI two more minutes for the same path).


# ---------------------------------------------------------------- the database, without tuning


def _tiny_workload():
    a = te.placeholder((64,), name="a")
    return tvm.IRModule({"main": te.create_prim_func([a, te.compute((64,), lambda i: a[i] + 1.0, name="b")])})


def _record(database, mod, inner: int, seconds: float) -> ms.database.TuningRecord:
    """A record of ``mod`` split with an inner tile of ``inner``, measured at ``seconds``."""
    sch = s_tir.Schedule(mod)
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    sch.split(loop, sch.sample_perfect_tile(loop, n=2, decision=[64 // inner, inner]))
    return ms.database.TuningRecord(sch.trace, database.commit_workload(mod), [seconds], tvm.target.Target("llvm"),
                                    ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


# Commits records as fast as it can, forever: the test kills it at a random instant, mid-write or not.
_WRITER = """
import sys
from tests.test_tuning import AtomicJSONDatabase, _record, _tiny_workload
database, mod = AtomicJSONDatabase(sys.argv[1]), _tiny_workload()
print(len(database), flush=True)
while True:
    database.commit_tuning_record(_record(database, mod, 2 ** (len(database) % 7), 1.0 + len(database)))
"""


def test_database_killed_mid_write_stays_readable_and_resumes(tmp_path):
    """SIGKILL the writer at random instants: after each kill stock JSONDatabase reads the folder, no
    record is lost but the one being written, and the next run resumes from what is there."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "log"
    count = 0
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert int(writer.stdout.readline()) == count  # resumed with every record of the previous runs
        deadline = time.monotonic() + 60
        while (folder / RECORD_FILE).read_text().count("\n") < count + 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        database = ms.database.JSONDatabase(work_dir=str(folder))  # would raise on a torn line
        assert len(database) >= count + 20
        count = len(database)
        best = database.get_top_k(database.commit_workload(_tiny_workload()), 1)[0]
        assert float(best.run_secs[0]) == 1.0
    AtomicJSONDatabase(folder)
    assert sorted(p.name for p in folder.iterdir()) == [RECORD_FILE, WORKLOAD_FILE]  # a killed write's temp is gone


def test_torn_folder_of_an_append_only_writer_loads_without_the_torn_line(tmp_path):
    mod = _tiny_workload()
    stock = ms.database.JSONDatabase(work_dir=str(tmp_path))
    for inner in (1, 2, 4):
        stock.commit_tuning_record(_record(stock, mod, inner, float(inner)))
    records = tmp_path / RECORD_FILE
    text = records.read_text()
    records.write_text(text[: len(text) - 40])  # killed while appending the last line
    with pytest.raises(RuntimeError):  # what stock MetaSchedule makes of it
        ms.database.JSONDatabase(work_dir=str(tmp_path))

    with pytest.warns(RuntimeWarning, match="line 3"):
        database = AtomicJSONDatabase(tmp_path)
    assert len(database) == 2
    assert float(database.query_tuning_record(mod, tvm.target.Target("llvm"), "main").run_secs[0]) == 1.0
    # The next commit writes the folder back whole, in the format stock MetaSchedule reads.
    database.commit_tuning_record(_record(database, mod, 8, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reread = ms.database.JSONDatabase(work_dir=str(tmp_path))
    assert len(reread) == 3 and len((tmp_path / WORKLOAD_FILE).read_text().splitlines()) == 1
    assert float(reread.query_tuning_record(mod, tvm.target.Target("llvm"), "main").run_secs[0]) == 0.5


def test_cli_tune_with_a_budget_stops_early_and_reports(tmp_path):
    """A budget too short for the run ends it after the first batch, with a usable database, the per-kernel table
    and the whole model measured tuned against the default schedules."""
    from .test_bundle import bnn_tvm_cli

    log_dir = tmp_path / "log"
    done = bnn_tvm_cli("tune", str(zoo.cached_tflite(CASE)), "--target", "host", "--trials", "64", "--only-binary",
                       "--budget", "0.001", "--log", str(log_dir))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "time budget reached" in out and " left" in out, out
    assert re.search(r"kernel\s+default us\s+best us\s+speedup", out), out
    assert re.search(r"whole model: default schedules [0-9.,]+, tuned [0-9.,]+ ms here, 1 thread: [0-9.]+x", out), out
    records = ms.database.JSONDatabase(work_dir=str(log_dir)).get_all_tuning_records()
    tasks = len(re.findall(r"^\[[^\]]+\] \d+/64 trials", out, flags=re.M))
    assert 0 < len(records) < 64 * 3 and tasks >= 1  # stopped long before 64 trials of each kernel
