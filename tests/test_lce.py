"""LCE-converted Larq models through bnn-tvm, compared with LCE's interpreter (or Keras where LCE refuses or errs).

Packed and int8 outputs must be equal bit for bit. Float outputs must be equal
too: the output transform uses LCE's own formula and keeps LLVM from fusing it
into an FMA, so there is no rounding difference to tolerate.
"""

import numpy as np
import pytest

import bnn_tvm
from bnn_tvm import zoo
from bnn_tvm.frontend import UnsupportedModelError

C = zoo.ConvCase
CASES = [
    *(C(f"channels{c}", channels_in=c, channels_out=c) for c in (1, 7, 32, 33, 64, 97, 128)),
    C("kernel1x1", kernel=1, padding="valid"),
    C("kernel5x5", kernel=5, size=9),
    C("stride2", strides=2, channels_in=33, channels_out=40),
    C("dilation2", dilation=2, size=9),
    C("valid", padding="valid", channels_out=97),
    C("zero-padding", pad_values=0.0, channels_in=33),
    C("zero-padding-stride2", pad_values=0.0, strides=2, size=10, kernel=5),
    C("zero-padding-dilation2", pad_values=0.0, dilation=2, size=11),
    C("relu", activation="relu", batch_norm=False),
    C("relu6", activation="relu6", batch_norm=False, padding="valid"),
    C("relu-n1-to-1", activation="relu_n1_to_1", batch_norm=False),
    C("int8", output="int8", channels_in=33, channels_out=40),
    C("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2),
    C("packed-handoff-97", output="packed", channels_out=97, kernel=5, size=9),
    C("bmaxpool", output="packed", maxpool=True, channels_out=64),
]


def input_for(case, seed=0):
    dtype = "int8" if case.output == "int8" else "float32"
    return zoo.random_input((1, case.size, case.size, case.channels_in), dtype, seed)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bitexact_with_lce_interpreter(case, build_and_load):
    path = zoo.cached_tflite(case)
    compiled = build_and_load(path)
    interpreter = zoo.lce_interpreter(path)
    for seed in range(2):
        x = input_for(case, seed)
        got, expected = compiled(x), interpreter.predict(x)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def keras_tolerance(got, expected):
    # Keras accumulates the conv in float32 and applies batch-norm unfolded; LCE's (and our) folded
    # integer form differs by float rounding only: relative 1e-5 of the largest magnitude.
    return 1e-5 * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_matches_keras(groups, build_and_load):
    """LCE's x86 interpreter refuses grouped binary convs, so Keras is the reference."""
    case = C(f"groups{groups}", channels_in=128, channels_out=64, groups=groups)
    compiled = build_and_load(zoo.cached_tflite(case))
    model = zoo.keras_model(case)
    x = input_for(case)
    got, expected = compiled(x), model.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=keras_tolerance(got, expected))


def test_zero_padding_overhanging_both_sides_matches_keras(build_and_load):
    """A dilated window wider than the image: LCE's padding correction assumes this never happens and
    is wrong here; bnn-tvm computes the exact correction and matches Keras."""
    case = C("overhang", channels_in=16, channels_out=16, size=3, dilation=2, pad_values=0.0)
    path = zoo.cached_tflite(case)
    x = input_for(case)
    got = build_and_load(path)(x)
    expected = zoo.keras_model(case).predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=keras_tolerance(got, expected))
    assert np.abs(zoo.lce_interpreter(path).predict(x) - expected).max() > 1.0  # LCE's known error


def test_unknown_custom_op_is_named_with_its_index(tmp_path):
    from bnn_tvm.frontend import from_tflite

    data = zoo.cached_tflite(C("bmaxpool", output="packed", maxpool=True, channels_out=64)).read_bytes()
    broken = data.replace(b"LceBMaxPool2d", b"LceBMinPool2d")
    with pytest.raises(UnsupportedModelError) as err:
        from_tflite(broken)
    message = str(err.value)
    assert "LceBMinPool2d" in message and "operator 2" in message and "LceBMaxPool2d" in message


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512"])
@pytest.mark.parametrize("case", [c for c in CASES if c.name in {"channels97", "packed-handoff", "zero-padding",
                                                                 "int8", "bmaxpool"}], ids=lambda c: c.name)
def test_x86_presets_are_bitexact(case, target, build_and_load, tmp_path):
    """The AVX2 (popcount by nibble lookup) and AVX-512 (VPOPCNTD) builds, each run where this CPU has its
    instructions (an AVX-512 .so dies of SIGILL on a CPU without: it is then built, not run, and said so)."""
    path = zoo.cached_tflite(case)
    preset = bnn_tvm.targets.presets()[target]
    if not preset.runs_on_this_cpu():
        bnn_tvm.compile(path, target=target).export_library(tmp_path / "built-only.so")
        missing = sorted(set(preset.cpu_flags) - bnn_tvm.targets.host_cpu_flags())
        pytest.skip(f"built for {target}; not run: this CPU lacks {', '.join(missing)}")
    x = input_for(case)
    np.testing.assert_array_equal(build_and_load(path, target=target)(x), zoo.lce_interpreter(path).predict(x))
