"""The output transform every binary MAC op shares (bconv2d, bdense).

From ``accum``, the XOR-popcount over the ``K`` bits of one output (so the true
dot product of the +-1 values is ``dot = K - 2 * accum``), output channel ``o``,
the float32 output is ``act(dot) * m + b`` computed by one of two formulas
(attribute ``output_formula``):

* ``"lce"``: LCE's, bit for bit: ``float(clamp(2 * accum, lo', hi')) * m' + b'``
  with ``m' = -m`` and ``b' = b + K * m`` (folded in double precision), where
  ``lo', hi'`` are the activation's range mapped through ``dot``. Its terms are
  as large as ``K * |m|`` and so are its rounding errors. LCE-converted models
  use it, so that they give LCE's bits.
* ``"dot"``: ``float(clamp(dot, lo, hi)) * m + b``: rounded at the scale of the
  output, as a float layer computes it. Models bnn-tvm binarizes itself (Keras,
  stock TFLite) use it, so that folding a batch-norm into ``m, b`` stays as
  close to the float model as the unfolded layers.

Either way the product is rounded before the add (no FMA). int8 output is the
float result with ``m, b`` rescaled by the output scale and zero point, rounded
half away from zero and saturated; bitpacked int32 output is bit
``accum > threshold[o]``, 32 output channels per word.

The op modules keep their own accumulation; this module holds what follows it:
the attribute and argument checks, the weight-only folding stages (emitted by
legalization as functions of their own, so FoldConstant evaluates them at
compile time), the TE output stages and their numpy references.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from ._common import (
    BITS_PER_WORD,
    PACKED_DTYPE,
    BnnOpError,
    check_choice,
    expect_dtype,
    packed_words,
    static_shape,
)
from .bitpack import quantize_ref

ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6")
OUT_DTYPES = ("float32", "int8", PACKED_DTYPE)
OUTPUT_FORMULAS = ("dot", "lce")
DEFAULT_OUTPUT_FORMULA = "dot"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# ---------------------------------------------------------------- arguments and attributes


TRANSFORM_ATTRS = ("activation", "out_dtype", "out_scale", "out_zero_point", "output_formula")


def transform_attrs(activation: str, out_dtype: str, out_scale: float, out_zero_point: int,
                    output_formula: str) -> dict:
    """The output transform's attributes (``TRANSFORM_ATTRS``) as the ops store them."""
    return dict(activation=activation, out_dtype=out_dtype, out_scale=float(out_scale),
                out_zero_point=int(out_zero_point), output_formula=output_formula)


def transform_args(op: str, out_dtype: str, multiplier, bias, thresholds) -> list[relax.Expr]:
    """The op's arguments after input and filter: thresholds (packed output) or multiplier and bias."""
    if out_dtype == PACKED_DTYPE:
        if thresholds is None:
            raise BnnOpError(op, "thresholds", "bitpacked output needs per-channel thresholds")
        return [thresholds]
    if multiplier is None or bias is None:
        raise BnnOpError(op, "multiplier", f"{out_dtype} output needs a multiplier and a bias")
    return [multiplier, bias]


def check_transform_attrs(op: str, attrs: dict) -> None:
    """The activation and the output dtype are ones the transform computes."""
    check_choice(op, "activation", attrs["activation"], ACTIVATIONS)
    check_choice(op, "out_dtype", attrs["out_dtype"], OUT_DTYPES)


def output_shape(leading: list[int], channels_out: int, out_dtype: str) -> list[int]:
    """``leading`` axes, then the output channels: one per channel, or 32 per word when bitpacked."""
    return [*leading, packed_words(channels_out) if out_dtype == PACKED_DTYPE else channels_out]


def check_transform_inputs(op: str, call: relax.Call, attrs: dict, channels_out: int) -> None:
    """Shape inference of the transform's arguments (``call.args[2:]``) and attributes."""
    out_dtype = attrs["out_dtype"]
    if attrs["output_formula"] not in OUTPUT_FORMULAS:
        raise BnnOpError(op, "output_formula", f"{attrs['output_formula']!r} is not one of {OUTPUT_FORMULAS}")
    if out_dtype == PACKED_DTYPE:
        expected = [("thresholds", PACKED_DTYPE)]
    else:
        expected = [("post_activation_multiplier", "float32"), ("post_activation_bias", "float32")]
        if out_dtype == "int8" and attrs["out_scale"] <= 0:
            raise BnnOpError(op, "out_scale", f"int8 output needs a positive scale, got {attrs['out_scale']}")
    if len(call.args) != 2 + len(expected):
        names = ", ".join(name for name, _ in expected)
        raise BnnOpError(op, "inputs", f"{out_dtype} output takes input, filter, {names}")
    for arg, (name, dtype) in zip(call.args[2:], expected, strict=True):
        shape, arg_dtype = static_shape(op, name, arg)
        expect_dtype(op, name, arg_dtype, (dtype,))
        if shape != [channels_out]:
            raise BnnOpError(op, name, f"expected shape [{channels_out}], got {shape}")


def infer_binary_mac_type(op: str, call: relax.Call, attrs: dict, geometry_of) -> relax.TensorType:
    """Shape inference of a binary MAC op: packed input and filter, ``geometry_of(x_shape, w_shape, attrs)``
    validating them, then the output transform's arguments."""
    x_shape, x_dtype = static_shape(op, "input", call.args[0])
    w_shape, w_dtype = static_shape(op, "filter", call.args[1])
    expect_dtype(op, "input", x_dtype, (PACKED_DTYPE,))
    expect_dtype(op, "filter", w_dtype, (PACKED_DTYPE,))
    geometry = geometry_of(x_shape, w_shape, attrs)
    check_transform_inputs(op, call, attrs, geometry.channels_out)
    return relax.TensorType(geometry.out_shape, attrs["out_dtype"])


def clamp_range(activation: str, depth: int, formula: str) -> tuple[int, int]:
    """The activation's bounds on the integer the formula converts: ``dot`` itself (``"dot"``), or ``2 * accum``
    (``"lce"``), ``K = depth``."""
    nominal = {
        "NONE": (INT32_MIN, INT32_MAX),
        "RELU": (0, INT32_MAX),
        "RELU_N1_TO_1": (-1, 1),
        "RELU6": (0, 6),
    }[activation]
    low, high = max(nominal[0], -depth), min(nominal[1], depth)
    return (low, high) if formula == "dot" else (depth - high, depth - low)


def output_quantization(attrs: dict) -> tuple[float, int]:
    """The (scale, zero point) the folded constants divide by and add: the identity unless int8."""
    if attrs["out_dtype"] == "int8":
        return attrs["out_scale"], attrs["out_zero_point"]
    return 1.0, 0


# ---------------------------------------------------------------- numpy references


def transform_constants(multiplier, bias, depth: int, formula: str, out_scale: float = 1.0, zero_point: int = 0):
    """The multiplier and bias the formula uses, in double then float32: ``m / s`` and ``b / s + z``
    (``"dot"``), LCE's ``-m / s`` and ``(b + K m) / s + z`` (``"lce"``)."""
    m = multiplier.astype(np.float64)
    b = bias.astype(np.float64)
    if formula == "dot":
        return (m / out_scale).astype(np.float32), (b / out_scale + zero_point).astype(np.float32)
    return (-m / out_scale).astype(np.float32), ((b + depth * m) / out_scale + zero_point).astype(np.float32)


def packed_output_ref(accum: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Bit ``accum > threshold`` along the last axis, packed (a set bit packs as 1)."""
    bits = accum > thresholds.astype(np.int64)
    return quantize_ref(np.where(bits, -1.0, 1.0).astype(np.float32))


def scaled_output_ref(accum: np.ndarray, attrs: dict, depth: int, multiplier, bias, correction=None) -> np.ndarray:
    """The float32 or int8 output of ``accum`` (channels last).

    ``correction`` (bconv2d's zero padding, per output): with ``"lce"`` a float added to the result, with
    ``"dot"`` an integer subtracted from ``dot``.
    """
    formula = attrs.get("output_formula", DEFAULT_OUTPUT_FORMULA)
    low, high = clamp_range(attrs["activation"], depth, formula)
    mul_t, bias_t = transform_constants(multiplier, bias, depth, formula, *output_quantization(attrs))
    term = depth - 2 * accum if formula == "dot" else 2 * accum
    if formula == "dot" and correction is not None:
        term = term - correction
    y = np.clip(term, low, high).astype(np.float32) * mul_t + bias_t  # numpy rounds the product: no FMA
    if formula == "lce" and correction is not None:
        y = y + correction
    if attrs["out_dtype"] == "int8":
        rounded = np.sign(y) * np.floor(np.abs(y) + 0.5)
        return np.clip(rounded, -128, 127).astype(np.int8)
    return y.astype(np.float32)


# ---------------------------------------------------------------- TE: weight-only stages


def folded_multiplier_compute(multiplier: te.Tensor, out_scale: float, formula: str,
                              name: str = "bconv2d_multiplier") -> te.Tensor:
    """The formula's multiplier (see :func:`transform_constants`), in double precision, then float32."""
    sign = 1.0 if formula == "dot" else -1.0
    return te.compute(
        multiplier.shape,
        lambda o: (sign * multiplier[o].astype("float64") / out_scale).astype("float32"),
        name=name,
    )


def folded_bias_compute(multiplier, bias, depth: int, formula: str, out_scale: float, zero_point: int,
                        name: str = "bconv2d_bias") -> te.Tensor:
    """The formula's bias (see :func:`transform_constants`), in double precision, then float32."""
    offset = 0 if formula == "dot" else depth
    return te.compute(
        bias.shape,
        lambda o: ((bias[o].astype("float64") + offset * multiplier[o].astype("float64")) / out_scale
                   + zero_point).astype("float32"),
        name=name,
    )


def legalize_folded_constants(bb: relax.BlockBuilder, call: relax.Call, attrs: dict, depth: int,
                              op_name: str) -> list[relax.Expr]:
    """The folded multiplier and bias of a float/int8 call, each a function of its own (folded at compile time)."""
    multiplier, bias = call.args[2], call.args[3]
    scale, zero_point = output_quantization(attrs)
    hint = f"bnn_{op_name}_fold"
    return [
        bb.emit(bb.call_te(folded_multiplier_compute, multiplier, scale, attrs["output_formula"],
                           name=f"{op_name}_multiplier", primfunc_name_hint=hint)),
        bb.emit(bb.call_te(folded_bias_compute, multiplier, bias, depth, attrs["output_formula"], scale, zero_point,
                           name=f"{op_name}_bias", primfunc_name_hint=hint)),
    ]


# ---------------------------------------------------------------- TE: output stages


def packed_output_compute(accum: te.Tensor, thresholds: te.Tensor, channels_out: int, name: str,
                          leading=None) -> te.Tensor:
    """Bit ``accum[..., o] > thresholds[o]`` packed along the last axis (``accum``'s may be padded beyond Cout).

    ``leading``: the output's leading axes, where ``accum``'s are padded too (default: ``accum``'s)."""
    bit = te.reduce_axis((0, BITS_PER_WORD), name="bit")
    bitwise_or = te.comm_reducer(lambda a, b: a | b, lambda t: tirx.const(0, t), name="bitwise_or")

    def word(*index):
        o = index[-1] * BITS_PER_WORD + bit
        is_set = tirx.all(o < channels_out,
                          accum[index[:-1] + (o,)] > thresholds[tirx.min(o, channels_out - 1)])
        value = tirx.shift_left(tirx.const(1, PACKED_DTYPE), bit.var.astype(PACKED_DTYPE))
        return bitwise_or(tirx.Select(is_set, value, tirx.const(0, PACKED_DTYPE)), axis=bit)

    shape = [int(d) for d in (leading or accum.shape[:-1])] + [packed_words(channels_out)]
    return te.compute(shape, word, name=name)


def scaled_output_compute(accum: te.Tensor, multiplier: te.Tensor, bias: te.Tensor, *, depth: int, activation: str,
                          out_dtype: str, formula: str, channels_out: int, name: str, correction=None,
                          leading=None) -> te.Tensor:
    """The float32 or int8 output of ``accum`` with the folded ``multiplier`` and ``bias``.

    ``leading``: the output's leading axes, where ``accum``'s are padded too (default: ``accum``'s).
    ``correction(index)`` (bconv2d's zero padding): with ``"lce"`` a float added before rounding, with ``"dot"``
    an integer subtracted from ``dot``.
    """
    low, high = clamp_range(activation, depth, formula)
    # The term never leaves this range (accum counts at most K bits; with zero padding, dot is still the dot
    # product of K values of +-1 or 0): a bound of the activation outside it needs no instruction.
    reach = (-depth, depth) if formula == "dot" else (0, 2 * depth)
    clamps_high, clamps_low = high < reach[1], low > reach[0]
    # LCE's float(2 a) * m is float(a) * (2 m) exactly (doubling is exact in binary floating point: the two
    # products are one real number, rounded once), and clamping 2a to even bounds is clamping a to half of them:
    # one integer doubling per output less.
    halved = formula == "lce" and (not clamps_high or high % 2 == 0) and (not clamps_low or low % 2 == 0)
    divisor = 2 if halved else 1

    def transform(*index):
        o = index[-1]
        term = depth - accum[index] * 2 if formula == "dot" else accum[index] * (2 // divisor)
        if formula == "dot" and correction is not None:
            term = term - correction(index)
        if clamps_high:
            term = tirx.min(term, high // divisor)
        if clamps_low:
            term = tirx.max(term, low // divisor)
        scale = multiplier[o] * tirx.const(2.0, "float32") if halved else multiplier[o]
        y = no_fma(term.astype("float32") * scale) + bias[o]
        if formula == "lce" and correction is not None:
            y = y + correction(index)
        if out_dtype == "float32":
            return y
        # TfLiteRound: half away from zero (tirx.round would round half to even).
        rounded = tirx.Select(y >= 0, tirx.floor(y + 0.5), tirx.ceil(y - 0.5))
        return tirx.max(tirx.min(rounded, 127.0), -128.0).astype("int8")

    shape = [int(d) for d in (leading or accum.shape[:-1])] + [channels_out]
    return te.compute(shape, transform, name=name)


def no_fma(product):
    """Keep LLVM from contracting ``product + ...`` into an FMA: LCE rounds the product first."""
    return tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", product)
