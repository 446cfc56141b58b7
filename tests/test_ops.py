"""Every binary op against its numpy reference, over one list of cases (no TensorFlow needed)."""

import itertools

import numpy as np
import pytest
from tvm import relax

from bnn_tvm import relay_ops as ops
from bnn_tvm.relay_ops.bconv2d import bconv2d_ref

from .helpers import single_op_module

CHANNELS = (1, 7, 32, 33, 64, 97, 128)


@pytest.mark.parametrize("channels", CHANNELS)
def test_quantize_dequantize_match_reference(channels, rng, build_and_load):
    x = rng.standard_normal((2, 3, channels)).astype("float32")
    x[0, 0, 0] = 0.0  # zero packs as +1
    packed = build_and_load(single_op_module(ops.quantize, x))(x)
    np.testing.assert_array_equal(packed, ops.quantize_ref(x))
    unpacked = build_and_load(single_op_module(lambda v: ops.dequantize(v, channels), packed))(packed)
    np.testing.assert_array_equal(unpacked, np.where(x < 0, -1.0, 1.0).astype("float32"))


def test_int8_quantize_uses_zero_point(rng, build_and_load):
    x = rng.integers(-128, 128, size=(4, 40), dtype=np.int8)
    got = build_and_load(single_op_module(lambda v: ops.quantize(v, zero_point=5), x))(x)
    np.testing.assert_array_equal(got, ops.quantize_ref(x, zero_point=5))
    assert ops.quantize_ref(np.array([4, 5, 6], np.int8), zero_point=5)[0] == 0b001


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("pool,stride", [(2, 2), (3, 2), (3, 1)])
def test_bmaxpool2d_matches_reference(padding, pool, stride, rng, build_and_load):
    x = rng.integers(-(2**31), 2**31, size=(1, 7, 6, 3), dtype=np.int64).astype(np.int32)
    attrs = dict(pool_size=[pool, pool], strides=[stride, stride], padding=padding)
    got = build_and_load(single_op_module(lambda v: ops.bmaxpool2d(v, **{**attrs}), x))(x)
    np.testing.assert_array_equal(got, ops.bmaxpool2d_ref(x, attrs))


def bconv_cases():
    geometry = [  # channels_in, channels_out, kernel, stride, dilation
        (c, co, k, s, d)
        for (c, co), k, s, d in itertools.product(
            [(1, 7), (33, 32), (64, 97), (128, 33)], (1, 3, 5), (1, 2), (1, 2)
        )
        if not (k == 1 and d == 2)
    ]
    for i, (c, co, k, s, d) in enumerate(geometry):
        yield dict(channels_in=c, channels_out=co, kernel=k, stride=s, dilation=d,
                   padding=("SAME", "VALID")[i % 2], pad_value=(i // 2) % 2, activation="NONE", out_dtype="float32",
                   formula=("dot", "lce")[(i // 4) % 2])
    for activation, out_dtype, formula in itertools.product(("NONE", "RELU", "RELU_N1_TO_1", "RELU6"),
                                                            ("float32", "int8", "int32"), ("dot", "lce")):
        if out_dtype == "int32" and formula == "lce":
            continue  # packed output has no formula
        yield dict(channels_in=97, channels_out=64, kernel=3, stride=1, dilation=1, padding="SAME", pad_value=1,
                   activation=activation, out_dtype=out_dtype, formula=formula)
    for activation in ("RELU", "RELU6"):  # zero padding with a fused activation: "dot" only (LCE refuses)
        yield dict(channels_in=33, channels_out=40, kernel=3, stride=1, dilation=1, padding="SAME", pad_value=0,
                   activation=activation, out_dtype="float32", formula="dot")
    for groups in (2, 4):
        yield dict(channels_in=128, channels_out=64, kernel=3, stride=1, dilation=1, padding="SAME", pad_value=0,
                   activation="NONE", out_dtype="float32", groups=groups, formula="lce")


def case_id(case):
    return "-".join(f"{k[:3]}{v}" for k, v in case.items())


@pytest.mark.parametrize("case", list(bconv_cases()), ids=case_id)
def test_bconv2d_matches_reference(case, rng, build_and_load):
    groups = case.get("groups", 1)
    x = ops.quantize_ref(rng.standard_normal((1, 11, 10, case["channels_in"])).astype("float32"))
    w = ops.quantize_ref(rng.standard_normal(
        (case["channels_out"], case["kernel"], case["kernel"], case["channels_in"] // groups)).astype("float32"))
    attrs = dict(channels_in=case["channels_in"], strides=[case["stride"]] * 2, dilations=[case["dilation"]] * 2,
                 padding=case["padding"], pad_value=case["pad_value"], activation=case["activation"],
                 out_dtype=case["out_dtype"], out_scale=0.05, out_zero_point=3, output_formula=case["formula"])
    co = case["channels_out"]
    multiplier = rng.uniform(-0.5, 0.5, co).astype("float32")
    bias = rng.uniform(-2, 2, co).astype("float32")
    thresholds = rng.integers(0, case["kernel"] ** 2 * case["channels_in"], co).astype("int32")
    transform = dict(thresholds=relax.const(thresholds)) if case["out_dtype"] == "int32" else dict(
        multiplier=relax.const(multiplier), bias=relax.const(bias))
    call = lambda v: ops.bconv2d(v, relax.const(w), **transform, **attrs)  # noqa: E731
    got = build_and_load(single_op_module(call, x))(x)
    ref = bconv2d_ref(x, w, attrs, multiplier, bias, thresholds)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)  # the reference rounds exactly as the compute does


@pytest.mark.parametrize(
    "change,what",
    [
        (dict(channels_in=40), "channels_in"),
        (dict(strides=[0, 1]), "strides"),
        (dict(padding="FULL"), "padding"),
        (dict(pad_value=2), "pad_values"),
        (dict(activation="TANH"), "activation"),
        (dict(activation="RELU", pad_value=0, padding="SAME", output_formula="lce"), "activation"),
        (dict(output_formula="fma"), "output_formula"),
        (dict(padding="VALID", dilations=[5, 5]), "padding"),
    ],
)
def test_bconv2d_rejects_bad_attributes_naming_them(change, what):
    x = relax.Var("x", relax.TensorType((1, 4, 4, 1), "int32"))
    w = relax.const(np.zeros((8, 3, 3, 1), np.int32))
    m = relax.const(np.ones(8, np.float32))
    attrs = dict(channels_in=32, padding="SAME", pad_value=1, activation="NONE", **{})
    attrs.update(change)
    bb = relax.BlockBuilder()
    with pytest.raises(Exception) as err:
        with bb.function("main", [x]):
            bb.emit(ops.bconv2d(x, w, multiplier=m, bias=m, **attrs))
    assert "relax.bnn.bconv2d" in str(err.value) and what in str(err.value)


def test_dequantize_rejects_wrong_channel_count():
    x = relax.Var("x", relax.TensorType((2, 2), "int32"))
    bb = relax.BlockBuilder()
    with pytest.raises(Exception) as err:
        with bb.function("main", [x]):
            bb.emit(ops.dequantize(x, 100))
    assert "relax.bnn.dequantize" in str(err.value) and "channels" in str(err.value)
