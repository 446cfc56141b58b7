"""bnn-tvm profile: aarch64 instruction counts on the emulated board repeat exactly, agree with the reference
instrument (../shared/armcount), attribute binary MACs right, see every thread, and count TFLite beside it.

One small model (QuickNetSmall at 64x64, as the board tests use), profiled three times (with the float
reference, again without, with 4 threads) and once by armcount: each is two emulated runs of ~25 s. The
two-input model (``zoo.TwoInputCase``) once with its float reference, fed a given input and a random one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bnn_tvm
from bnn_tvm import armprofile, board, zoo
from bnn_tvm.armprofile.emulator import plugin_library
from bnn_tvm.signature import InputError, random_array

from .test_zoo import RTOL

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


def test_kernel_counts_repeat_exactly(rpi4_so, profiled, tmp_path):
    """Again, fed as an unnamed ``--input x.npy`` the array the first profile drew at random: the same counts,
    the same outputs."""
    (random,) = profiled.inputs
    assert random["seed"] == 0 and random["shape"] == [1, 64, 64, 3] and "source" not in random
    np.save(tmp_path / "x.npy", random_array(random["shape"], random["dtype"], 0))
    again = armprofile.profile(rpi4_so, "rpi4", input_files=[str(tmp_path / "x.npy")])
    assert again.inputs == [{**{k: v for k, v in random.items() if k != "seed"}, "source": str(tmp_path / "x.npy")}]
    assert _instructions(again) == _instructions(profiled)
    assert all(count == int(count) for count in _instructions(profiled).values())  # whole inferences, nothing else
    assert list(again.outputs) == list(profiled.outputs) and len(again.outputs) == 1
    np.testing.assert_array_equal(*(p.outputs[name] for p in (again, profiled) for name in p.outputs))


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

    x86_so = plugin_library()  # a shared library, for x86-64
    for args, message in [((str(tmp_path / "missing.so"),), "no such file"),
                          ((str(x86_so),), "not an aarch64 shared library"),
                          ((str(rpi4_so), "--target", "host"), "not an emulated aarch64 preset"),
                          ((str(rpi4_so), "--threads", "0"), "--threads must be at least 1")]:
        done = cli(*args)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------- several inputs

TWO = zoo.TwoInputCase()


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    """The two-input model built for rpi4 and for the host, and a given image."""
    folder = tmp_path_factory.mktemp("armprofile-two")
    for target in ("rpi4", "host"):
        bnn_tvm.compile(zoo.cached_tflite(TWO), target=target).export_library(folder / f"two-{target}.so")
    np.save(folder / "image.npy", zoo.random_input((1, TWO.size, TWO.size, 3), seed=1))
    return folder


def test_every_input_is_fed_and_the_reference_gets_the_same(two_inputs):
    """image given by name, features random (seed 3: input 0's): the board's outputs are the host's for those
    inputs, so both were fed; the float reference (its own file, inputs matched by signature key) too."""
    folder = two_inputs
    image = np.load(folder / "image.npy")
    result = armprofile.profile(folder / "two-rpi4.so", "rpi4", input_files=[f"image={folder / 'image.npy'}"],
                                seed=3, reference=zoo.cached_stock_tflite(TWO))
    assert result.inputs == [{"name": "features", "shape": [1, 8, 8, 32], "dtype": "float32", "seed": 3},
                             {"name": "image", "shape": [1, 16, 16, 3], "dtype": "float32",
                              "source": str(folder / "image.npy")}]
    assert f"inputs: 'features' float32 [1,8,8,32] random (seed 3); 'image' float32 [1,16,16,3] from " \
           f"{folder / 'image.npy'}" in result.report()
    names = {row.name for row in result.kernels}
    assert {"fused_conv2d_add", "fused_bnn_bconv2d_add1", "matmul"} <= names  # the image's path and the add's
    host = bnn_tvm.load(folder / "two-host.so")(features=random_array((1, 8, 8, 32), "float32", 3), image=image)
    for engine in (result, result.reference):
        assert list(engine.outputs) == ["logits", "refined"]
        for name, expected in zip(["logits", "refined"], host, strict=True):
            # bnn-tvm on the board: within float32 rounding of the host's (bit-exact here); the float model under
            # TFLite: its binary convolution is a float one of +-1, within rounding too (6e-7 of the largest
            # output here). A tie at the binarization would flip a sign and show as a large difference.
            scale = max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(engine.outputs[name], expected, rtol=0,
                                       atol=(RTOL if engine is result else 10 * RTOL) * scale)
    assert result.reference.instructions > 0 and "same board, counter and inputs" in result.report()


def test_inputs_that_do_not_fit_are_one_line_before_any_counted_run(two_inputs, tmp_path):
    """Checked on the host against the signature read from the .so (cached), as `bnn-tvm run` checks them."""
    so = two_inputs / "two-rpi4.so"
    np.save(tmp_path / "small.npy", np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(InputError) as error:
        armprofile.profile(so, "rpi4", input_files=[f"image={tmp_path / 'small.npy'}"])
    assert str(error.value) == f"{tmp_path / 'small.npy'}: input 'image' is float32 [1,8,8,3], the model takes " \
                               "float32 [1,16,16,3]"
    # A reference is checked before the counted runs too: its inputs against the model's, and its ops.
    one_input = zoo.cached_stock_tflite(CASE, builder=zoo.keras_logits_model)
    with pytest.raises(armprofile.ProfileError) as error:
        armprofile.profile(so, "rpi4", reference=one_input)
    assert str(error.value) == f"{one_input}: the reference takes 1 input ('input_1'), the model 2 ('features', " \
                               "'image')"
    lce_made = zoo.cached_tflite(TWO)
    with pytest.raises(armprofile.ProfileError) as error:
        armprofile.profile(so, "rpi4", reference=lce_made)
    assert str(error.value) == f"{lce_made}: an LCE-converted model (LceBconv2d, LceQuantize): the reference runs " \
                               "under TFLite, which has no LCE kernels; give the float model of the stock TFLite " \
                               "converter"


def test_a_library_without_a_signature_is_one_line(tmp_path):
    """A .so that bnn_tvm.compile did not make: the guest says so; the host reports that one line."""
    import tvm
    from tvm import relax

    from bnn_tvm.targets import presets

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with builder.function("main", [x]):
        builder.emit_func_output(builder.emit(relax.op.add(x, x)))  # a kernel: the library is built for aarch64
    preset = presets()["rpi4"]
    tvm.compile(builder.get(), preset.target()).export_library(
        tmp_path / "plain.so", fcompile=tvm.support.cc.cross_compiler(preset.cross_compiler))
    with pytest.raises(armprofile.ProfileError) as error:
        armprofile.profile(tmp_path / "plain.so", "rpi4")
    assert str(error.value) == f"{tmp_path / 'plain.so'}: has no recorded signature (bnn_signature): not a library " \
                               "made by bnn_tvm.compile"
