"""The tuning database (bnn_tvm/tuning_database.py), without tuning: stock MetaSchedule reads every folder it
writes, it stays readable when its writer is killed mid-write, it loads a folder an append-only writer left torn,
and opening a folder removes a killed writer's temporary files but never a running writer's."""

import os
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

from bnn_tvm.tuning_database import RECORD_FILE, WORKLOAD_FILE, AtomicJSONDatabase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_workload():
    a = te.placeholder((64,), name="a")
    return tvm.IRModule({"main": te.create_prim_func([a, te.compute((64,), lambda i: a[i] + 1.0, name="b")])})


def split_record(database, mod, inner: int, seconds: float) -> ms.database.TuningRecord:
    """A record of ``mod`` split with an inner tile of ``inner``, measured at ``seconds``."""
    sch = s_tir.Schedule(mod)
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    sch.split(loop, sch.sample_perfect_tile(loop, n=2, decision=[64 // inner, inner]))
    return ms.database.TuningRecord(sch.trace, database.commit_workload(mod), [seconds], tvm.target.Target("llvm"),
                                    ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


# Commits records as fast as it can, forever: the test kills it at a random instant, mid-write or not.
_WRITER = """
import sys
from tests.test_tuning_database import AtomicJSONDatabase, split_record, tiny_workload
database, mod = AtomicJSONDatabase(sys.argv[1]), tiny_workload()
print(len(database), flush=True)
while True:
    database.commit_tuning_record(split_record(database, mod, 2 ** (len(database) % 7), 1.0 + len(database)))
"""


def test_database_killed_mid_write_stays_readable_and_resumes(tmp_path):
    """SIGKILL the writer at random instants: after each kill stock JSONDatabase reads the folder, no
    record is lost but the one being written, and the next run resumes from what is there."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "log"
    count = 0
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                                  text=True)
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
        best = database.get_top_k(database.commit_workload(tiny_workload()), 1)[0]
        assert float(best.run_secs[0]) == 1.0
    AtomicJSONDatabase(folder)
    assert sorted(p.name for p in folder.iterdir()) == [RECORD_FILE, WORKLOAD_FILE]  # a killed write's temp is gone


def test_torn_folder_of_an_append_only_writer_loads_without_the_torn_line(tmp_path):
    mod = tiny_workload()
    stock = ms.database.JSONDatabase(work_dir=str(tmp_path))
    for inner in (1, 2, 4):
        stock.commit_tuning_record(split_record(stock, mod, inner, float(inner)))
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
    database.commit_tuning_record(split_record(database, mod, 8, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reread = ms.database.JSONDatabase(work_dir=str(tmp_path))
    assert len(reread) == 3 and len((tmp_path / WORKLOAD_FILE).read_text().splitlines()) == 1
    assert float(reread.query_tuning_record(mod, tvm.target.Target("llvm"), "main").run_secs[0]) == 0.5


def test_opening_removes_the_temporary_files_of_dead_writers_only(tmp_path):
    """Each write goes through ``.NAME.PID.tmp``, renamed into place. A writer killed mid-write leaves it: opening the
    folder removes it. A running writer's (a tuner committing while compile opens its folder) is the file about to
    become the database: it stays, or the tuner's rename would fail."""
    AtomicJSONDatabase(tmp_path)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()
    try:
        temporaries = {pid: [f".{name}.{pid}.tmp" for name in (WORKLOAD_FILE, RECORD_FILE)]
                       for pid in (running.pid, finished.pid, os.getpid())}
        for names in temporaries.values():
            for name in names:
                (tmp_path / name).write_text("[0, ")  # a write cut short
        AtomicJSONDatabase(tmp_path)
        left = sorted(path.name for path in tmp_path.glob(".*.tmp"))
        assert left == sorted(temporaries[running.pid] + temporaries[os.getpid()])
    finally:
        running.kill()
        running.wait()
    AtomicJSONDatabase(tmp_path)  # the writer is gone now: so is its file
    assert sorted(path.name for path in tmp_path.glob(".*.tmp")) == sorted(temporaries[os.getpid()])
