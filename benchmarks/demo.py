"""`make demo`: QuickNet (larq-zoo, random init) through LCE and through bnn-tvm, side by side.

Converts QuickNet at 224x224 with LCE's converter (cached), compiles the .tflite
with bnn-tvm for this host, runs both on the same inputs and prints their
agreement and median latencies (1 thread for LCE; bnn-tvm uses the cores TVM's
thread pool finds).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bnn_tvm  # noqa: E402
from bnn_tvm import zoo  # noqa: E402

REPEAT = 20


def median_ms(fn, repeat=REPEAT):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    case = zoo.ZooCase("QuickNet-224", "QuickNet", size=224)
    print("1/4 converting QuickNet (224x224, random init) with LCE's converter (cached)...", flush=True)
    path = zoo.cached_tflite(case)
    print(f"    {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print("2/4 compiling with bnn-tvm for the host...", flush=True)
    start = time.perf_counter()
    artifact = bnn_tvm.compile(path, target="host")
    so = Path(tempfile.mkdtemp()) / "quicknet.so"
    artifact.export_library(so)
    print(f"    {so} in {time.perf_counter() - start:.1f} s (target {artifact.target})")
    model = bnn_tvm.load(so)
    interpreter = zoo.lce_interpreter(path, num_threads=1)

    print("3/4 comparing outputs on 5 random inputs...", flush=True)
    worst, same_top1 = 0.0, 0
    for seed in range(5):
        x = zoo.random_input((1, 224, 224, 3), seed=seed)
        ours, lce = model(x), interpreter.predict(x)
        worst = max(worst, float(np.abs(ours - lce).max()))
        same_top1 += int(ours.argmax() == lce.argmax())
    print(f"    top-1 agreement {same_top1}/5, max abs difference {worst:.3g}")

    print(f"4/4 median latency over {REPEAT} runs (batch 1):", flush=True)
    x = zoo.random_input((1, 224, 224, 3))
    lce_ms = median_ms(lambda: interpreter.predict(x))
    ours_ms = statistics.median(model.time(x, repeat=REPEAT)) * 1e3
    print(f"    LCE interpreter (1 thread): {lce_ms:8.2f} ms")
    print(f"    bnn-tvm (host):             {ours_ms:8.2f} ms   ({lce_ms / ours_ms:.2f}x LCE)")
    print("    (the emulated ARM board comes with the ARM-kernels issue)")


if __name__ == "__main__":
    main()
