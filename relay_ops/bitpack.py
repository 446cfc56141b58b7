"""``relax.bnn.quantize`` and ``relax.bnn.dequantize``: LCE's LceQuantize / LceDequantize.

Bitpacking (LCE's convention, not ``topi.nn.binarize_pack``'s): along the last
axis, 32 channels per int32 word, channel ``c`` in bit ``c % 32`` (LSB first).
Bit 1 means -1 and bit 0 means +1; ``x < 0`` gives 1, so 0.0 packs as +1. For
int8 input the sign is taken against the zero point (``x < zero_point``). Tail
bits of the last word are 0.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from ._common import (
    BITS_PER_WORD,
    PACKED_DTYPE,
    BnnOpError,
    attr,
    expect_dtype,
    make_call,
    packed_words,
    register_op,
    static_shape,
)

QUANTIZE = "relax.bnn.quantize"
DEQUANTIZE = "relax.bnn.dequantize"
QUANTIZE_RULE = "bnn_quantize"
DEQUANTIZE_RULE = "bnn_dequantize"


# ---------------------------------------------------------------- numpy references


def quantize_ref(x: np.ndarray, zero_point: int = 0) -> np.ndarray:
    """Pack the signs of ``x`` along its last axis into int32 words (LCE's bitpacking)."""
    channels = x.shape[-1]
    words = packed_words(channels)
    negative = (x < zero_point) if x.dtype == np.int8 else (x < 0)
    bits = np.zeros(x.shape[:-1] + (words * BITS_PER_WORD,), dtype=np.uint64)
    bits[..., :channels] = negative
    bits = bits.reshape(x.shape[:-1] + (words, BITS_PER_WORD))
    weights = np.uint64(1) << np.arange(BITS_PER_WORD, dtype=np.uint64)
    return (bits * weights).sum(axis=-1).astype(np.uint32).view(np.int32)


def unpack_bits(packed: np.ndarray, channels: int) -> np.ndarray:
    """The bits of ``packed`` as a bool array [..., channels] (True means -1)."""
    as_unsigned = packed.astype(np.int32).view(np.uint32)[..., None]
    bits = (as_unsigned >> np.arange(BITS_PER_WORD, dtype=np.uint32)) & 1
    return bits.reshape(packed.shape[:-1] + (-1,))[..., :channels].astype(bool)


def dequantize_ref(
    packed: np.ndarray, channels: int, out_dtype: str = "float32", scale: float = 1.0, zero_point: int = 0
) -> np.ndarray:
    """Unpack to +-1 (float32), or to the int8 codes of +-1 under ``scale``/``zero_point``."""
    negative = unpack_bits(packed, channels)
    if out_dtype == "float32":
        return np.where(negative, np.float32(-1), np.float32(1))
    plus, minus = int8_codes_of_unit(scale, zero_point)
    return np.where(negative, np.int8(minus), np.int8(plus))


def int8_codes_of_unit(scale: float, zero_point: int) -> tuple[int, int]:
    """The int8 codes of +1 and -1 as LCE's dequantize writes them."""
    inverse = float(np.float32(1.0) / np.float32(scale))  # LCE divides in float32
    offset = int(np.floor(abs(inverse) + 0.5)) * (1 if inverse > 0 else -1)  # round half away from 0
    return min(127, zero_point + offset), max(-128, zero_point - offset)


# ---------------------------------------------------------------- quantize


def quantize(x: relax.Expr, zero_point: int = 0) -> relax.Call:
    """Bitpack ``x`` (float32, or int8 with ``zero_point``) along its last axis."""
    return make_call(QUANTIZE, [x], zero_point=int(zero_point))


def _quantize_type(call: relax.Call) -> relax.TensorType:
    shape, dtype = static_shape(QUANTIZE, "input", call.args[0])
    expect_dtype(QUANTIZE, "input", dtype, ("float32", "int8"))
    if not shape:
        raise BnnOpError(QUANTIZE, "input", "expected at least one axis (the channels)")
    if dtype == "float32" and attr(call, "zero_point") != 0:
        raise BnnOpError(QUANTIZE, "zero_point", "must be 0 for float32 input")
    return relax.TensorType(shape[:-1] + [packed_words(shape[-1])], PACKED_DTYPE)


def quantize_compute(x: te.Tensor, zero_point: int = 0) -> te.Tensor:
    r"""Bitpack the sign of ``x`` along the last axis.

    .. math:: y[\dots, w] = \bigvee_{b=0}^{31} [x[\dots, 32w + b] < z] \cdot 2^b

    where :math:`z` is the zero point (0 for float input) and channels beyond
    the last one contribute 0.
    """
    channels = int(x.shape[-1])
    words = packed_words(channels)
    bit = te.reduce_axis((0, BITS_PER_WORD), name="bit")
    bitwise_or = te.comm_reducer(lambda a, b: a | b, lambda t: tirx.const(0, t), name="bitwise_or")
    threshold = tirx.const(zero_point, x.dtype)

    def word(*index):
        channel = index[-1] * BITS_PER_WORD + bit
        value_bit = tirx.shift_left(tirx.const(1, PACKED_DTYPE), bit.var.astype(PACKED_DTYPE))

        def bit_of(c):
            return tirx.Select(x[index[:-1] + (c,)] < threshold, value_bit, tirx.const(0, PACKED_DTYPE))

        if channels % BITS_PER_WORD == 0:
            return bitwise_or(bit_of(channel), axis=bit)
        inside = channel < channels
        return bitwise_or(
            tirx.if_then_else(inside, bit_of(tirx.min(channel, channels - 1)), tirx.const(0, PACKED_DTYPE)),
            axis=bit,
        )

    shape = list(x.shape[:-1]) + [words]
    return te.compute(shape, word, name="bitpack", attrs={"schedule_rule": QUANTIZE_RULE})


def _legalize_quantize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return bb.call_te(quantize_compute, call.args[0], attr(call, "zero_point"), primfunc_name_hint="bnn_quantize")


# ---------------------------------------------------------------- dequantize


def dequantize(
    x: relax.Expr, channels: int, out_dtype: str = "float32", scale: float = 1.0, zero_point: int = 0
) -> relax.Call:
    """Unpack ``channels`` channels of ``x`` to +-1 (float32, or int8 codes under scale/zero_point)."""
    return make_call(
        DEQUANTIZE, [x], channels=int(channels), out_dtype=out_dtype, scale=float(scale), zero_point=int(zero_point)
    )


def _dequantize_type(call: relax.Call) -> relax.TensorType:
    shape, dtype = static_shape(DEQUANTIZE, "input", call.args[0])
    expect_dtype(DEQUANTIZE, "input", dtype, (PACKED_DTYPE,))
    out_dtype = attr(call, "out_dtype")
    expect_dtype(DEQUANTIZE, "out_dtype", out_dtype, ("float32", "int8"))
    channels = attr(call, "channels")
    if not shape or channels < 1 or packed_words(channels) != shape[-1]:
        raise BnnOpError(
            DEQUANTIZE, "channels",
            f"{channels} channels need {packed_words(max(channels, 1))} words, the input has shape {shape}",
        )
    if out_dtype == "int8" and attr(call, "scale") == 0:
        raise BnnOpError(DEQUANTIZE, "scale", "must be non-zero for int8 output")
    return relax.TensorType(shape[:-1] + [channels], out_dtype)


def dequantize_compute(
    x: te.Tensor, channels: int, out_dtype: str = "float32", scale: float = 1.0, zero_point: int = 0
) -> te.Tensor:
    r"""Unpack bits to +-1: :math:`y[\dots, c] = 1 - 2\,\mathrm{bit}_{c \bmod 32}(x[\dots, \lfloor c/32 \rfloor])`."""
    if out_dtype == "float32":
        plus, minus = tirx.const(1.0, "float32"), tirx.const(-1.0, "float32")
    else:
        codes = int8_codes_of_unit(scale, zero_point)
        plus, minus = tirx.const(codes[0], "int8"), tirx.const(codes[1], "int8")

    def value(*index):
        c = index[-1]
        word = x[index[:-1] + (c // BITS_PER_WORD,)]
        is_set = tirx.bitwise_and(tirx.shift_right(word, (c % BITS_PER_WORD).astype(PACKED_DTYPE)), 1) != 0
        return tirx.Select(is_set, minus, plus)

    shape = list(x.shape[:-1]) + [channels]
    return te.compute(shape, value, name="unpack", attrs={"schedule_rule": DEQUANTIZE_RULE})


def _legalize_dequantize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return bb.call_te(
        dequantize_compute,
        call.args[0],
        attr(call, "channels"),
        attr(call, "out_dtype"),
        attr(call, "scale"),
        attr(call, "zero_point"),
        primfunc_name_hint="bnn_dequantize",
    )


register_op(QUANTIZE, "Bitpack signs along the last axis (LceQuantize).", _quantize_type, _legalize_quantize)
register_op(DEQUANTIZE, "Unpack bits to +-1 (LceDequantize).", _dequantize_type, _legalize_dequantize)
