"""Runs inside the emulated board's Python under the instruction counter; imports nothing of bnn-tvm.

usage: guest.py signature MODEL OUT
       guest.py {tvm|tflite} MODEL THREADS RUNS INPUTS CALLS_OUT OUTPUTS_OUT MAPS_OUT
       guest.py kernels SPEC THREADS RUNS CALLS_OUT MAPS_OUT

``signature`` (not counted): writes to OUT the signature a bnn-tvm .so recorded (``bnn_signature``'s JSON: its
inputs' and outputs' names, shapes and dtypes), which the host cannot read itself: it cannot load an aarch64 .so.

``tvm``/``tflite``: loads MODEL (a bnn-tvm aarch64 .so, or a .tflite for TFLite's interpreter with XNNPACK) and
feeds it INPUTS, an .npz the host prepared and checked: every input of the model, in the model's order (for a
.tflite, its input tensors' order; the host matched them by signature key). One inference records each kernel
call's name and argument shapes into CALLS_OUT (bnn-tvm only) and its outputs into OUTPUTS_OUT (an .npz of
``arr_0``, ``arr_1``... in the model's order, which the host names); then one warm-up inference, RUNS
inferences in THREADS threads, and /proc/self/maps copied to MAPS_OUT. The host runs it with two values of RUNS
and subtracts: loading, recording and warming up cancel, leaving inferences.

``kernels`` (tuning candidates): SPEC is a JSON list of {"path": a kernel .so, "args": MetaSchedule's
argument infos}; each kernel runs RUNS times on random arguments, and CALLS_OUT gets the indices of those
that failed. The host counts each kernel's own library, so nothing else needs cancelling.

A problem the host should report as one line (a .so without a recorded signature) is written to stderr as
``ERROR_PREFIX`` + the message, with exit code ``ERROR_EXIT``.
"""

import json
import sys

import numpy as np

ERROR_PREFIX, ERROR_EXIT = "bnn-tvm guest error: ", 3
SIGNATURE_FUNCTIONS = ("bnn_signature", "bnn_input_signature")  # the second: a .so of bnn-tvm before 0.4


class GuestError(Exception):
    """What the host reports as its one-line error."""


def write_signature(model, out):
    import tvm
    from tvm.runtime.vm import VirtualMachine  # tvm.relax does not import with TVM_USE_RUNTIME_LIB=1

    vm = VirtualMachine(tvm.runtime.load_module(model), tvm.cpu())
    for name in SIGNATURE_FUNCTIONS:
        try:
            function = vm[name]
        except Exception:  # noqa: BLE001 - TVM raises AttributeError or its own error for a missing function
            continue
        with open(out, "w") as file:
            file.write(str(function()))
        return
    raise GuestError(f"has no recorded signature ({SIGNATURE_FUNCTIONS[0]}): not a library made by bnn_tvm.compile")


def _inputs(path):
    with np.load(path) as archive:
        return [np.ascontiguousarray(archive[name]) for name in archive.files]


def _numpy(value):
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [array for field in value for array in _numpy(field)]


def tvm_inference(model, threads, inputs, calls_out, outputs_out):
    import tvm
    from tvm.runtime.vm import VirtualMachine  # tvm.relax does not import with TVM_USE_RUNTIME_LIB=1

    # A pool of THREADS workers sharing all CPUs (mode -3; the list only sizes it, TVM_BIND_THREADS=0 binds
    # nothing): TVM's default uses as many workers as the host has CPUs, which a Pi's 4 threads may exceed.
    tvm.get_global_func("runtime.config_threadpool")(-3, threads, [str(cpu) for cpu in range(threads)])
    device = tvm.cpu()
    library = tvm.runtime.load_module(model)
    recording = VirtualMachine(library, device)
    args = [tvm.runtime.tensor(x, device) for x in _inputs(inputs)]
    calls = []

    def record(func, name, before_run, ret_value, *args):
        if before_run and not name.startswith("vm."):
            calls.append({"kernel": name, "args": [[list(a.shape), str(a.dtype)] for a in args if hasattr(a, "shape")]})
        return 0

    recording.set_instrument(record)
    outputs = _numpy(recording["main"](*args))
    with open(calls_out, "w") as out:
        json.dump(calls, out)
    with open(outputs_out, "wb") as out:
        np.savez(out, *outputs)
    # A VM of its own for the counted inferences: the recording one calls back into Python at every kernel.
    main = VirtualMachine(library, device)["main"]
    return lambda: main(*args)


def tflite_inference(model, threads, inputs, calls_out, outputs_out):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    for detail, x in zip(interpreter.get_input_details(), _inputs(inputs), strict=True):
        interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    with open(outputs_out, "wb") as out:
        np.savez(out, *(interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()))
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


def main(kind, *args):
    if kind == "signature":
        write_signature(*args)
        return
    if kind == "kernels":
        spec, _threads, runs, calls_out, maps_out = args
        run_kernels(spec, int(runs), calls_out)
    else:
        model, threads, runs, inputs, calls_out, outputs_out, maps_out = args
        infer = (tvm_inference if kind == "tvm" else tflite_inference)(model, int(threads), inputs, calls_out,
                                                                       outputs_out)
        infer()
        for _ in range(int(runs)):
            infer()
    with open("/proc/self/maps") as maps, open(maps_out, "w") as out:
        out.write(maps.read())


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except GuestError as error:
        sys.stderr.write(f"{ERROR_PREFIX}{error}\n")
        sys.exit(ERROR_EXIT)
