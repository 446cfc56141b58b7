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
from bnn_tvm.bench.engines import ENGINE_LABELS, ENGINES, spawn_worker, worker
from bnn_tvm.bench.report import compare_outputs
from bnn_tvm.runtime import load
from bnn_tvm.signature import random_array

# test_zoo's smallest model; its binary layers are LCE's bit for bit, its float layers TVM's, so bnn-tvm and LCE
# agree to float rounding: test_zoo's 1e-5 of the largest logit.
ARCHITECTURE, SIZE, RTOL = "QuickNetSmall", 64, 1e-5
CONV_CASE = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)
TWO = zoo.TwoInputCase()


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
    assert [line.split("|")[2].strip() for line in table] == [ENGINE_LABELS[e] for e in ENGINES]
    for row in rows.values():
        assert len(row["samples_ms"]) == 1 and len(row["samples_ms"][0]) == 3
        # A median of medians lies among the samples it summarises.
        assert 0 < min(row["samples_ms"][0]) <= row["median_ms"] <= max(row["samples_ms"][0])
    (ratios,) = report["ratios"]
    assert ratios["threads"] == 1 and set(ratios) == {"threads", "lce/bnn-tvm", "tflite/bnn-tvm"}
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
    # The workers ran the same input, the one the report names: random, seed 0, as before inputs could be given.
    with np.load(report["input"]["path"]) as saved:
        (name,) = saved.files
        x = saved[name]
    assert report["input"]["tensors"] == [{"name": name, "shape": [1, SIZE, SIZE, 3], "dtype": "float32", "seed": 0}]
    np.testing.assert_array_equal(x, zoo.random_input(x.shape, seed=0))
    assert f"same input (1x{SIZE}x{SIZE}x3 float32, seed 0)" in (out / "bench.md").read_text()
    assert [o["name"] for o in rows["lce"]["outputs"]] == [o["name"] for o in report["outputs"]]


def keras_binary_macs(model) -> int:
    """Binary MACs of one inference, from the Keras model's binary convolutions' own shapes: every output value of
    a convolution whose input is binarized costs KH * KW * Cin / groups MACs."""
    import larq as lq

    total = 0
    for layer in model.layers:
        if isinstance(layer, lq.layers.QuantConv2D) and layer.input_quantizer is not None:
            batch, height, width, channels_out = layer.output.shape
            kernel_height, kernel_width, channels_in_per_group, _ = layer.kernel.shape
            total += (batch or 1) * height * width * channels_out * kernel_height * kernel_width * channels_in_per_group
    return total


def test_per_kernel_breakdown(zoo_bench):
    _, report, _ = zoo_bench
    kernels = report["kernels"]
    binary = [row for row in kernels["rows"] if row["binary_macs"]]
    assert binary and all("bconv2d" in row["kernel"] or "bdense" in row["kernel"] for row in binary)
    # The kernels' MACs are those of the model's layers (QuickNetSmall's binary layers are 32-channel multiples).
    keras = zoo.keras_logits_model(zoo.ZooCase(f"{ARCHITECTURE}-{SIZE}-logits", ARCHITECTURE, size=SIZE))
    assert sum(row["binary_macs"] for row in binary) == keras_binary_macs(keras)
    # On one thread, against one core's popcount peak. The peak is bench_peak.c's XOR + POPCOUNT + ADD register loop,
    # not the core's limit: one small kernel, whose operands stay in L1, ran at 1.13x it (AMD EPYC Zen 5, other
    # tenants busy), so a kernel is bounded at 2x; all binary kernels together, loads and stores included, cannot
    # beat the loop (0.36-0.58 of it there).
    assert kernels["threads"] == 1
    assert all(0 < row["peak_fraction"] <= 2 for row in binary), [row["peak_fraction"] for row in binary]
    assert 0 < kernels["binary_peak_fraction"] <= 1
    # The kernels run inside the model: their time per inference is at most the whole model's, timed in the same
    # worker process (the hook's own overhead falls outside the kernels' timings). Against the slowest of the
    # model's 3 timed calls, with 1.5x for other tenants: on a 2-core machine at load 6 one preemption of ~5 ms
    # lands in either measurement (kernels 0.27-3.3 ms, model calls 0.33-5.3 ms there); a unit slip does not pass.
    bnn = next(row for row in report["results"] if row["engine"] == "bnn-tvm" and row["threads"] == 1)
    assert 0 < kernels["total_ms"] <= 1.5 * max(bnn["samples_ms"][0]), (kernels["total_ms"], bnn["samples_ms"])


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
    # A one-input model's .npy still feeds a worker (as tuning's whole-model comparison calls it).
    with np.load(report["input"]["path"]) as saved:
        np.save(tmp_path / "x.npy", saved[saved.files[0]])
    again = spawn_worker("bnn-tvm", report["library"], tmp_path / "x.npy", 1, 2, 1, tmp_path / "again.json",
                          tmp_path / "again.npz", False)
    assert len(again["samples_ms"]) == 2
    rows = compare_outputs(tmp_path / "workers" / "bnn-tvm-1.npz", tmp_path / "again.npz")
    assert [row["max_abs_diff_vs_bnn_tvm"] for row in rows] == [0]


@pytest.fixture(scope="module")
def two_input_bench(tmp_path_factory):
    """The two-input model against LCE: image given in an .npz, features random (seed 5, as input 0 of 2)."""
    folder = tmp_path_factory.mktemp("bench-two")
    image = zoo.random_input((1, TWO.size, TWO.size, 3), seed=11)
    np.savez(folder / "given.npz", image=image)
    said = []
    report = bench.run(str(zoo.cached_tflite(TWO)), against=["lce"], runs=2, repeat=1, warmup=1, out=folder / "out",
                       inputs_file=folder / "given.npz", seed=5, say=said.append)
    arrays = {"features": random_array((1, TWO.size // 2, TWO.size // 2, TWO.channels), "float32", 5), "image": image}
    return folder, report, said, arrays


def test_two_inputs_every_output_compared(two_input_bench):
    """Both outputs, by name, within test_zoo's float32 rounding of each output's scale (the binary convolution is
    bit-exact with LCE; the float stem convolution, the add and the dense layer round as XNNPACK's do not)."""
    folder, report, _, _ = two_input_bench
    assert [o["name"] for o in report["outputs"]] == ["logits", "refined"]
    lce = {row["engine"]: row for row in report["results"]}["lce"]
    assert [(o["name"], o["engine_name"], o["shape"]) for o in lce["outputs"]] == [
        ("logits", "logits", [1, 10]), ("refined", "refined", [1, 8, 8, 32])]
    for output in lce["outputs"]:
        assert output["max_abs_diff_vs_bnn_tvm"] <= RTOL * max(1.0, output["max_abs_output"]), output
    assert lce["max_abs_diff_vs_bnn_tvm"] == max(o["max_abs_diff_vs_bnn_tvm"] for o in lce["outputs"])
    row = next(line for line in (folder / "out" / "bench.md").read_text().splitlines() if "| LCE |" in line)
    assert "| logits " in row and "; refined " in row, row


def test_two_inputs_fed_as_given(two_input_bench):
    """Every worker got both inputs: the given image and the random features, in each engine's own order."""
    folder, report, said, arrays = two_input_bench
    assert report["input"]["tensors"] == [
        {"name": "features", "shape": [1, 8, 8, 32], "dtype": "float32", "seed": 5},
        {"name": "image", "shape": [1, 16, 16, 3], "dtype": "float32", "source": f"{folder / 'given.npz'}[image]"}]
    assert "random input 'features' float32 [1,8,8,32] (seed 5)" in said
    assert f"same inputs (features 1x8x8x32 float32, seed 5; image 1x16x16x3 float32, from {folder / 'given.npz'}" \
           f"[image])" in (folder / "out" / "bench.md").read_text()
    with np.load(report["input"]["path"]) as saved:
        assert saved.files == ["features", "image"]
        for name, array in arrays.items():
            np.testing.assert_array_equal(saved[name], array)
    workers = folder / "out" / "workers"
    expected = load(report["library"])(**arrays)
    lce = zoo.lce_interpreter(zoo.cached_tflite(TWO)).predict([arrays["features"], arrays["image"]])
    with np.load(workers / "bnn-tvm-1.npz") as ours, np.load(workers / "lce-1.npz") as theirs:
        assert ours.files == theirs.files == ["logits", "refined"]
        for i, name in enumerate(ours.files):
            np.testing.assert_array_equal(ours[name], expected[i])
            np.testing.assert_array_equal(theirs[name], lce[i])
    assert {"fused_conv2d_add", "fused_bnn_bconv2d_add1"} <= {row["kernel"] for row in report["kernels"]["rows"]}


def test_tflite_worker_matches_inputs_by_name(two_input_bench, tmp_path):
    """The stock-converted float model is another file: its inputs are matched by signature key, here given in
    the other order (by position, the image would go to the features' tensor)."""
    folder, report, _, arrays = two_input_bench
    np.savez(tmp_path / "reversed.npz", image=arrays["image"], features=arrays["features"])
    result = worker("tflite", zoo.cached_stock_tflite(TWO), tmp_path / "reversed.npz", 1, 1, 0,
                    tmp_path / "tflite.npz")
    assert len(result["samples_ms"]) == 1
    rows = compare_outputs(folder / "out" / "workers" / "bnn-tvm-1.npz", tmp_path / "tflite.npz")
    assert [(row["name"], row["engine_name"]) for row in rows] == [("logits", "logits"), ("refined", "refined")]
    for row in rows:  # float drift only (6e-7 of the largest output here); a swap would not even run
        assert row["max_abs_diff_vs_bnn_tvm"] <= 10 * RTOL * max(1.0, row["max_abs_output"]), row


def test_missing_input_files_are_named_before_compiling(tmp_path):
    for kwargs, path in [(dict(inputs_file=tmp_path / "none.npz"), tmp_path / "none.npz"),
                         (dict(input_files=[f"image={tmp_path / 'none.npy'}"]), tmp_path / "none.npy")]:
        with pytest.raises(bench.BenchError, match=f"^no input file {path}$"):
            bench.check_arguments("QuickNet", [1], ["lce"], 1, 1, **kwargs)


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
