"""`make demo`: QuickNet (larq-zoo, random init) through LCE and through bnn-tvm, side by side.

Converts QuickNet at 224x224 with LCE's converter (cached), compiles the .tflite
with bnn-tvm for this host and for a Raspberry Pi 4 (aarch64), runs the host
build and LCE on the same inputs (1 thread each), then the aarch64 build on an
emulated ARM board (qemu) reached through a real RPC tracker, and prints the
agreement with LCE and the median latency of each; for the board, instructions and
estimated Cortex-A72 cycles counted on the emulated board (``bnn_tvm.armprofile``) beside
LCE's own aarch64 kernels counted by the same instrument (``benchmarks/lce_arm.py``; qemu's
wall time says nothing about ARM, and LCE's published hardware time is only context). Last, the same Keras
model compiled straight from Keras (bnn-tvm's own importer and graph passes, no
LCE converter), checked against Keras's model.predict.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up lines are not the demo

import bnn_tvm  # noqa: E402
from bnn_tvm import zoo  # noqa: E402

from benchmarks.arm import BCONV_HEADER, bconv_rows, published_context  # noqa: E402
from benchmarks.lce_arm import LCE_MODELS  # noqa: E402

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
    print("1/6 converting QuickNet (224x224, random init) with LCE's converter (cached)...", flush=True)
    path = zoo.cached_tflite(case)
    print(f"    {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print("2/6 compiling with bnn-tvm for the host...", flush=True)
    start = time.perf_counter()
    artifact = bnn_tvm.compile(path, target="host")
    so = Path(tempfile.mkdtemp()) / "quicknet.so"
    artifact.export_library(so)
    print(f"    {so} in {time.perf_counter() - start:.1f} s (target {artifact.target})")
    # One thread each, set before bnn-tvm's first run: TVM's pool then has no worker to spin beside LCE.
    model = bnn_tvm.load(so, threads=1)
    interpreter = zoo.lce_interpreter(path, num_threads=1)

    print("3/6 comparing outputs on 5 random inputs...", flush=True)
    worst, same_top1 = 0.0, 0
    for seed in range(5):
        x = zoo.random_input((1, 224, 224, 3), seed=seed)
        ours, lce = model(x), interpreter.predict(x)
        worst = max(worst, float(np.abs(ours - lce).max()))
        same_top1 += int(ours.argmax() == lce.argmax())
    print(f"    top-1 agreement {same_top1}/5, max abs difference {worst:.3g}")

    print(f"4/6 median latency over {REPEAT} runs (batch 1, 1 thread each):", flush=True)
    x = zoo.random_input((1, 224, 224, 3))
    lce_ms = median_ms(lambda: interpreter.predict(x))
    ours_ms = statistics.median(model.time(x, repeat=REPEAT)) * 1e3
    print(f"    LCE interpreter:  {lce_ms:8.2f} ms")
    print(f"    bnn-tvm (host):   {ours_ms:8.2f} ms   ({lce_ms / ours_ms:.1f}x faster than LCE)")

    print("5/6 the same model on an emulated Raspberry Pi 4 (aarch64 under qemu, over an RPC tracker)...",
          flush=True)
    run_on_emulated_board(path, interpreter)

    print("6/6 the same Keras model compiled straight from Keras (no LCE converter)...", flush=True)
    keras_model = zoo.keras_model(case)
    start = time.perf_counter()
    so = Path(tempfile.mkdtemp()) / "quicknet-keras.so"
    bnn_tvm.compile(keras_model, target="host").export_library(so)
    from_keras = bnn_tvm.load(so)
    print(f"    compiled in {time.perf_counter() - start:.1f} s")
    worst, same_top1 = 0.0, 0
    for seed in range(5):
        x = zoo.random_input((1, 224, 224, 3), seed=seed)
        ours, keras = from_keras(x), keras_model.predict(x, verbose=0)
        worst = max(worst, float(np.abs(ours - keras).max()))
        same_top1 += int(ours.argmax() == keras.argmax())
    keras_ms = statistics.median(from_keras.time(x, repeat=REPEAT)) * 1e3
    print(f"    vs Keras: top-1 agreement {same_top1}/5, max abs difference {worst:.3g}; "
          f"median latency {keras_ms:.2f} ms")


def run_on_emulated_board(path: Path, interpreter) -> None:
    from bnn_tvm import armprofile, board
    from bnn_tvm.runtime import load_remote

    so = Path(tempfile.mkdtemp()) / "quicknet-rpi4.so"
    bnn_tvm.compile(path, target="rpi4").export_library(so)
    port, key = board.free_port(), "demo-rpi4"
    board.start_tracker(port)
    try:
        board.start_emulated_board(f"127.0.0.1:{port}", key, port=board.free_port())
        remote = load_remote(so, f"127.0.0.1:{port}", key)
        x = zoo.random_input((1, 224, 224, 3), seed=0)
        ours, lce = remote(x), interpreter.predict(x)
        print(f"    aarch64 build on the board: top-1 {'agrees' if ours.argmax() == lce.argmax() else 'DIFFERS'}"
              f" with LCE on the host, max abs difference {float(np.abs(ours - lce).max()):.3g}")
    finally:
        board.stop_board(key)
        board.stop_tracker(port)
    arm = armprofile.profile(so, "rpi4")
    lce = LCE_MODELS["QuickNet"]
    print(f"    Cortex-A72, counted on the emulated board, 1 thread, per inference (cycles are llvm-mca estimates):\n"
          f"      bnn-tvm: {arm.instructions / 1e6:.1f} M instructions, {arm.cycles / 1e6:.1f} M estimated cycles\n"
          f"      LCE's own aarch64 kernels on the same board and counter: {lce.instructions / 1e6:.1f} M instructions, "
          f"{lce.cycles / 1e6:.1f} M estimated cycles\n"
          f"      bnn-tvm is {lce.cycles / arm.cycles:.2f}x LCE in estimated cycles, "
          f"{lce.instructions / arm.instructions:.2f}x in instructions; binary convolutions by input depth:")
    print("\n".join("      " + line for line in [*BCONV_HEADER.splitlines(), *bconv_rows("QuickNet", arm)]))
    print(f"    ({published_context('QuickNet', arm)})")


if __name__ == "__main__":
    main()
