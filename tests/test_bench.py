"""`bnn-tvm bench` run as a user would: each engine in its own process, tables, JSON, plot, the popcount peak.

No assertion on speed (timings on shared CI machines are noise): the tests check that the measurements were
made the way the report says, and that the report is consistent.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bnn_tvm import bench, zoo

# test_zoo's smallest model; its binary layers are LCE's bit for bit, its float layers TVM's, so bnn-tvm and LCE
# agree to float rounding: test_zoo's 1e-5 of the largest logit.
ARCHITECTURE, SIZE, RTOL = "QuickNetSmall", 64, 1e-5
CONV_CASE = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)


def bnn_tvm(*args):
    return subprocess.run([sys.executable, "-m", "bnn_tvm.cli", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def zoo_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = bnn_tvm("bench", ARCHITECTURE, "--size", str(SIZE), "--threads", "1", "--runs", "3", "--repeat", "1",
                   "--against", "lce", "tflite", "--out", str(out), "--plot")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "bench.json").read_text()), done.stdout


def test_one_row_per_engine_and_thread_count(zoo_bench):
    out, report, stdout = zoo_bench
    rows = {(row["engine"], row["threads"]): row for row in report["results"]}
    assert sorted(rows) == [("bnn-tvm", 1), ("lce", 1), ("tflite", 1)]
    markdown = (out / "bench.md").read_text()
    assert markdown in stdout
    table = [line for line in markdown.splitlines() if line.startswith("| 1 |")]
    assert [line.split("|")[2].strip() for line in table] == [bench.ENGINE_LABELS[e] for e in bench.ENGINES]
    for row in rows.values():
        assert len(row["samples_ms"]) == 1 and len(row["samples_ms"][0]) == 3
        assert row["median_ms"] > 0 and row["median_ms"] == np.median(row["process_medians_ms"])
    ours = rows["bnn-tvm", 1]["median_ms"]
    (ratios,) = report["ratios"]
    assert ratios["threads"] == 1
    assert ratios["lce/bnn-tvm"] == pytest.approx(rows["lce", 1]["median_ms"] / ours, rel=1e-12)
    assert ratios["tflite/bnn-tvm"] == pytest.approx(rows["tflite", 1]["median_ms"] / ours, rel=1e-12)
    assert report["machine"]["cpu"] and report["machine"]["physical_cores"] >= 1


def test_each_engine_ran_in_its_own_process(zoo_bench):
    _, report, _ = zoo_bench
    pids = [pid for row in report["results"] for pid in row["pids"]]
    assert len(pids) == 3 and len(set(pids)) == 3
    assert os.getpid() not in pids and report["pid"] not in pids


def test_engines_agree_on_the_output(zoo_bench):
    out, report, _ = zoo_bench
    rows = {row["engine"]: row for row in report["results"]}
    assert rows["lce"]["max_abs_diff_vs_bnn_tvm"] <= RTOL * rows["lce"]["max_abs_output"]
    assert rows["tflite"]["max_abs_diff_vs_bnn_tvm"] is not None  # reported, not judged: float drift
    # The workers ran the same input, the one the report names.
    x = np.load(report["input"]["path"])
    assert list(x.shape) == [1, SIZE, SIZE, 3] == report["input"]["shape"]
    np.testing.assert_array_equal(x, zoo.random_input(x.shape, seed=0))


def test_per_kernel_breakdown(zoo_bench):
    _, report, _ = zoo_bench
    kernels = report["kernels"]
    binary = [row for row in kernels["rows"] if row["binary_macs"]]
    assert binary and all("bconv2d" in row["kernel"] or "bdense" in row["kernel"] for row in binary)
    assert all(row["binary_macs_per_s"] > 0 and row["peak_fraction"] > 0 for row in binary)
    assert kernels["total_ms"] == pytest.approx(sum(row["ms"] for row in kernels["rows"]))


def test_popcount_peak_uses_the_machine_instruction_set(zoo_bench):
    _, report, _ = zoo_bench
    peak, flags = report["peak"], set(report["machine"]["flags"])
    assert peak["binary_macs_per_s"] > 0 and peak["path"] in peak["paths"]
    has_vpopcntq = bool(flags & {"avx512_vpopcntdq", "avx512vpopcntdq"})
    assert ("avx512-vpopcntq" in peak["paths"]) == has_vpopcntq
    assert ("avx2-pshufb" in peak["paths"]) == ("avx2" in flags)
    assert any(path.startswith("scalar") for path in peak["paths"])


def test_plot_is_a_png(zoo_bench):
    out, _, _ = zoo_bench
    png = (out / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000


def test_lce_tflite_skips_tflite_and_is_bit_exact(tmp_path):
    """An LCE-converted .tflite has no float equivalent to give TFLite; LCE's output is bnn-tvm's, bit for bit."""
    done = bnn_tvm("bench", str(zoo.cached_tflite(CONV_CASE)), "--runs", "2", "--repeat", "1", "--warmup", "1",
                   "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping tflite: an LCE-converted .tflite has no float equivalent" in done.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [row["engine"] for row in report["results"]] == ["bnn-tvm", "lce"]
    assert report["results"][1]["max_abs_diff_vs_bnn_tvm"] == 0
    assert set(report["skipped"]) == {"tflite"}


@pytest.mark.parametrize("args, message", [
    (["QuickNet", "--against", "onnxruntime"], "unknown engine 'onnxruntime'"),
    (["QuickNet", "--threads", "1", "0"], "--threads must be at least 1, got 0"),
    (["QuickNet", "--runs", "0"], "--runs must be at least 1, got 0"),
    (["missing.tflite"], "no model file missing.tflite"),
])
def test_bad_arguments(args, message, capsys):
    """Checked before anything is imported or compiled (in this process, to keep it quick; the CLI's exit code
    is main's return value, checked from outside by test_bad_arguments_from_the_shell)."""
    from bnn_tvm.cli import main

    assert main(["bench", *args]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"error: {message}") and len(stderr.strip().splitlines()) == 1


def test_bad_arguments_from_the_shell():
    done = bnn_tvm("bench", "missing.tflite", "--threads", "1")
    assert done.returncode == 2 and done.stderr == "error: no model file missing.tflite\n"


def test_lce_arm_reference_table_is_consistent():
    """The per-depth rows of LCE's same-instrument figures add up to each model's binary-convolution cycles
    (within the reference's stated 1-3% per-op rounding), and their MACs per cycle are the reference's."""
    from benchmarks.lce_arm import LCE_BCONVS, LCE_MODELS

    for name, model in LCE_MODELS.items():
        assert sum(group.cycles for group in LCE_BCONVS[name].values()) == pytest.approx(model.bconv_cycles, rel=0.03)
        assert model.bconv_cycles + model.non_bconv_cycles == pytest.approx(model.cycles, rel=0.03), name
    assert LCE_BCONVS["QuickNet"][256].macs_per_cycle == pytest.approx(76.91, abs=0.05)
