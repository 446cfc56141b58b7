"""The engines ``bnn-tvm bench`` times, each in a worker process of its own (``python -m bnn_tvm.bench worker``):
TVM's thread-pool workers spin for a while after each call, and in a shared process they would steal time slices
from the engine timed next.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..profiler import per_kernel
from ..signature import read_worker_inputs

ENGINES = ("bnn-tvm", "lce", "tflite")
ENGINE_LABELS = {"bnn-tvm": "bnn-tvm", "lce": "LCE", "tflite": "TFLite (XNNPACK, float model)"}


class BenchError(ValueError):
    """A bad argument or model: the message says which."""


def worker(engine: str, model: Path, input_path: Path, threads: int, runs: int, warmup: int,
           output_path: Path | None = None, kernels: bool = False) -> dict:
    """Time ``runs`` calls of one engine in this process (after ``warmup`` calls); the report of one worker.

    ``input_path``: an .npz of the model's inputs keyed by input name (``save_inputs``), or the .npy of a
    one-input model's input. Each engine takes them in its own model's order, matched by name, else by position
    (``_arrange``). ``output_path``: the outputs of the first call are saved there, an .npz keyed by the engine's
    own output names, in its order.
    """
    given = read_worker_inputs(input_path)
    compiled = None
    if engine == "bnn-tvm":
        from ..runtime import load

        compiled = load(model, threads=threads)  # before the first run, which makes the pool
        signature = compiled.signature()
        x = _arrange("bnn-tvm", signature.names(), given)
        in_use, output_names = compiled.threads(), [spec.name for spec in signature.outputs]

        def call(arrays):
            return compiled(*arrays)
    else:
        input_names, output_names = tflite_io_names(model)
        x = _arrange(engine, input_names, given)
        in_use = threads
        if engine == "lce":
            from .. import zoo

            interpreter = zoo.lce_interpreter(model, num_threads=threads)

            def call(arrays):  # one array for a one-input model, as LCE's own examples call it
                return interpreter.predict(arrays[0] if len(arrays) == 1 else list(arrays))
        else:
            call = _tflite_runner(model, threads)
    output = call(x)
    for _ in range(warmup):
        call(x)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call(x)
        samples.append(time.perf_counter() - start)
    if output_path is not None:
        _save_outputs(output_path, output_names, output)
    report = {"engine": engine, "pid": os.getpid(), "threads": threads, "threads_in_use": in_use,
              "samples_ms": [s * 1e3 for s in samples]}
    if kernels and compiled is not None:
        report["kernels"] = per_kernel(compiled, x, runs)
    return report


def _arrange(engine: str, names: list[str], given: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``given`` in the order of ``names`` (an engine's model's inputs): by name when it names them all, else by
    position (a one-input model whose engines name its input differently, or an unnamed .npy)."""
    if set(names) == set(given) and len(names) == len(given):
        return [given[name] for name in names]
    if len(names) == len(given):
        return list(given.values())
    raise BenchError(f"the {engine} model takes {len(names)} input{'s' * (len(names) != 1)} ({', '.join(names)}), "
                     f"given {len(given)} ({', '.join(given) or 'one unnamed'})")


def _save_outputs(path: Path, names: list[str], output) -> None:
    outputs = output if isinstance(output, (list, tuple)) else [output]
    if len(set(names)) != len(outputs):  # names missing or repeated (a damaged .tflite's): by position
        names = [f"output_{i}" for i in range(len(outputs))]
    with open(path, "wb") as file:
        np.savez(file, **{name: np.asarray(value) for name, value in zip(names, outputs, strict=True)})


def tflite_io_names(model: Path) -> tuple[list[str], list[str]]:
    """A .tflite's input and output names in its order, as bnn-tvm's frontend names them in a signature: the
    serving signature's keys, else the tensors' names."""
    import tflite

    from ..frontend.tflite import _io_names

    return _io_names(tflite.Model.GetRootAsModel(Path(model).read_bytes(), 0))


def _tflite_runner(model: Path, threads: int):
    from .. import zoo

    tf = zoo._tf()
    # The default op resolver applies the XNNPACK delegate to float models.
    interpreter = tf.lite.Interpreter(model_content=Path(model).read_bytes(), num_threads=threads)
    interpreter.allocate_tensors()
    # Tensor details come in the model's order, the order of tflite_io_names.
    given = [detail["index"] for detail in interpreter.get_input_details()]
    taken = [detail["index"] for detail in interpreter.get_output_details()]

    def call(arrays):
        for index, x in zip(given, arrays, strict=True):
            interpreter.set_tensor(index, x)
        interpreter.invoke()
        outputs = [interpreter.get_tensor(index) for index in taken]
        return outputs[0] if len(outputs) == 1 else outputs

    return call


def spawn_worker(engine: str, model: Path, input_path: Path, threads: int, runs: int, warmup: int,
                 result: Path, output_path: Path | None, kernels: bool) -> dict:
    """``worker``'s report, timed in a process of its own (a spinning thread pool shares no time slice).

    ``input_path``: the inputs' .npz keyed by input name (``save_inputs``), or a one-input model's .npy.
    """
    command = [sys.executable, "-m", "bnn_tvm.bench", "worker", engine, str(model), "--input", str(input_path),
               "--threads", str(threads), "--runs", str(runs), "--warmup", str(warmup), "--result", str(result)]
    if output_path is not None:
        command += ["--output", str(output_path)]
    if kernels:
        command.append("--kernels")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the {engine} worker ({threads} threads) failed with exit code {done.returncode}:\n"
                           f"{tail}")
    return json.loads(result.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnn_tvm.bench",
                                     description="One measurement of `bnn-tvm bench`, in a process of its own.")
    commands = parser.add_subparsers(dest="command", required=True)
    work = commands.add_parser("worker")
    work.add_argument("engine", choices=ENGINES)
    work.add_argument("model")
    work.add_argument("--input", required=True, help="the inputs' .npz keyed by input name (or a one-input "
                                                     "model's .npy)")
    work.add_argument("--threads", type=int, required=True)
    work.add_argument("--runs", type=int, required=True)
    work.add_argument("--warmup", type=int, default=3)
    work.add_argument("--result", required=True, help="JSON file to write the report to")
    work.add_argument("--output", help="save the engine's outputs to this .npz, keyed by output name")
    work.add_argument("--kernels", action="store_true", help="bnn-tvm: also time each kernel")
    args = parser.parse_args(argv)
    report = worker(args.engine, Path(args.model), Path(args.input), args.threads, args.runs, args.warmup,
                    Path(args.output) if args.output else None, args.kernels)
    Path(args.result).write_text(json.dumps(report))
    return 0
