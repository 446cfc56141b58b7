"""Graph passes on small graphs: each rewrites what it should, leaves the rest, and the compiled result
equals the unoptimized one (bit for bit, except the float reassociation of FoldOutputTransform)."""

import numpy as np
import pytest
import tvm
from tvm import relax

from bnn_tvm import relay_ops as ops
from bnn_tvm.relay_ops.bitpack import quantize_ref
from bnn_tvm.transform import optimize
from bnn_tvm.transform.binary_maxpool import MaxPoolBeforeQuantize
from bnn_tvm.transform.bitpacked_output import BitpackedOutput
from bnn_tvm.transform.cancel_quantize import CancelQuantizePairs
from bnn_tvm.transform.fold_output_transform import FoldOutputTransform
from bnn_tvm.transform.fold_scale_into_weights import FoldScaleIntoWeights

SIZE, CHANNELS_IN, CHANNELS_OUT = 6, 40, 36


def _module(build, x_shape=(1, SIZE, SIZE, CHANNELS_IN)):
    """main(x) whose body ``build(bb, x)`` emits; returns the module."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(x_shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def _filter(rng, channels_out=CHANNELS_OUT, kernel=3, channels_in=CHANNELS_IN):
    return relax.const(quantize_ref(rng.standard_normal((channels_out, kernel, kernel, channels_in)).astype("float32")))


def _bconv(bb, x, rng, multiplier=None, bias=None, **attrs):
    packed = bb.emit(ops.quantize(x))
    multiplier = np.ones(CHANNELS_OUT, "float32") if multiplier is None else multiplier
    bias = np.zeros(CHANNELS_OUT, "float32") if bias is None else bias
    attrs = {"padding": "SAME", "pad_value": 1, **attrs}
    return bb.emit(ops.bconv2d(packed, _filter(rng), channels_in=CHANNELS_IN, multiplier=relax.const(multiplier),
                               bias=relax.const(bias), **attrs))


def _ops(mod) -> list[str]:
    names = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: names.append(e.op.name) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)
        else None)
    return names


def _bconv_attrs(mod) -> list[dict]:
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.bnn.bconv2d":
            found.append({k: e.attrs[k] for k in ("activation", "out_dtype")})

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _run_both(build_and_load, mod, x):
    plain = build_and_load(mod, graph_passes=False)(x)
    optimized = build_and_load(mod)(x)
    return plain, optimized


@pytest.fixture
def x(rng):
    return rng.standard_normal((1, SIZE, SIZE, CHANNELS_IN)).astype("float32")


# ---------------------------------------------------------------- FoldOutputTransform


def _conv_relu_batchnorm(rng, scale, shift, formula):
    def build(bb, x):
        y = bb.emit(relax.op.nn.relu(_bconv(bb, x, rng, output_formula=formula)))
        y = bb.emit(relax.op.multiply(y, relax.const(scale)))
        return relax.op.add(y, relax.const(shift))

    return build


@pytest.mark.parametrize("formula", ["dot", "lce"])
def test_fold_relu_and_batch_norm_into_bconv(build_and_load, rng, x, formula):
    scale = rng.uniform(0.5, 2.0, CHANNELS_OUT).astype("float32")
    shift = rng.standard_normal(CHANNELS_OUT).astype("float32")
    mod = _module(_conv_relu_batchnorm(rng, scale, shift, formula))
    folded = FoldOutputTransform()(mod)
    folded = relax.transform.DeadCodeElimination()(folded)
    assert _ops(folded).count("relax.bnn.bconv2d") == 1
    assert not {"relax.nn.relu", "relax.multiply", "relax.add"} & set(_ops(folded))
    assert _bconv_attrs(folded) == [{"activation": "RELU", "out_dtype": "float32"}]
    plain, optimized = _run_both(build_and_load, mod, x)
    eps = np.finfo(np.float32).eps
    if formula == "dot":
        # relu(dot) * s + t, rounded at the output's scale: one rounding apart at most (LLVM may contract the
        # unfolded epilogue's multiply-add into an FMA; the op rounds the product first).
        np.testing.assert_allclose(optimized, plain, rtol=0, atol=eps * np.abs(plain).max())
        return
    # LCE's formula folds to 2 * accum * (-s) + (t + K * s): its terms are as large as K * s + |t|, and each
    # rounding costs up to half an ulp of them.
    depth = 9 * CHANNELS_IN
    scale_of_terms = depth * np.abs(scale).max() + np.abs(shift).max()
    np.testing.assert_allclose(optimized, plain, rtol=0, atol=2 * eps * scale_of_terms)


def test_activation_after_batch_norm_is_not_fused(rng):
    scale = rng.uniform(0.5, 2.0, CHANNELS_OUT).astype("float32")
    shift = rng.standard_normal(CHANNELS_OUT).astype("float32")

    def build(bb, x):
        y = bb.emit(relax.op.multiply(_bconv(bb, x, rng), relax.const(scale)))
        y = bb.emit(relax.op.add(y, relax.const(shift)))
        return relax.op.nn.relu(y)  # relu(dot * s + t) is not relu(dot) * s + t

    folded = relax.transform.DeadCodeElimination()(FoldOutputTransform()(_module(build)))
    assert _bconv_attrs(folded) == [{"activation": "NONE", "out_dtype": "float32"}]
    assert "relax.nn.relu" in _ops(folded)
    assert "relax.multiply" not in _ops(folded)


def test_output_read_twice_is_not_folded(rng):
    def build(bb, x):
        y = _bconv(bb, x, rng)
        scaled = bb.emit(relax.op.multiply(y, relax.const(np.float32(2.0))))
        return relax.op.add(scaled, y)

    folded = FoldOutputTransform()(_module(build))
    assert "relax.multiply" in _ops(folded)


@pytest.mark.parametrize("formula", ["dot", "lce"])
def test_activation_with_zero_padding_fuses_only_with_the_dot_formula(build_and_load, rng, x, formula):
    def build(bb, x):
        return relax.op.nn.relu(_bconv(bb, x, rng, pad_value=0, output_formula=formula))

    mod = _module(build)
    folded = FoldOutputTransform()(mod)
    assert ("relax.nn.relu" in _ops(folded)) == (formula == "lce")
    plain, optimized = _run_both(build_and_load, mod, x)
    np.testing.assert_array_equal(optimized, plain)


# ---------------------------------------------------------------- FoldScaleIntoWeights


FLOAT_LAYERS = {
    "conv2d": lambda x, rng: relax.op.nn.conv2d(
        x, relax.const(rng.standard_normal((3, 3, CHANNELS_IN, 24)).astype("float32")), padding=(1, 1, 1, 1),
        data_layout="NHWC", kernel_layout="HWIO"),
    "depthwise": lambda x, rng: relax.op.nn.conv2d(
        x, relax.const(rng.standard_normal((3, 3, CHANNELS_IN, 1)).astype("float32")), groups=CHANNELS_IN,
        data_layout="NHWC", kernel_layout="HWOI"),
    "matmul": lambda x, rng: relax.op.matmul(
        relax.op.reshape(x, (1, -1)), relax.const(rng.standard_normal((SIZE * SIZE * CHANNELS_IN, 24)).astype("float32"))),
}


@pytest.mark.parametrize("layer", FLOAT_LAYERS)
def test_scale_folds_into_float_weights(build_and_load, rng, x, layer):
    def build(bb, x):
        y = bb.emit(FLOAT_LAYERS[layer](x, rng))
        channels = int(y.ty.shape[-1])
        y = bb.emit(relax.op.multiply(y, relax.const(rng.uniform(0.5, 2.0, channels).astype("float32"))))
        return relax.op.add(y, relax.const(rng.standard_normal(channels).astype("float32")))

    mod = _module(build)
    folded = relax.transform.DeadCodeElimination()(FoldScaleIntoWeights()(mod))
    assert "relax.multiply" not in _ops(folded) and "relax.add" in _ops(folded)
    plain, optimized = _run_both(build_and_load, mod, x)
    # Each product is scaled before it is summed instead of after: rounding of the sums only.
    np.testing.assert_allclose(optimized, plain, rtol=0, atol=1e-5 * np.abs(plain).max())


# ---------------------------------------------------------------- MaxPoolBeforeQuantize


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_maxpool_moves_before_quantize(build_and_load, rng, x, padding):
    pads = (0, 0, 1, 1) if padding == "SAME" else (0, 0, 0, 0)  # 3x3 stride 2 on 6: SAME pads 0 before, 1 after

    def build(bb, x):
        pooled = bb.emit(relax.op.nn.max_pool2d(x, (3, 3), (2, 2), pads, layout="NHWC"))
        packed = bb.emit(ops.quantize(pooled))
        return ops.dequantize(packed, CHANNELS_IN)

    mod = _module(build)
    moved = relax.transform.DeadCodeElimination()(MaxPoolBeforeQuantize()(mod))
    assert "relax.bnn.bmaxpool2d" in _ops(moved) and "relax.nn.max_pool2d" not in _ops(moved)
    plain, optimized = _run_both(build_and_load, mod, x)
    np.testing.assert_array_equal(optimized, plain)


def test_maxpool_with_other_padding_stays_float(rng):
    def build(bb, x):
        pooled = bb.emit(relax.op.nn.max_pool2d(x, (2, 2), (2, 2), (1, 1, 0, 0), layout="NHWC"))
        return ops.quantize(pooled)

    assert "relax.bnn.bmaxpool2d" not in _ops(MaxPoolBeforeQuantize()(_module(build)))


# ---------------------------------------------------------------- BitpackedOutput


def _two_bconvs(rng, multiplier, bias, activation=None, **attrs):
    def build(bb, x):
        y = _bconv(bb, x, rng, multiplier, bias, **attrs)
        if activation is not None:
            y = bb.emit(activation(y))
        packed = bb.emit(ops.quantize(y))
        w = relax.const(quantize_ref(rng.standard_normal((8, 1, 1, CHANNELS_OUT)).astype("float32")))
        return ops.bconv2d(packed, w, channels_in=CHANNELS_OUT, multiplier=relax.const(np.ones(8, "float32")),
                           bias=relax.const(np.zeros(8, "float32")))

    return build


def _mixed_multiplier(rng):
    """Positive, negative and zero multipliers, biases on both sides of zero, and some exact ties."""
    multiplier = rng.uniform(0.2, 2.0, CHANNELS_OUT).astype("float32") * rng.choice([-1, 1], CHANNELS_OUT)
    multiplier[:3] = [0.0, 1.0, -1.0]
    bias = rng.standard_normal(CHANNELS_OUT).astype("float32") * 10
    bias[:3] = [-1.0, 2.0, 4.0]  # dot = -2 and dot = 4 land exactly on zero
    return multiplier, bias


def test_bitpacked_output_is_bit_exact(build_and_load, rng, x):
    multiplier, bias = _mixed_multiplier(rng)
    mod = _module(_two_bconvs(rng, multiplier, bias))
    packed = relax.transform.DeadCodeElimination()(BitpackedOutput()(mod))
    assert [a["out_dtype"] for a in _bconv_attrs(packed)] == ["int32", "float32"]
    assert _ops(packed).count("relax.bnn.quantize") == 1  # the input's; the hand-off's is gone
    plain, optimized = _run_both(build_and_load, mod, x)
    np.testing.assert_array_equal(optimized, plain)


def test_bitpacked_output_after_fused_relu_is_bit_exact(build_and_load, rng, x):
    multiplier = rng.uniform(0.2, 2.0, CHANNELS_OUT).astype("float32")
    mod = _module(_two_bconvs(rng, multiplier, np.zeros(CHANNELS_OUT, "float32"), activation=relax.op.nn.relu))
    optimized_mod = optimize(mod)
    assert [a["out_dtype"] for a in _bconv_attrs(optimized_mod)] == ["int32", "float32"]
    plain, optimized = _run_both(build_and_load, mod, x)
    np.testing.assert_array_equal(optimized, plain)


def test_zero_padding_keeps_float_output(rng):
    multiplier, bias = _mixed_multiplier(rng)
    packed = relax.transform.DeadCodeElimination()(BitpackedOutput()(_module(_two_bconvs(rng, multiplier, bias,
                                                                                         pad_value=0))))
    assert [a["out_dtype"] for a in _bconv_attrs(packed)] == ["float32", "float32"]


# ---------------------------------------------------------------- CancelQuantizePairs


def test_quantize_of_dequantize_cancels(build_and_load, x):
    def build(bb, x):
        packed = bb.emit(ops.quantize(x))
        unpacked = bb.emit(ops.dequantize(packed, CHANNELS_IN))
        return ops.quantize(unpacked)

    mod = _module(build)
    cancelled = relax.transform.DeadCodeElimination()(CancelQuantizePairs()(mod))
    assert _ops(cancelled) == ["relax.bnn.quantize"]
    plain, optimized = _run_both(build_and_load, mod, x)
    np.testing.assert_array_equal(optimized, plain)
