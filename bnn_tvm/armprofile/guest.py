"""Runs inside the emulated board's Python under the instruction counter; imports nothing of bnn-tvm.

usage: guest.py {tvm|tflite|kernels} MODEL THREADS RUNS CALLS_OUT MAPS_OUT

Loads MODEL (a bnn-tvm aarch64 .so, or a .tflite for TFLite's interpreter with XNNPACK), runs one
inference that records each kernel call's name and argument shapes into CALLS_OUT (bnn-tvm only),
one warm-up inference, then RUNS inferences in THREADS threads, and copies /proc/self/maps to MAPS_OUT. The host runs it
with two values of RUNS and subtracts: loading, recording and warming up cancel, leaving inferences.

``kernels`` (tuning candidates): MODEL is a JSON list of {"path": a kernel .so, "args": MetaSchedule's
argument infos}; each kernel runs RUNS times on random arguments, and CALLS_OUT gets the indices of those
that failed. The host counts each kernel's own library, so nothing else needs cancelling.
"""

import json
import sys

import numpy as np


def tvm_inference(model, threads, calls_out):
    import tvm
    from tvm.runtime.vm import VirtualMachine  # tvm.relax does not import with TVM_USE_RUNTIME_LIB=1

    # A pool of THREADS workers sharing all CPUs (mode -3; the list only sizes it, TVM_BIND_THREADS=0 binds
    # nothing): TVM's default uses as many workers as the host has CPUs, which a Pi's 4 threads may exceed.
    tvm.get_global_func("runtime.config_threadpool")(-3, threads, [str(cpu) for cpu in range(threads)])
    device = tvm.cpu()
    library = tvm.runtime.load_module(model)
    recording = VirtualMachine(library, device)
    (shape, dtype), *_ = json.loads(str(recording["bnn_input_signature"]()))
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype(dtype), device)
    calls = []

    def record(func, name, before_run, ret_value, *args):
        if before_run and not name.startswith("vm."):
            calls.append({"kernel": name, "args": [[list(a.shape), str(a.dtype)] for a in args if hasattr(a, "shape")]})
        return 0

    recording.set_instrument(record)
    recording["main"](x)
    with open(calls_out, "w") as out:
        json.dump(calls, out)
    # A VM of its own for the counted inferences: the recording one calls back into Python at every kernel.
    main = VirtualMachine(library, device)["main"]
    return lambda: main(x)


def tflite_inference(model, threads, calls_out):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    given = interpreter.get_input_details()[0]
    x = np.random.default_rng(0).standard_normal(given["shape"]).astype(given["dtype"])
    interpreter.set_tensor(given["index"], x)
    with open(calls_out, "w") as out:
        json.dump([], out)
    return interpreter.invoke


def run_kernels(spec, runs, calls_out):
    import tvm

    device = tvm.cpu()
    rng = np.random.default_rng(0)
    failed = []
    with open(spec) as file:
        candidates = json.load(file)
    for index, candidate in enumerate(candidates):
        try:
            library = tvm.runtime.load_module(candidate["path"])
            kernel = library[library.entry_name]
            args = [tvm.runtime.tensor(rng.integers(-8, 8, size=shape).astype(dtype), device)
                    for _, dtype, shape in candidate["args"]]
            for _ in range(runs):
                kernel(*args)
        except Exception:  # noqa: BLE001 - a candidate that fails is reported, the others still counted
            failed.append(index)
    with open(calls_out, "w") as out:
        json.dump(failed, out)


def main(kind, model, threads, runs, calls_out, maps_out):
    if kind == "kernels":
        run_kernels(model, int(runs), calls_out)
    else:
        infer = (tvm_inference if kind == "tvm" else tflite_inference)(model, int(threads), calls_out)
        infer()
        for _ in range(int(runs)):
            infer()
    with open("/proc/self/maps") as maps, open(maps_out, "w") as out:
        out.write(maps.read())


if __name__ == "__main__":
    main(*sys.argv[1:])
