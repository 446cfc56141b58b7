"""Side-by-side benchmark: bnn-tvm vs LCE vs TFLite (XNNPACK, float-equivalent model), one process.

    .venv/bin/python benchmarks/bench.py [--models QuickNet BiRealNet] [--size 224] [--threads 1 2] [--runs 30]

For each model: the larq-zoo architecture (random init), converted by LCE's
converter (for LCE and bnn-tvm) and by the stock TFLite converter (the float
equivalent, run by TFLite with XNNPACK). The three run interleaved, round after
round, on the same input; medians of the rounds and ratios are printed. Then,
per layer of the bnn-tvm build, its time share, and for binary convolutions
their binary MACs per second against this machine's popcount peak, measured by
a microbenchmark (a VPOPCNT/POPCNT loop compiled by TVM). For aarch64, the
instructions per 128 binary MACs of the NEON bconv hot loop, counted from the
generated code. Timings on these 2-core shared machines are noisy: trust the
medians and ratios, not single runs.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import bnn_tvm  # noqa: E402
from bnn_tvm import zoo  # noqa: E402
from bnn_tvm.runtime import set_threads  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(case: zoo.ZooCase, threads: int, runs: int, builds: dict) -> dict:
    import tensorflow as tf

    x = zoo.random_input((1, case.size, case.size, 3))
    set_threads(threads)
    lce = zoo.lce_interpreter(zoo.cached_tflite(case), num_threads=threads)
    tfl = tf.lite.Interpreter(model_content=zoo.cached_stock_tflite(case).read_bytes(), num_threads=threads)
    tfl.allocate_tensors()
    tfl_in, tfl_out = tfl.get_input_details()[0]["index"], tfl.get_output_details()[0]["index"]

    def run_tflite():
        tfl.set_tensor(tfl_in, x)
        tfl.invoke()
        return tfl.get_tensor(tfl_out)

    device_x = tvm.runtime.tensor(x)
    runners = {name: (lambda vm=model.vm: vm["main"](device_x)) for name, model in builds.items()}
    runners.update({"LCE": lambda: lce.predict(x), "TFLite": run_tflite})
    for fn in runners.values():
        fn()
    samples = collections.defaultdict(list)
    for _ in range(runs):  # interleaved, so that machine noise hits all three alike
        for name, fn in runners.items():
            samples[name].append(timed(fn))
    return {name: statistics.median(times) * 1e3 for name, times in samples.items()}


def per_layer(model, x, runs: int = 10) -> list[tuple[str, float]]:
    """Milliseconds per call of each kernel of the bnn-tvm build (VM instrumentation), largest first."""
    totals: dict[str, float] = collections.defaultdict(float)
    started: dict[str, float] = {}

    def instrument(_func, name, before, _ret, *_args):
        if before:
            started[name] = time.perf_counter()
        else:
            totals[name] += time.perf_counter() - started[name]
        return 0

    device_x = tvm.runtime.tensor(x)
    model.vm["main"](device_x)
    model.vm.set_instrument(instrument)
    for _ in range(runs):
        model.vm["main"](device_x)
    return sorted(((k, v / runs * 1e3) for k, v in totals.items() if not k.startswith("vm.")),
                  key=lambda kv: -kv[1])


def bconv_macs(case: zoo.ZooCase) -> float:
    """Binary MACs of all binary convolutions of the model, from its Relax graph."""
    from bnn_tvm.build import load_model
    from bnn_tvm.relay_ops.bconv2d import OP, Conv2dGeometry, _attrs

    total = 0.0

    def visit(expr):
        nonlocal total
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == OP:
            x_shape = [int(d) for d in expr.args[0].ty.shape.values]
            w_shape = [int(d) for d in expr.args[1].ty.shape.values]
            g = Conv2dGeometry(x_shape, w_shape, _attrs(expr))
            total += g.batch * g.out_h * g.out_w * g.channels_out * g.depth

    relax.analysis.post_order_visit(load_model(zoo.cached_tflite(case))["main"], visit)
    return total


def popcount_peak() -> float:
    """Binary MACs per second one core reaches in a tight, vectorized XOR-popcount-accumulate loop."""
    from tvm import te

    words, lanes, repeat = 64, 32, 4096
    a = te.placeholder((words, lanes), "int32", name="a")
    b = te.placeholder((words, lanes), "int32", name="b")
    r = te.reduce_axis((0, repeat), name="r")
    k = te.reduce_axis((0, words), name="k")
    # XOR with the round index keeps LLVM from hoisting the popcount out of the repeat loop.
    acc = te.compute((lanes,), lambda i: te.sum(tvm.tirx.popcount(a[k, i] ^ b[k, i] ^ r.astype("int32")),
                                                 axis=[r, k]), name="acc")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, acc]))
    i, r_loop, k_loop = sch.get_loops(sch.get_sblock("acc"))
    sch.reorder(r_loop, k_loop, i)
    sch.vectorize(i)
    lib = tvm.compile(sch.mod, target=bnn_tvm.targets.resolve("host")[0])
    args = [tvm.runtime.tensor(np.ones((words, lanes), np.int32)),
            tvm.runtime.tensor(np.ones((words, lanes), np.int32)),
            tvm.runtime.tensor(np.zeros(lanes, np.int32))]
    timer = lib.jit().time_evaluator("main", tvm.cpu(), number=3, repeat=5)
    seconds = statistics.median(timer(*args).results)
    return words * lanes * repeat * 32 / seconds


def neon_instructions_per_128_macs() -> float:
    """Instructions per 128 binary MACs in the NEON bconv hot loop (generated aarch64 code)."""
    from tests.test_codegen import assembly, bconv_module

    asm = assembly("rpi4", bconv_module(channels_in=256, channels_out=64, size=8))
    # The hot loop: the longest straight run of vector instructions around the uadalp's.
    lines = [line.strip() for line in asm.splitlines() if line.startswith("\t") and not line.startswith("\t.")]
    best, current, chunks, best_chunks = 0, 0, 0, 0
    for line in lines:
        op = line.split()[0]
        if op in {"eor", "cnt", "uadalp", "uaddlp", "ldr", "ldp", "add", "mov", "prfm"}:
            current += 1
            chunks += op == "cnt"
            if chunks and current > best:
                best, best_chunks = current, chunks
        else:
            current, chunks = 0, 0
    return best / best_chunks if best_chunks else float("nan")


def build(case: zoo.ZooCase, tuning_records: str | None = None):
    """The model compiled for the host (with ``tuning_records`` if given), loaded."""
    so = Path(tempfile.mkdtemp()) / f"{case.name}{'-tuned' if tuning_records else ''}.so"
    bnn_tvm.compile(zoo.cached_tflite(case), target="host", tuning_records=tuning_records).export_library(so)
    return bnn_tvm.load(so)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["QuickNet", "BiRealNet"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--tuning-records", nargs="*", default=[],
                        help="MODEL=DIR: also run MODEL built with the tuning records in DIR")
    args = parser.parse_args()
    records = dict(item.split("=", 1) for item in args.tuning_records)

    peak = popcount_peak()
    print(f"popcount peak (1 core, TVM-built XOR-popcount loop): {peak / 1e9:.1f} G binary MACs/s")
    print(f"aarch64 NEON bconv hot loop: {neon_instructions_per_128_macs():.2f} instructions per 128 binary MACs")
    for name in args.models:
        case = zoo.ZooCase(f"{name}-{args.size}", name, size=args.size)
        builds = {"bnn-tvm": build(case)}
        if name in records:
            builds["tuned"] = build(case, records[name])
        print(f"\n{name} {args.size}x{args.size}, batch 1, median of {args.runs} interleaved runs (ms):")
        print(f"  {'threads':>7} " + " ".join(f"{n:>9}" for n in builds)
              + f" {'LCE':>9} {'TFLite':>9} {'vs LCE':>8} {'vs TFLite':>10}" + (f" {'tuned/default':>14}" if
                                                                               "tuned" in builds else ""))
        for threads in args.threads:
            ms = compare(case, threads, args.runs, builds)
            best = min(ms[n] for n in builds)
            line = f"  {threads:>7} " + " ".join(f"{ms[n]:9.2f}" for n in builds)
            line += f" {ms['LCE']:9.2f} {ms['TFLite']:9.2f} {ms['LCE'] / best:7.1f}x {ms['TFLite'] / best:9.1f}x"
            if "tuned" in builds:
                line += f" {ms['bnn-tvm'] / ms['tuned']:13.2f}x"
            print(line)
        model = builds.get("tuned", builds["bnn-tvm"])
        set_threads(1)
        layers = per_layer(model, zoo.random_input((1, case.size, case.size, 3)))
        total = sum(ms for _, ms in layers)
        bconv_ms = sum(ms for kernel, ms in layers if "bnn_bconv2d" in kernel)
        rate = bconv_macs(case) / (bconv_ms / 1e3)
        print(f"  per kernel of the {'tuned' if 'tuned' in builds else 'default'} build, 1 thread (total {total:.2f} ms; binary convolutions {bconv_ms:.2f} ms = "
              f"{bconv_ms / total * 100:.0f}%, {rate / 1e9:.1f} G binary MACs/s = {rate / peak * 100:.0f}% of peak):")
        for kernel, ms in layers[:12]:
            print(f"    {kernel:40s} {ms:7.3f} ms {ms / total * 100:5.1f}%")


if __name__ == "__main__":
    main()
