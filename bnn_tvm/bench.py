"""An honest benchmark: bnn-tvm against LCE's interpreter and TFLite (XNNPACK, float-equivalent model).

Every measurement runs in a process of its own (``python -m bnn_tvm.bench worker ...``): TVM's thread-pool
workers spin for a while after each call, and in a shared process they would steal time slices from the engine
timed next. All engines get the same inputs (the user's, as ``bnn-tvm run`` takes them, else random with a fixed
seed), saved once as ``input.npz`` keyed by input name, the same thread count, warm-up runs, then N timed runs
(numpy in, numpy out, for every engine); a setting is repeated in R fresh processes and reported as the median
of the processes' medians. Ratios are the other engines' medians over bnn-tvm's at the same thread count. Every
output is compared with bnn-tvm's, matched by name (else by position).

Also measured: the bnn-tvm build's time per kernel (VM instrumentation, in the bnn-tvm worker at the first
thread count), with binary convolutions' binary MACs per second against this core's popcount peak, which
``bench_peak.c`` measures in an XOR + popcount + add loop on registers.

    bnn-tvm bench QuickNet --threads 1 2 --against lce tflite --runs 10 --repeat 3 --out DIR --plot
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ENGINES = ("bnn-tvm", "lce", "tflite")
ENGINE_LABELS = {"bnn-tvm": "bnn-tvm", "lce": "LCE", "tflite": "TFLite (XNNPACK, float model)"}
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")  # as bnn_tvm.build.load_model reads them
PEAK_SOURCE = Path(__file__).with_name("bench_peak.c")
CPU_FLAGS = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq", "avx512vpopcntdq", "neon",
             "asimd")


class BenchError(ValueError):
    """A bad argument or model: the message says which."""


@dataclass
class Subject:
    """What is benchmarked: the file bnn-tvm compiles, and the model file each other engine runs."""

    name: str
    description: str
    bnn_model: Path
    models: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Preparing the models


def check_arguments(model: str, threads: list[int], against: list[str], runs: int, repeat: int,
                    warmup: int = 0, inputs_file=None, input_files=()) -> None:
    """Raise BenchError naming the first bad argument (input files: only that they exist; what they hold is
    checked against the model once it is compiled)."""
    unknown = [e for e in against if e not in ENGINES[1:]]
    if unknown:
        raise BenchError(f"unknown engine {unknown[0]!r}; engines to compare against: {', '.join(ENGINES[1:])}")
    for name, values in (("--threads", threads), ("--runs", [runs]), ("--repeat", [repeat])):
        bad = [v for v in values if v < 1]
        if bad:
            raise BenchError(f"{name} must be at least 1, got {bad[0]}")
    if warmup < 0:
        raise BenchError(f"--warmup must be at least 0, got {warmup}")
    if not threads:
        raise BenchError("--threads needs at least one thread count")
    if not _is_file_like(model) and not model.isidentifier():
        raise BenchError(f"{model!r} is neither a model file nor a larq-zoo architecture name")
    if _is_file_like(model) and not Path(model).exists():
        raise BenchError(f"no model file {model}")
    if inputs_file is not None and not Path(inputs_file).exists():
        raise BenchError(f"no input file {inputs_file}")
    for text in map(str, input_files):  # [NAME=]FILE.npy: a path may hold an "=" too
        path = text if Path(text).exists() else text.partition("=")[2] or text
        if not Path(path).exists():
            raise BenchError(f"no input file {path}")


def _is_file_like(model: str) -> bool:
    path = Path(model)
    return path.exists() or bool(path.suffix) or os.sep in model


def prepare(model: str, against: list[str], size: int, workdir: Path) -> Subject:
    """Find or make the model file of each engine; an engine that cannot run this model is skipped, with why.

    A larq-zoo architecture (random, seeded initialisation, without its final softmax, which saturates on random
    weights and would hide differences): LCE's conversion for bnn-tvm and LCE, the stock TFLite converter's for
    TFLite, both cached by ``bnn_tvm.zoo``. A Keras model file: bnn-tvm compiles it, LCE and TFLite run its
    conversions by LCE and by the stock converter (written to ``workdir``). A .tflite: bnn-tvm compiles it; LCE
    runs it if LCE converted it, TFLite if it is a stock conversion (the float model itself).
    """
    if not _is_file_like(model):
        return _prepare_zoo(model, against, size)
    path = Path(model)
    subject = Subject(path.stem, str(path), path)
    if path.suffix == ".tflite":
        lce_made = _has_lce_ops(path)
        for engine in against:
            if (engine == "lce") == lce_made:
                subject.models[engine] = path
            elif engine == "lce":
                subject.skipped[engine] = "a stock .tflite has no LCE ops: LCE would run the same float model"
            else:
                subject.skipped[engine] = ("an LCE-converted .tflite has no float equivalent here: give the Keras "
                                           "model to compare against TFLite")
        return subject
    from . import zoo
    from .frontend.keras import load_keras_model

    keras = load_keras_model(path)
    converters = {"lce": (zoo.convert, "lce.tflite"), "tflite": (zoo.convert_stock, "float.tflite")}
    for engine in against:
        convert, filename = converters[engine]
        subject.models[engine] = workdir / filename
        subject.models[engine].write_bytes(convert(keras))
    return subject


def _prepare_zoo(architecture: str, against: list[str], size: int) -> Subject:
    from . import zoo

    try:
        import larq_zoo
    except ImportError as err:
        raise BenchError(f"a larq-zoo architecture needs the larq extra (pip install bnn-tvm[larq]): {err}") from err
    if not any(hasattr(family, architecture) for family in (larq_zoo.sota, larq_zoo.literature)):
        raise BenchError(f"{architecture!r} is neither a model file nor a larq-zoo architecture")
    case = zoo.ZooCase(f"{architecture}-{size}-logits", architecture, size=size)
    lce_model = zoo.cached_tflite(case, zoo.keras_logits_model)
    subject = Subject(f"{architecture}-{size}", f"larq-zoo {architecture} {size}x{size} (random weights, logits)",
                      lce_model)
    for engine in against:
        subject.models[engine] = lce_model if engine == "lce" else zoo.cached_stock_tflite(case,
                                                                                           zoo.keras_logits_model)
    return subject


def _has_lce_ops(path: Path) -> bool:
    import tflite

    parsed = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    codes = (parsed.OperatorCodes(i).CustomCode() for i in range(parsed.OperatorCodesLength()))
    return any(code and code.decode().startswith("Lce") for code in codes)


# ---------------------------------------------------------------------------------------------------------------
# Workers: one process per measurement


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
        from .runtime import load

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
            from . import zoo

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


def save_inputs(path: Path, signature, arrays: list) -> Path:
    """The model's inputs (``arrays``, in ``signature``'s order) to one .npz keyed by input name, which
    ``worker`` (``--input``) takes; ``path``, written beside and renamed into place."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as file:  # a file object: np.savez would add .npz to a name without it
        np.savez(file, **dict(zip(signature.names(), arrays, strict=True)))
    os.replace(partial, path)
    return path


def read_worker_inputs(path: Path) -> dict[str, np.ndarray]:
    """{input name: array} of an .npz by ``save_inputs``, in its order; a .npy's one array as {"": array}."""
    with open(path, "rb") as file:
        npy = file.read(6) == b"\x93NUMPY"
    if npy:
        return {"": np.load(path)}
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


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

    from .frontend.tflite import _io_names

    return _io_names(tflite.Model.GetRootAsModel(Path(model).read_bytes(), 0))


def _tflite_runner(model: Path, threads: int):
    from . import zoo

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


def per_kernel(compiled, inputs, runs: int = 10) -> list[dict]:
    """Each kernel of a loaded bnn-tvm build: calls and milliseconds per inference, binary MACs per inference.

    ``inputs``: the model's inputs in its order (a list of arrays; one array for a one-input model).

    Timed by the VM's instrument hook around each kernel call, so the interpreter's own overhead between
    kernels is left out; largest first.
    """
    import tvm

    from .armprofile import binary_macs

    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    macs: dict[str, int] = {}
    started: dict[str, float] = {}
    recording = [True]

    def instrument(_func, name, before, _ret, *args):
        if name.startswith("vm."):
            return 0
        if before:
            if recording[0]:
                shapes = [[list(a.shape), str(a.dtype)] for a in args if hasattr(a, "shape")]
                calls[name] = calls.get(name, 0) + 1
                macs[name] = macs.get(name, 0) + (binary_macs(name, shapes) if len(shapes) >= 3 else 0)
            started[name] = time.perf_counter()
        else:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started[name]
        return 0

    inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    compiled.signature().check(inputs)
    device_inputs = [tvm.runtime.tensor(np.ascontiguousarray(x), compiled.device) for x in inputs]
    compiled.vm.set_instrument(instrument)
    compiled.vm["main"](*device_inputs)  # records calls and shapes
    recording[0] = False
    totals.clear()
    for _ in range(runs):
        compiled.vm["main"](*device_inputs)
    rows = [{"kernel": name, "calls": calls[name], "ms": total / runs * 1e3, "binary_macs": macs.get(name, 0)}
            for name, total in totals.items()]
    return sorted(rows, key=lambda row: -row["ms"])


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


# ---------------------------------------------------------------------------------------------------------------
# The popcount peak


def popcount_peak(seconds: float = 0.1, trials: int = 5, cache: Path | None = None) -> dict:
    """Binary MACs per second of one core in ``bench_peak.c``'s register loops; the fastest loop is the peak.

    Each loop compiled in (``-march=native`` decides which: AVX-512 VPOPCNTQ, AVX2 nibble lookup, scalar POPCNT,
    AVX2 and scalar at once) runs ``trials`` times; a loop's rate is its fastest trial, since other tenants of
    the machine can only slow a loop down. Returns the peak, the loop that reached it, every loop's samples and
    the instruction sets the program was compiled for.
    """
    program = compile_peak_program(cache)
    paths = subprocess.run([str(program), "list"], capture_output=True, text=True, check=True).stdout.split()
    samples = {}
    for path in paths:
        out = subprocess.run([str(program), path, str(seconds), str(trials)], capture_output=True, text=True,
                             check=True).stdout
        samples[path] = [int(bits) / float(secs) for name, bits, secs in
                         (line.split() for line in out.splitlines() if not line.startswith("checksum"))]
    best = max(paths, key=lambda p: max(samples[p]))
    return {"binary_macs_per_s": max(samples[best]), "path": best, "paths": paths,
            "samples_macs_per_s": samples, "program": str(program)}


def compile_peak_program(cache: Path | None = None) -> Path:
    """``bench_peak.c`` compiled with ``gcc -O3 -march=native`` for this machine, once (cached by source and CPU)."""
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"the popcount peak needs a C compiler: {compiler} not found (set CC)")
    source = PEAK_SOURCE.read_bytes()
    machine = machine_info()
    key = hashlib.sha256(source + json.dumps([machine["cpu"], machine["flags"], compiler]).encode()).hexdigest()[:16]
    from .cache import build_once, cache_dir

    def build(partial: Path) -> None:
        subprocess.run([compiler, "-O3", "-march=native", "-o", str(partial), str(PEAK_SOURCE)], check=True,
                       capture_output=True)

    return build_once((cache or cache_dir() / "programs") / f"bench_peak-{key}", build)


def machine_info() -> dict:
    """CPU model, the CPU flags that decide the kernels (popcount, AVX2, AVX-512), logical CPUs, physical cores."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.partition(":")[2].strip() for line in info if line.startswith("model name")), None)
    except OSError:  # not Linux: the platform's own name
        pass
    cpu = cpu or platform.processor() or platform.machine()
    from .runtime import physical_cores
    from .targets import host_cpu_flags

    return {"cpu": cpu, "machine": platform.machine(), "flags": sorted(host_cpu_flags() & set(CPU_FLAGS)),
            "logical_cpus": len(os.sched_getaffinity(0)), "physical_cores": physical_cores(),
            "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


def run(model: str, threads: list[int] = (1,), against: list[str] = ("lce", "tflite"), runs: int = 10,
        repeat: int = 3, warmup: int = 3, out: str | os.PathLike = "bench", size: int = 224,
        tuning_records: str | None = None, plot: bool = False, say=print, inputs_file=None, input_files=(),
        seed: int = 0) -> dict:
    """Benchmark ``model`` (a model file or a larq-zoo architecture name) and write ``out``/bench.md and
    bench.json (and bench.png with ``plot``); returns what bench.json holds.

    Parameters
    ----------
    threads
        Thread counts; every engine runs at each. The per-kernel breakdown is taken at the first.
    against
        Engines besides bnn-tvm: ``lce`` and ``tflite``.
    runs, repeat, warmup
        Each (engine, thread count) runs in ``repeat`` fresh processes, each timing ``runs`` calls after
        ``warmup`` untimed ones; the median is the median of the processes' medians.
    inputs_file, input_files, seed
        The inputs, as ``bnn-tvm run`` takes them (``--inputs FILE.npz``, ``--input [NAME=]FILE.npy`` repeated,
        ``--seed``): an .npz keyed by input name, .npy files each named or the next input not given yet; every
        input left out is random (seed ``seed`` plus the input's index). Checked against the compiled model
        (``signature.InputError`` names the file and the input).
    """
    import bnn_tvm

    threads, against = list(threads), list(dict.fromkeys(against))
    input_files = [str(text) for text in input_files or ()]  # [NAME=]FILE.npy; Paths too
    check_arguments(model, threads, against, runs, repeat, warmup, inputs_file, input_files)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = out / "workers"
    workers.mkdir(exist_ok=True)
    subject = prepare(model, against, size, out)
    for engine, reason in subject.skipped.items():
        say(f"skipping {engine}: {reason}")
    engines = ["bnn-tvm", *(e for e in against if e in subject.models)]

    say(f"compiling {subject.description} for the host")
    so = bnn_tvm.compile(subject.bnn_model, target="host", tuning_records=tuning_records).export_library(
        out / f"{subject.name}.so")
    from .signature import read_inputs

    signature = bnn_tvm.load(so).signature()
    arrays = read_inputs(signature, inputs_file, input_files, seed=seed, say=say)
    input_path = save_inputs(out / "input.npz", signature, arrays)
    sources = input_sources(signature, inputs_file, input_files)

    say("measuring the popcount peak of one core")
    peak = popcount_peak()
    results = {(e, n): {"engine": e, "threads": n, "pids": [], "samples_ms": []} for n in threads for e in engines}
    kernels = None
    for round_ in range(repeat):
        for n in threads:
            for engine in engines:
                first = round_ == 0
                output = workers / f"{engine}-{n}.npz" if first else None
                report = spawn_worker(engine, subject.models.get(engine, so), input_path, n, runs, warmup,
                                       workers / f"{engine}-{n}-{round_}.json", output,
                                       kernels=first and engine == "bnn-tvm" and n == threads[0])
                row = results[engine, n]
                row["pids"].append(report["pid"])
                row["samples_ms"].append(report["samples_ms"])
                row["threads_in_use"] = report["threads_in_use"]
                kernels = report.get("kernels", kernels)
                say(f"  round {round_ + 1}/{repeat}, {n} threads, {engine}: "
                    f"{statistics.median(report['samples_ms']):.3f} ms (pid {report['pid']})")
    for (engine, n), row in results.items():
        row["process_medians_ms"] = [statistics.median(s) for s in row["samples_ms"]]
        row["median_ms"] = statistics.median(row["process_medians_ms"])
        reference = results["bnn-tvm", n]
        row["vs_bnn_tvm"] = row["median_ms"] / reference["median_ms"]
        row["outputs"] = compare_outputs(workers / f"bnn-tvm-{n}.npz", workers / f"{engine}-{n}.npz")
        # Over all outputs (a single output's own): None if any output's shape differs or is missing.
        diffs = [o["max_abs_diff_vs_bnn_tvm"] for o in row["outputs"]]
        row["max_abs_diff_vs_bnn_tvm"] = None if None in diffs else max(diffs)
        row["max_abs_output"] = max((o["max_abs_output"] for o in row["outputs"] if o["max_abs_output"] is not None),
                                    default=None)
    report = {
        "model": model, "name": subject.name, "description": subject.description,
        "models": {"bnn-tvm": str(subject.bnn_model), **{e: str(p) for e, p in subject.models.items()}},
        "library": str(so), "tuning_records": tuning_records, "skipped": subject.skipped, "pid": os.getpid(),
        "input": {"path": str(input_path), "seed": seed, "tensors": [
            {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype,
             **({"source": source} if source else {"seed": seed + i})}
            for i, (spec, source) in enumerate(zip(signature.inputs, sources, strict=True))]},
        "outputs": [{"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype} for spec in signature.outputs],
        "threads": threads, "runs": runs, "repeat": repeat, "warmup": warmup, "machine": machine_info(),
        "peak": peak, "results": list(results.values()),
        "ratios": [{"threads": n, **{f"{e}/bnn-tvm": results[e, n]["vs_bnn_tvm"] for e in engines[1:]}}
                   for n in threads],
        "kernels": _kernel_table(kernels, peak["binary_macs_per_s"], threads[0]),
    }
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    markdown = to_markdown(report)
    (out / "bench.md").write_text(markdown)
    say(markdown)
    if plot:
        say(f"plot: {plot_report(report, out / 'bench.png')}")
    return report


def input_sources(signature, inputs_file=None, input_files=()) -> list[str | None]:
    """Where each of ``signature``'s inputs came from (``FILE.npz[NAME]``, ``FILE.npy``), None for a random one:
    ``signature.read_inputs``' own resolution, for reports; call it once ``read_inputs`` accepted the files."""
    from .signature import _split_name

    names, given = signature.names(), {}
    if inputs_file is not None:
        with np.load(inputs_file) as archive:
            given.update({key: f"{inputs_file}[{key}]" for key in archive.files})
    for text in input_files:
        name, path = _split_name(text, names)
        given[name or next(n for n in names if n not in given)] = path
    return [given.get(name) for name in names]


def compare_outputs(ours: Path, theirs: Path) -> list[dict]:
    """Each of bnn-tvm's outputs (an .npz of ``worker``'s) against another engine's: matched by name when the
    engines name their outputs alike, else by position; the largest absolute difference (None when the shapes
    differ or the engine gave no such output) and the other engine's largest absolute value."""
    with np.load(ours) as mine, np.load(theirs) as other:
        ours_named = {name: mine[name] for name in mine.files}
        theirs_named = {name: other[name] for name in other.files}
    by_name = set(ours_named) == set(theirs_named)
    theirs_list = list(theirs_named.items())
    rows = []
    for i, (name, value) in enumerate(ours_named.items()):
        match = (name, theirs_named[name]) if by_name else (theirs_list[i] if i < len(theirs_list) else (None, None))
        other_name, other_value = match
        row = {"name": name, "shape": list(value.shape), "engine_name": other_name,
               "max_abs_diff_vs_bnn_tvm": None, "max_abs_output": None}
        if other_value is not None:
            a, b = value.astype(np.float64), other_value.astype(np.float64)  # packed int32 words differ exactly
            row["max_abs_diff_vs_bnn_tvm"] = float(np.abs(a - b).max()) if a.shape == b.shape else None
            row["max_abs_output"] = float(np.abs(b).max()) if b.size else 0.0
        rows.append(row)
    return rows


def _kernel_table(rows: list[dict], peak: float, threads: int) -> dict:
    total = sum(row["ms"] for row in rows)
    for row in rows:
        row["share"] = row["ms"] / total
        row["binary_macs_per_s"] = row["binary_macs"] / (row["ms"] / 1e3) if row["binary_macs"] else None
        row["peak_fraction"] = row["binary_macs_per_s"] / peak if row["binary_macs"] else None
    binary = [row for row in rows if row["binary_macs"]]
    binary_ms = sum(row["ms"] for row in binary)
    rate = sum(row["binary_macs"] for row in binary) / (binary_ms / 1e3) if binary else None
    return {"threads": threads, "total_ms": total, "binary_ms": binary_ms, "binary_macs_per_s": rate,
            "binary_peak_fraction": rate / peak if rate else None, "rows": rows}


def to_markdown(report: dict, top: int = 15) -> str:
    """The tables of a report: latencies and ratios, then the per-kernel breakdown."""
    machine, peak = report["machine"], report["peak"]
    lines = [
        f"# bnn-tvm bench: {report['description']}",
        "",
        f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs ({machine['physical_cores']} physical cores), "
        f"flags: {', '.join(machine['flags']) or 'none of ' + '/'.join(CPU_FLAGS[:3])}"
        f"{'' if any(f.startswith('avx512') for f in machine['flags']) else ' (no AVX-512)'}. Popcount peak of one core: "
        f"{peak['binary_macs_per_s'] / 1e9:.0f} G binary MACs/s ({peak['path']} loop in registers).",
        "",
        f"Each engine in its own process; median of {report['repeat']} processes' medians of {report['runs']} "
        f"runs (after {report['warmup']} warm-up runs), {_inputs_phrase(report)}.",
        "",
        "| threads | engine | median ms | processes' medians ms | vs bnn-tvm | max abs diff vs bnn-tvm |",
        "|---:|---|---:|---|---:|---:|",
    ]
    for row in report["results"]:
        threads = f"{row['threads']}" + (f" ({row['threads_in_use']} in use)"
                                         if row["threads_in_use"] != row["threads"] else "")
        diff = "-" if row["engine"] == "bnn-tvm" else _diffs_cell(row)
        spread = ", ".join(f"{ms:.3f}" for ms in row["process_medians_ms"])
        lines.append(f"| {threads} | {ENGINE_LABELS[row['engine']]} | {row['median_ms']:.3f} | {spread} | "
                     f"{row['vs_bnn_tvm']:.2f}x | {diff} |")
    for engine, reason in report["skipped"].items():
        lines.append(f"\n{ENGINE_LABELS[engine]} skipped: {reason}.")
    kernels = report["kernels"]
    lines += ["", f"## bnn-tvm per kernel, {kernels['threads']} thread{'s' if kernels['threads'] > 1 else ''}", ""]
    summary = f"Kernels total {kernels['total_ms']:.3f} ms per inference"
    if kernels["binary_macs_per_s"]:
        summary += (f"; binary kernels {kernels['binary_ms']:.3f} ms ({kernels['binary_ms'] / kernels['total_ms']:.0%})"
                    f" at {kernels['binary_macs_per_s'] / 1e9:.0f} G binary MACs/s, "
                    f"{kernels['binary_peak_fraction']:.0%} of the popcount peak")
    lines += [summary + ".", "", "| kernel | calls | ms | share | G binary MACs/s | % of peak |",
              "|---|---:|---:|---:|---:|---:|"]
    for row in kernels["rows"][:top]:
        rate = (f"{row['binary_macs_per_s'] / 1e9:.0f} | {row['peak_fraction']:.0%}" if row["binary_macs"]
                else " | ")
        lines.append(f"| {row['kernel']} | {row['calls']} | {row['ms']:.3f} | {row['share']:.1%} | {rate} |")
    if len(kernels["rows"]) > top:
        rest = kernels["rows"][top:]
        lines.append(f"| ({len(rest)} more) | {sum(r['calls'] for r in rest)} | {sum(r['ms'] for r in rest):.3f} | "
                     f"{sum(r['share'] for r in rest):.1%} | | |")
    return "\n".join(lines) + "\n"


def _inputs_phrase(report: dict) -> str:
    """"same input (1x64x64x3 float32, seed 0)", or each input's name, shape and source."""
    tensors = report["input"]["tensors"]

    def where(tensor):
        return f"seed {tensor['seed']}" if "seed" in tensor else f"from {tensor['source']}"

    def shape(tensor):
        return f"{'x'.join(map(str, tensor['shape']))} {tensor['dtype']}"

    if len(tensors) == 1:
        return f"same input ({shape(tensors[0])}, {where(tensors[0])})"
    return "same inputs (" + "; ".join(f"{t['name']} {shape(t)}, {where(t)}" for t in tensors) + ")"


def _diffs_cell(row: dict) -> str:
    """One output: "1.2e-06 (of 3.4)"; several: each by name, "logits 1.2e-06 (of 3.4); refined 0 (of 5)"."""
    def cell(output):
        if output["max_abs_output"] is None:
            return "no such output"
        if output["max_abs_diff_vs_bnn_tvm"] is None:
            return "shapes differ"
        return f"{output['max_abs_diff_vs_bnn_tvm']:.3g} (of {output['max_abs_output']:.3g})"

    outputs = row["outputs"]
    if len(outputs) == 1:
        return cell(outputs[0])
    return "; ".join(f"{output['name']} {cell(output)}" for output in outputs)


def plot_report(report: dict, path: Path, top: int = 15) -> Path:
    """A PNG of two bar charts: latency per engine and thread count, and the per-kernel breakdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(dict.fromkeys(row["engine"] for row in report["results"]))
    threads = report["threads"]
    figure, (latency, kernels) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [1, 1.6]})
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        rows = {row["threads"]: row for row in report["results"] if row["engine"] == engine}
        xs = [t + (i - (len(engines) - 1) / 2) * width for t in range(len(threads))]
        bars = latency.bar(xs, [rows[n]["median_ms"] for n in threads], width, label=ENGINE_LABELS[engine])
        latency.bar_label(bars, [f"{rows[n]['median_ms']:.2f}" for n in threads], fontsize=7)
    latency.set_xticks(range(len(threads)), [f"{n} thread{'s' if n > 1 else ''}" for n in threads])
    latency.set_yscale("log")  # LCE on x86 runs its reference kernels, tens of times slower
    medians = [row["median_ms"] for row in report["results"]]
    latency.set_ylim(min(medians) / 3, max(medians) * 5)  # room for the smallest bar, its label and the legend
    latency.set_ylabel("median latency, ms (log scale)")
    latency.set_title(f"{report['name']}: latency per engine")
    latency.legend(fontsize=8, loc="upper left")

    rows = report["kernels"]["rows"][:top][::-1]
    colors = ["tab:blue" if row["binary_macs"] else "tab:gray" for row in rows]
    bars = kernels.barh(range(len(rows)), [row["ms"] for row in rows], color=colors)
    kernels.bar_label(bars, [f"{row['peak_fraction']:.0%} of peak" if row["binary_macs"] else "" for row in rows],
                      fontsize=7, padding=2)
    kernels.set_yticks(range(len(rows)), [_short(row["kernel"]) for row in rows], fontsize=7)
    kernels.set_xlabel("ms per inference")
    kernels.set_title(f"bnn-tvm per kernel, {report['kernels']['threads']} thread(s) (blue: binary)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------
# Command line: the worker (the parent is `bnn-tvm bench`)


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


if __name__ == "__main__":
    sys.exit(main())
