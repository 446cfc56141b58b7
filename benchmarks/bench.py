"""Side-by-side benchmark of larq-zoo models: bnn-tvm vs LCE vs TFLite (XNNPACK, float-equivalent model).

    .venv/bin/python benchmarks/bench.py [--models QuickNet BiRealNet] [--size 224] [--threads 1 2] [--runs 10]
                                         [--tuning-records MODEL=DIR ...] [--out DIR] [--plot]

A wrapper over ``bnn_tvm.bench`` (``bnn-tvm bench``), once per model: each engine in its own process, same input
and threads, medians and ratios, the per-kernel breakdown against the popcount peak. Results go to
``DIR/<model>/bench.md`` and ``bench.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bnn_tvm import bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["QuickNet", "BiRealNet"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tuning-records", nargs="*", default=[],
                        help="MODEL=DIR: bench MODEL built with the tuning records in DIR")
    parser.add_argument("--out", default="bench-results", help="folder of one subfolder per model")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args()
    records = dict(item.split("=", 1) for item in args.tuning_records)
    for model in args.models:
        bench.run(model, threads=args.threads, runs=args.runs, repeat=args.repeat, size=args.size,
                  out=Path(args.out) / f"{model}-{args.size}", tuning_records=records.get(model), plot=args.plot)


if __name__ == "__main__":
    main()
