"""The pre-tuned databases bnn-tvm ships in ``bnn_tvm/tune_logs/``, one per device class, as TVM's TopHub did for AutoTVM.

``compile`` applies the database of the target's preset unless told not to (``pretuned=False``,
``--no-pretuned``); a user's own records (``tuning_records``) are applied first and take precedence. A
database holds one record per kernel (workload): the best one of every tuning run merged into it
(``merge_best``). Records are keyed by the kernel's structure, not by the model, so a database made on
QuickNet serves every model with kernels of the same shapes. ``bnn_tvm/tune_logs/README.md`` says how each was made.

Remake or extend one::

    bnn-tvm tune MODEL --target rpi4 --only-binary --trials 12 --log /tmp/run
    python -m bnn_tvm.pretuned bnn_tvm/tune_logs/rpi4-a72-cycles /tmp/run --only-binary
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from tvm.s_tir import meta_schedule as ms

from .schedule_pass import is_binary_task
from .tuning_database import RECORD_FILE, WORKLOAD_FILE, AtomicJSONDatabase, is_search_history, mean_seconds

# Package data: in the wheel, and in the source tree for a development install.
SHIPPED_DIR = Path(__file__).with_name("tune_logs")

# Preset -> database folder. Presets that generate the same code for the same core share one: the generic
# aarch64 build is profiled on the Raspberry Pi 4's Cortex-A72, android-arm64 is the Raspberry Pi 5's A76 class.
DATABASES = {
    "x86-avx512": "x86-avx512-xeon",
    "x86-avx2": "x86-avx2-epyc",
    "rpi4": "rpi4-a72-cycles",
    "aarch64": "rpi4-a72-cycles",
    "rpi5": "rpi5-a76-cycles",
    "android-arm64": "rpi5-a76-cycles",
}


def shipped_database(preset: str | None) -> Path | None:
    """The shipped database folder of ``preset`` (a preset name), or None if it has none."""
    folder = SHIPPED_DIR / DATABASES[preset] if preset in DATABASES else None
    return folder if folder is not None and (folder / RECORD_FILE).exists() else None


def merge_best(destination: str | Path, *sources: str | Path, only_binary: bool = False) -> int:
    """Merge the tuning folders ``sources`` into ``destination`` keeping the best successful record of each
    workload (over the sources and what ``destination`` already holds; only the binary kernels' with
    ``only_binary``); returns how many workloads it has.

    The database is rebuilt whole beside ``destination``, then each file moved into place by an atomic
    rename: never a torn file, though a reader between the two renames pairs the new workloads with the old
    records (and drops, with a warning, those that name no workload). Merge while nothing compiles with it.
    """
    destination = Path(destination)
    best: dict = {}  # workload (as the memory database canonicalises it) -> best record
    canonical = ms.database.MemoryDatabase()
    for folder in [f for f in (destination, *map(Path, sources)) if (f / RECORD_FILE).exists()]:
        for record in AtomicJSONDatabase(folder).get_all_tuning_records():
            if (not record.run_secs or is_search_history(record.workload.mod)
                    or (only_binary and not is_binary_task(record.workload.mod["main"]))):
                continue  # a failed candidate, the search's history (not a kernel), or a kernel not asked for
            workload = canonical.commit_workload(record.workload.mod)
            key = next((known for known in best if known.same_as(workload)), workload)
            if key not in best or mean_seconds(record.run_secs) < mean_seconds(best[key].run_secs):
                best[key] = record
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}-") as staging:
        merged = AtomicJSONDatabase(staging)
        for workload, record in best.items():
            merged.commit_tuning_record(ms.database.TuningRecord(
                record.trace, merged.commit_workload(workload.mod), record.run_secs, record.target, record.args_info))
        for name in (WORKLOAD_FILE, RECORD_FILE):
            shutil.copy(Path(staging) / name, destination / f".{name}.new")
            (destination / f".{name}.new").replace(destination / name)
    return len(best)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bnn_tvm.pretuned", description=merge_best.__doc__.split("\n\n")[0])
    parser.add_argument("destination", help="the database folder to create or extend (e.g. bnn_tvm/tune_logs/rpi4-a72-cycles)")
    parser.add_argument("sources", nargs="+", help="folders written by `bnn-tvm tune`")
    parser.add_argument("--only-binary", action="store_true", help="keep the binary kernels' records only")
    args = parser.parse_args(argv)
    count = merge_best(args.destination, *args.sources, only_binary=args.only_binary)
    print(f"{args.destination}: {count} workloads, one record each")


if __name__ == "__main__":
    main()
