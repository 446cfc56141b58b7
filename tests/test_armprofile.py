"""bnn-tvm profile: aarch64 instruction counts on the emulated board repeat exactly, agree with the reference
instrument (../shared/armcount), attribute binary MACs right, see every thread, and count TFLite beside it.

One small model (QuickNetSmall at 64x64, as the board tests use), profiled three times (with the float
reference, again without, with 4 threads) and once by armcount: each is two emulated runs of ~25 s.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bnn_tvm
from bnn_tvm import armprofile, board, zoo

CASE = zoo.ZooCase("QuickNetSmall-64-logits", "QuickNetSmall", size=64)
ARMCOUNT = Path(__file__).resolve().parents[2] / "shared" / "armcount"


@pytest.fixture(scope="module")
def rpi4_so(tmp_path_factory):
    so = tmp_path_factory.mktemp("armprofile") / "quicknetsmall-rpi4.so"
    bnn_tvm.compile(zoo.cached_tflite(CASE, builder=zoo.keras_logits_model), target="rpi4").export_library(so)
    return so


@pytest.fixture(scope="module")
def profiled(rpi4_so):
    """The profile with the float reference: the stock-converted model under TFLite with XNNPACK."""
    return armprofile.profile(rpi4_so, "rpi4", reference=zoo.cached_stock_tflite(CASE, builder=zoo.keras_logits_model))


def _instructions(profile):
    return {row.name: row.instructions for row in profile.kernels}


def test_kernel_counts_repeat_exactly(rpi4_so, profiled):
    again = armprofile.profile(rpi4_so, "rpi4")
    assert _instructions(again) == _instructions(profiled)
    assert all(count == int(count) for count in _instructions(profiled).values())  # whole inferences, nothing else


def test_report_has_every_kernel_and_labels_estimates(profiled):
    names = [row.name for row in profiled.kernels]
    assert any("bconv2d" in name for name in names) and "matmul" in names
    assert sum(row.calls for row in profiled.kernels) > 20
    report = profiled.report()
    assert "ESTIMATES" in report and "estimated latency at 1.5 GHz" in report and "(an estimate" in report
    # The kernels are nearly all of an inference; the VM, libc and Python the rest.
    assert sum(row.instructions for row in profiled.kernels) > 0.9 * profiled.instructions
    # Cycles: every row has a positive estimate, and the Cortex-A72 retires at most 3 instructions per cycle.
    assert all(0 < row.cycles and row.instructions / row.cycles <= 3 for row in profiled.kernels + profiled.overhead
               if row.instructions > 1000)


def test_binary_kernels_at_every_depth_do_many_macs_per_instruction(profiled):
    """Cin 32 and 64 share 128-bit chunks among pixels, and lanes are summed and transformed in vectors:
    16.0 and 25.2 binary MACs per instruction at this size (6.5 and 13.1 when each pixel padded its chunks and
    the epilogue was scalar); Cin 256 and 512 about 32 (30)."""
    rates = {row.name: row.binary_macs / row.instructions for row in profiled.kernels if row.binary_macs}
    assert len(rates) == 8 and min(rates.values()) > 15, rates


def test_binary_convolutions_group_by_input_depth_as_lces_table(profiled):
    """benchmarks/arm.py's grouping: per input depth the layers and MACs of the model's binary convolutions,
    one row per depth beside LCE's same-instrument figures for QuickNetSmall (same depths and layer counts)."""
    import larq as lq

    from benchmarks.arm import bconv_groups, bconv_rows
    from benchmarks.lce_arm import LCE_BCONVS

    expected = {}
    for layer in zoo.keras_logits_model(CASE).layers:
        if isinstance(layer, lq.layers.QuantConv2D) and layer.input_quantizer is not None:
            _, out_h, out_w, channels_out = layer.output.shape
            kernel_h, kernel_w, channels_in, _ = layer.kernel.shape
            group = expected.setdefault(channels_in, [0, 0])
            group[0] += 1
            group[1] += out_h * out_w * channels_out * kernel_h * kernel_w * channels_in
    groups = bconv_groups(profiled)
    assert {cin: [g["layers"], g["binary_macs"]] for cin, g in groups.items()} == expected
    assert {cin: g.layers for cin, g in LCE_BCONVS["QuickNetSmall"].items()} == {c: e[0] for c, e in expected.items()}
    assert len(bconv_rows("QuickNetSmall", profiled)) == len(expected)


def test_binary_macs_match_the_keras_model(profiled):
    """The MACs the profile attributes to binary kernels are those of the model's binary convolutions."""
    import larq as lq

    model = zoo.keras_logits_model(CASE)
    expected = 0
    for layer in model.layers:
        if isinstance(layer, lq.layers.QuantConv2D) and layer.input_quantizer is not None:
            _, out_h, out_w, channels_out = layer.output.shape
            kernel_h, kernel_w, channels_in, _ = layer.kernel.shape
            expected += out_h * out_w * channels_out * kernel_h * kernel_w * channels_in
    assert sum(row.binary_macs for row in profiled.kernels) == expected


@pytest.mark.skipif(not ARMCOUNT.is_dir(), reason="the reference instrument ../shared/armcount is not beside the repo")
def test_agrees_with_the_reference_instrument(rpi4_so, profiled, tmp_path):
    """../shared/armcount (its own plugin, guest driver and attribution) counts the same within 1%."""
    folder = board.build_emulated_board()
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(tmp_path / "libarmcount.so"),
                    str(ARMCOUNT / "plugin" / "armcount.c"), "-lpthread"], check=True)
    env = {**os.environ, "ARMCOUNT_WORK": str(tmp_path), "SYSROOT": str(folder / "sysroot"),
           "SITE": str(folder / "site")}
    done = subprocess.run([str(ARMCOUNT / "measure.sh"), "tvm", str(rpi4_so), "ref"], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = json.loads((tmp_path / "runs" / "ref.json").read_text())
    assert profiled.instructions == pytest.approx(reference["total"], rel=0.01)
    theirs = {f["symbol"]: f["insns"] for f in reference["functions"] if Path(f["module"]).name == rpi4_so.name}
    for name, count in _instructions(profiled).items():
        if count > 0.01 * profiled.instructions:
            assert count == pytest.approx(theirs[name], rel=0.01), name


def test_four_threads_split_the_binary_kernels(rpi4_so):
    """A Pi 4's 4 threads, more than this machine's CPUs: TVM would otherwise size its pool by the host's."""
    four = armprofile.profile(rpi4_so, "rpi4", threads=4)
    for row in four.kernels:
        if row.binary_macs:  # a layer of 2 rows keeps 2 threads busy, a larger one more
            busy = [count for count in row.thread_instructions if count]
            assert len(busy) >= 2 and max(busy) < 0.7 * row.instructions, row
    assert len(four.kernel_instructions_per_thread()) == 4
    assert "instructions per guest thread" in four.report()


def test_float_reference_under_tflite(profiled):
    """The float model under TFLite with XNNPACK on the same board, counted the same way."""
    reference = profiled.reference
    assert reference.instructions > 2 * profiled.instructions  # float MACs cost more than binary ones
    assert max(reference.overhead, key=lambda row: row.instructions).name == "(TFLite with XNNPACK)"
    assert "fewer instructions" in profiled.report()


def test_cli_errors_name_the_problem(tmp_path, rpi4_so):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bnn_tvm.cli", "profile", *args], capture_output=True,
                              text=True, timeout=600)

    x86_so = armprofile.plugin_library()  # a shared library, for x86-64
    for args, message in [((str(tmp_path / "missing.so"),), "no such file"),
                          ((str(x86_so),), "not an aarch64 shared library"),
                          ((str(rpi4_so), "--target", "host"), "not an emulated aarch64 preset"),
                          ((str(rpi4_so), "--threads", "0"), "--threads must be at least 1")]:
        done = cli(*args)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
