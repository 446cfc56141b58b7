"""``bnn-tvm bench``'s report: outputs compared with bnn-tvm's, the per-kernel table against the popcount peak, the
Markdown tables and the plot."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from .engines import ENGINE_LABELS
from .peak import CPU_FLAGS


def summarize(results: dict, workers: Path) -> None:
    """Complete each row of ``results`` ({(engine, threads): row of the workers' samples}) in place: the median of
    each process's samples, their median, the ratio to bnn-tvm's at the same thread count, and the outputs
    (``workers``/ENGINE-THREADS.npz) compared with bnn-tvm's."""
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


def kernel_table(rows: list[dict], peak: float, threads: int) -> dict:
    """``profiler.per_kernel``'s rows (measured on ``threads`` threads) completed with each kernel's share of the
    kernels' time and, for binary kernels, its rate against ``peak`` (binary MACs per second of one core):
    ``binary_macs / (ms / 1e3)`` and that over ``peak``; and the same over all binary kernels together."""
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
