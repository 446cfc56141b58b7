"""An honest benchmark: bnn-tvm against LCE's interpreter and TFLite (XNNPACK, float-equivalent model).

Every measurement runs in a process of its own (``python -m bnn_tvm.bench worker ...``, ``engines``): TVM's thread-pool
workers spin for a while after each call, and in a shared process they would steal time slices from the engine
timed next. All engines get the same inputs (the user's, as ``bnn-tvm run`` takes them, else random with a fixed
seed), saved once as ``input.npz`` keyed by input name, the same thread count, warm-up runs, then N timed runs
(numpy in, numpy out, for every engine); a setting is repeated in R fresh processes and reported as the median
of the processes' medians. Ratios are the other engines' medians over bnn-tvm's at the same thread count. Every
output is compared with bnn-tvm's, matched by name (else by position).

Also measured: the bnn-tvm build's time per kernel (VM instrumentation, in the bnn-tvm worker at the first
thread count), with binary convolutions' binary MACs per second against this core's popcount peak, which
``bench_peak.c`` measures in an XOR + popcount + add loop on registers (``peak``).

    bnn-tvm bench QuickNet --threads 1 2 --against lce tflite --runs 10 --repeat 3 --out DIR --plot
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from ..signature import input_sources, read_inputs, save_inputs
from .engines import ENGINES, BenchError, spawn_worker
from .peak import machine_info, popcount_peak
from .prepare import is_file_like, prepare
from .report import kernel_table, plot_report, summarize, to_markdown

__all__ = ["BenchError", "check_arguments", "run"]


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
    if not is_file_like(model) and not model.isidentifier():
        raise BenchError(f"{model!r} is neither a model file nor a larq-zoo architecture name")
    if is_file_like(model) and not Path(model).exists():
        raise BenchError(f"no model file {model}")
    if inputs_file is not None and not Path(inputs_file).exists():
        raise BenchError(f"no input file {inputs_file}")
    for text in map(str, input_files):  # [NAME=]FILE.npy: a path may hold an "=" too
        path = text if Path(text).exists() else text.partition("=")[2] or text
        if not Path(path).exists():
            raise BenchError(f"no input file {path}")


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
    summarize(results, workers)
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
        "kernels": kernel_table(kernels, peak["binary_macs_per_s"], threads[0]),
    }
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    markdown = to_markdown(report)
    (out / "bench.md").write_text(markdown)
    say(markdown)
    if plot:
        say(f"plot: {plot_report(report, out / 'bench.png')}")
    return report
