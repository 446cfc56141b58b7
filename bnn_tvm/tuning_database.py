"""The tuning database: a log folder's two MetaSchedule JSON files, written atomically, and applying them.

``bnn-tvm tune`` writes it, ``compile(..., tuning_records=folder)`` and the shipped pre-tuned databases
(``bnn_tvm.pretuned``) apply it (``apply_tuning_records``). The format is stock MetaSchedule's
(``ms.database.JSONDatabase`` reads every folder this module writes): ``database_workload.json``, a line per
workload, and ``database_tuning_record.json``, a line per record naming its workload by line number.

The folder holds two kinds of workload. A kernel's own records are the ones compile applies: the schedules
the side-by-side re-measurement settled. The search's measurements go under a marked twin of each workload
(``is_search_history``), which compile, looking workloads up by structure, never matches; a resumed search
reads them back through ``SearchHistoryView``.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import warnings
from pathlib import Path

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def plain_json(obj):
    """``obj`` (the FFI containers MetaSchedule's ``AsJSON`` returns) as plain Python, as its C++ writer
    prints it: immediates as numbers, booleans as 0/1."""
    if isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, int | float | str):
        return obj
    if isinstance(obj, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return obj.value
    if isinstance(obj, tvm_ffi.Array | list | tuple):
        return [plain_json(item) for item in obj]
    if isinstance(obj, tvm_ffi.Map | dict):
        return {str(key): plain_json(value) for key, value in obj.items()}
    raise TypeError(f"cannot write {type(obj).__name__} to a tuning database")


def _json_line(obj) -> str:
    return json.dumps(plain_json(obj), separators=(",", ":"), sort_keys=True)


def _compact_workload(value) -> list:
    """A workload line (``[structural hash, base64(uint64 length + the module's JSON)]``) with the module's JSON
    re-encoded without the indentation TVM's SaveJSON writes: the same module in half the bytes."""
    structural_hash, encoded = plain_json(value)
    module_json = json.loads(base64.b64decode(encoded)[8:])
    compact = json.dumps(module_json, separators=(",", ":")).encode()
    return [structural_hash, base64.b64encode(struct.pack("<Q", len(compact)) + compact).decode()]


def write_atomically(path: Path, lines: list[str]) -> None:
    """Replace ``path`` by ``lines`` so that a reader (or a crash) sees the old file or the new one, whole."""
    # The writer's pid in the name: whoever opens the folder can tell a killed writer's leftover from a live one's.
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


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_dead_writers_temporaries(folder: Path) -> None:
    """Delete the ``write_atomically`` temporaries of the database files whose writer (the pid in the name) is no
    longer running: a writer killed mid-write leaves one. A live writer's (a tuner committing while compile opens
    the folder) is its next file, about to be renamed into place, and stays."""
    for temporary in folder.glob(".database_*.tmp"):
        pid = temporary.name.split(".")[-2]  # .NAME.json.PID.tmp
        if pid.isdigit() and not _writer_alive(int(pid)):
            temporary.unlink(missing_ok=True)


def _read_json_lines(path: Path) -> list[tuple[int, object]]:
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
        _remove_dead_writers_temporaries(folder)
        self._load()
        for path, lines in ((self.path_workload, self._workload_lines), (self.path_tuning_record, self._record_lines)):
            if not path.exists():
                write_atomically(path, lines)

    def _load(self) -> None:
        from tvm.s_tir.meta_schedule import _ffi_api

        by_line = {}
        for number, value in _read_json_lines(self.path_workload):
            workload = self._memory.commit_workload(_ffi_api.WorkloadFromJSON(value).mod)
            by_line[number] = workload
            if not any(workload.same_as(known) for known in self._workloads):
                self._workloads.append(workload)
                self._workload_lines.append(_json_line(value))  # as written: compacting is the writer's job
        # Record lines index the workload file's lines (0-based); map them through the lines kept.
        index_of_line = {number - 1: workload for number, workload in by_line.items()}
        for number, value in _read_json_lines(self.path_tuning_record):
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
            write_atomically(self.path_workload, self._workload_lines)
        return workload

    def commit_tuning_record(self, record) -> None:
        self._memory.commit_tuning_record(record)
        index = self._index(record.workload)
        self._records.append((index, record))
        self._record_lines.append(_json_line([index, record.as_json()]))
        write_atomically(self.path_tuning_record, self._record_lines)

    def commit_tuning_records(self, records: list) -> None:
        """Commit several records in one atomic write of the record file (all or none of them, if killed)."""
        for record in records:
            self._memory.commit_tuning_record(record)
            index = self._index(record.workload)
            self._records.append((index, record))
            self._record_lines.append(_json_line([index, record.as_json()]))
        if records:
            write_atomically(self.path_tuning_record, self._record_lines)

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
        write_atomically(self.path_tuning_record, lines)
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


def mean_seconds(run_secs) -> float:
    """A measurement's mean of its repeats (MetaSchedule records one time per repeat)."""
    return sum(float(s) for s in run_secs) / len(run_secs)


# The search's own records go under a twin of each workload, the function marked with this attribute: the same
# two files hold them (stock JSONDatabase reads the folder), and compile, which looks workloads up by structure,
# never applies a record the re-measurement did not settle.
SEARCH_ATTR = "bnn_tvm.search_history"


def is_search_history(mod: tvm.IRModule) -> bool:
    """Whether a database workload is the search's twin of a kernel (its records: every candidate the search
    measured, ranked by the search's measurement), not one that compile applies."""
    func = mod["main"]
    return func.attrs is not None and SEARCH_ATTR in func.attrs


def search_twin(mod: tvm.IRModule) -> tvm.IRModule:
    """The workload the search's records of ``mod`` go under (``mod`` itself if it is one)."""
    return mod if is_search_history(mod) else tvm.IRModule({"main": mod["main"].with_attr(SEARCH_ATTR, 1)})


@derived_object
class SearchHistoryView(ms.database.PyDatabase):
    """The database as MetaSchedule's search sees it: every workload replaced by its twin (``search_twin``).

    The search's measurements (and the seeds a resumed search starts from) stay in the log folder's files, one
    workload away from what compile applies, which only the re-measurement (``bnn_tvm.tuning.settle``) writes.
    """

    def __init__(self, database: AtomicJSONDatabase):
        self.database = database

    def has_workload(self, mod: tvm.IRModule) -> bool:
        return self.database.has_workload(search_twin(mod))

    def commit_workload(self, mod: tvm.IRModule):
        return self.database.commit_workload(search_twin(mod))

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
        return self.database.records_of(search_twin(mod))

    def __len__(self) -> int:
        return len(self.get_all_tuning_records())


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
