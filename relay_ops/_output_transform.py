"""The output transform every binary MAC op shares (bconv2d, bdense): LCE's, bit for bit.

From ``accum``, the XOR-popcount over the ``K`` bits of one output (so the true
dot product of the +-1 values is ``K - 2 * accum``), output channel ``o``:

* float32: ``float(clamp(2 * accum, lo', hi')) * m' + b'`` with ``m' = -m`` and
  ``b' = b + K * m`` (folded in double precision), where ``lo', hi'`` are the
  fused activation's range mapped through ``dot = K - 2 * accum``. This is
  ``act(K - 2 * accum) * m + b`` up to float rounding, and bit-exact with LCE's
  kernels because it is their formula; the product is rounded before the add
  (no FMA), as LCE does.
* int8: the float result with ``m, b`` rescaled by the output scale and zero
  point (``m' = -m / s``, ``b' = (b + K m) / s + z``), rounded half away from
  zero and saturated.
* bitpacked int32: bit ``accum > threshold[o]``, 32 output channels per word.

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
    expect_dtype,
    packed_words,
    static_shape,
)
from .bitpack import quantize_ref

ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6")
OUT_DTYPES = ("float32", "int8", PACKED_DTYPE)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# ---------------------------------------------------------------- arguments and attributes


def transform_args(op: str, out_dtype: str, multiplier, bias, thresholds) -> list[relax.Expr]:
    """The op's arguments after input and filter: thresholds (packed output) or multiplier and bias."""
    if out_dtype == PACKED_DTYPE:
        if thresholds is None:
            raise BnnOpError(op, "thresholds", "bitpacked output needs per-channel thresholds")
        return [thresholds]
    if multiplier is None or bias is None:
        raise BnnOpError(op, "multiplier", f"{out_dtype} output needs a multiplier and a bias")
    return [multiplier, bias]


def check_transform_inputs(op: str, call: relax.Call, attrs: dict, channels_out: int) -> None:
    """Shape inference of the transform's arguments (``call.args[2:]``) and attributes."""
    out_dtype = attrs["out_dtype"]
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


def clamp_range(activation: str, depth: int) -> tuple[int, int]:
    """LCE's clamp bounds on ``2 * accum``: the activation range of ``K - 2 * accum``, ``K = depth``."""
    nominal = {
        "NONE": (INT32_MIN, INT32_MAX),
        "RELU": (0, INT32_MAX),
        "RELU_N1_TO_1": (-1, 1),
        "RELU6": (0, 6),
    }[activation]
    low, high = max(nominal[0], -depth), min(nominal[1], depth)
    return depth - high, depth - low


def output_quantization(attrs: dict) -> tuple[float, int]:
    """The (scale, zero point) the folded constants divide by and add: the identity unless int8."""
    if attrs["out_dtype"] == "int8":
        return attrs["out_scale"], attrs["out_zero_point"]
    return 1.0, 0


# ---------------------------------------------------------------- numpy references


def transform_constants(multiplier, bias, depth: int, out_scale: float = 1.0, zero_point: int = 0):
    """LCE's folded multiplier ``-m / s`` and bias ``(b + K m) / s + z``, in double then float32."""
    m = multiplier.astype(np.float64)
    b = bias.astype(np.float64)
    return (-m / out_scale).astype(np.float32), ((b + depth * m) / out_scale + zero_point).astype(np.float32)


def packed_output_ref(accum: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Bit ``accum > threshold`` along the last axis, packed (a set bit packs as 1)."""
    bits = accum > thresholds.astype(np.int64)
    return quantize_ref(np.where(bits, -1.0, 1.0).astype(np.float32))


def scaled_output_ref(accum: np.ndarray, attrs: dict, depth: int, multiplier, bias, correction=None) -> np.ndarray:
    """The float32 or int8 output of ``accum`` (channels last); ``correction`` is added before rounding."""
    low, high = clamp_range(attrs["activation"], depth)
    mul_t, bias_t = transform_constants(multiplier, bias, depth, *output_quantization(attrs))
    y = np.clip(2 * accum, low, high).astype(np.float32) * mul_t + bias_t  # numpy rounds the product: no FMA
    if correction is not None:
        y = y + correction
    if attrs["out_dtype"] == "int8":
        rounded = np.sign(y) * np.floor(np.abs(y) + 0.5)
        return np.clip(rounded, -128, 127).astype(np.int8)
    return y.astype(np.float32)


# ---------------------------------------------------------------- TE: weight-only stages


def folded_multiplier_compute(multiplier: te.Tensor, out_scale: float, name: str = "bconv2d_multiplier") -> te.Tensor:
    """LCE's ``m' = -m / s``, in double precision, then float32."""
    return te.compute(
        multiplier.shape,
        lambda o: (-multiplier[o].astype("float64") / out_scale).astype("float32"),
        name=name,
    )


def folded_bias_compute(multiplier, bias, depth: int, out_scale: float, zero_point: int,
                        name: str = "bconv2d_bias") -> te.Tensor:
    """LCE's ``b' = (b + K m) / s + z``, in double precision, then float32."""
    return te.compute(
        bias.shape,
        lambda o: ((bias[o].astype("float64") + depth * multiplier[o].astype("float64")) / out_scale
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
        bb.emit(bb.call_te(folded_multiplier_compute, multiplier, scale, name=f"{op_name}_multiplier",
                           primfunc_name_hint=hint)),
        bb.emit(bb.call_te(folded_bias_compute, multiplier, bias, depth, scale, zero_point, name=f"{op_name}_bias",
                           primfunc_name_hint=hint)),
    ]


# ---------------------------------------------------------------- TE: output stages


def packed_output_compute(accum: te.Tensor, thresholds: te.Tensor, channels_out: int, name: str) -> te.Tensor:
    """Bit ``accum[..., o] > thresholds[o]`` packed along the last axis (``accum``'s may be padded beyond Cout)."""
    bit = te.reduce_axis((0, BITS_PER_WORD), name="bit")
    bitwise_or = te.comm_reducer(lambda a, b: a | b, lambda t: tirx.const(0, t), name="bitwise_or")

    def word(*index):
        o = index[-1] * BITS_PER_WORD + bit
        is_set = tirx.all(o < channels_out,
                          accum[index[:-1] + (o,)] > thresholds[tirx.min(o, channels_out - 1)])
        value = tirx.shift_left(tirx.const(1, PACKED_DTYPE), bit.var.astype(PACKED_DTYPE))
        return bitwise_or(tirx.Select(is_set, value, tirx.const(0, PACKED_DTYPE)), axis=bit)

    shape = [int(d) for d in accum.shape[:-1]] + [packed_words(channels_out)]
    return te.compute(shape, word, name=name)


def scaled_output_compute(accum: te.Tensor, multiplier: te.Tensor, bias: te.Tensor, *, depth: int, activation: str,
                          out_dtype: str, channels_out: int, name: str, correction=None) -> te.Tensor:
    """The float32 or int8 output of ``accum`` with the folded ``multiplier`` and ``bias``.

    ``correction(index)``, if given, is a float term added before rounding (bconv2d's zero padding).
    """
    low, high = clamp_range(activation, depth)

    def transform(*index):
        o = index[-1]
        doubled = tirx.max(tirx.min(accum[index] * 2, high), low)
        y = no_fma(doubled.astype("float32") * multiplier[o]) + bias[o]
        if correction is not None:
            y = y + correction(index)
        if out_dtype == "float32":
            return y
        # TfLiteRound: half away from zero (tirx.round would round half to even).
        rounded = tirx.Select(y >= 0, tirx.floor(y + 0.5), tirx.ceil(y - 0.5))
        return tirx.max(tirx.min(rounded, 127.0), -128.0).astype("int8")

    shape = [int(d) for d in accum.shape[:-1]] + [channels_out]
    return te.compute(shape, transform, name=name)


def no_fma(product):
    """Keep LLVM from contracting ``product + ...`` into an FMA: LCE rounds the product first."""
    return tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", product)
