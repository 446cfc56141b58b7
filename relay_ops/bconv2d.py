"""``relax.bnn.bconv2d``: binary 2-D convolution with LCE's LceBconv2d semantics.

Inputs are bitpacked (see :mod:`bitpack`): ``x`` is NHWC with packed channels,
``w`` is OHWI with packed input channels. With ``accum`` the XOR-popcount over
the ``K = kh * kw * channels_in / groups`` bits under the window, the true dot
product of the +-1 values is ``K - 2 * accum``.

Outputs, as LCE computes them:

* float32: ``float(clamp(2 * accum, lo', hi')) * m' + b'`` with ``m' = -m`` and
  ``b' = b + K * m`` (folded in double precision), where ``lo', hi'`` are the
  fused activation's range mapped through ``dot = K - 2 * accum``. This is the
  same value as ``act(K - 2 * accum) * m + b`` up to float rounding, and it is
  bit-exact with LCE's kernels because it is their formula.
* int8: the float result with ``m, b`` rescaled by the output scale and zero
  point, rounded half away from zero and saturated.
* bitpacked int32: bit ``accum > threshold[c]``, 32 output channels per word.

``pad_value`` 1 pads with +1 (bit 0: free). ``pad_value`` 0 pads with 0 for
SAME padding; the padded taps' +1 contributions are then subtracted, times
``-m``, as LCE's zero-padding correction does (exactly, also where LCE's own
correction assumes the window is smaller than the image).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

from ._common import (
    BITS_PER_WORD,
    PACKED_DTYPE,
    BnnOpError,
    attr,
    check_choice,
    check_positive_pair,
    expect_dtype,
    make_call,
    packed_words,
    register_op,
    static_shape,
    window_output,
)
from .bitpack import quantize_ref, unpack_bits

OP = "relax.bnn.bconv2d"
RULE = "bnn_bconv2d"
ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6")
OUT_DTYPES = ("float32", "int8", PACKED_DTYPE)
# Output channels are computed in blocks of one packed word; the accumulator is
# padded to whole blocks so that schedules vectorize without remainder loops.
CHANNEL_BLOCK = BITS_PER_WORD
# The "halfwords" accumulation (ARM NEON) counts bits per 16-bit lane of 128-bit chunks of 4 words.
WORDS_PER_CHUNK = 4
HALFWORD_LANES = 8
UINT16_MAX = 2**16 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def bconv2d(
    x: relax.Expr,
    w: relax.Expr,
    *,
    channels_in: int,
    multiplier: relax.Expr | None = None,
    bias: relax.Expr | None = None,
    thresholds: relax.Expr | None = None,
    strides=(1, 1),
    dilations=(1, 1),
    padding: str = "VALID",
    pad_value: int = 1,
    activation: str = "NONE",
    out_dtype: str = "float32",
    out_scale: float = 1.0,
    out_zero_point: int = 0,
) -> relax.Call:
    """Binary conv2d. Float/int8 output takes ``multiplier`` and ``bias``; packed output takes ``thresholds``."""
    if out_dtype == PACKED_DTYPE:
        if thresholds is None:
            raise BnnOpError(OP, "thresholds", "bitpacked output needs per-channel thresholds")
        args = [x, w, thresholds]
    else:
        if multiplier is None or bias is None:
            raise BnnOpError(OP, "multiplier", f"{out_dtype} output needs a multiplier and a bias")
        args = [x, w, multiplier, bias]
    return make_call(
        OP,
        args,
        channels_in=int(channels_in),
        strides=[int(s) for s in strides],
        dilations=[int(d) for d in dilations],
        padding=padding,
        pad_value=int(pad_value),
        activation=activation,
        out_dtype=out_dtype,
        out_scale=float(out_scale),
        out_zero_point=int(out_zero_point),
    )


class Conv2dGeometry:
    """Validated shapes and attributes of one bconv2d call."""

    def __init__(self, x_shape, w_shape, attrs: dict):
        self.attrs = attrs
        if len(x_shape) != 4:
            raise BnnOpError(OP, "input", f"expected packed NHWC (4 axes), got shape {x_shape}")
        if len(w_shape) != 4:
            raise BnnOpError(OP, "filter", f"expected packed OHWI (4 axes), got shape {w_shape}")
        self.batch, self.in_h, self.in_w, self.in_words = x_shape
        self.channels_out, self.kernel_h, self.kernel_w, self.filter_words = w_shape
        self.channels_in = attrs["channels_in"]
        self.stride_h, self.stride_w = check_positive_pair(OP, "strides", attrs["strides"])
        self.dilation_h, self.dilation_w = check_positive_pair(OP, "dilations", attrs["dilations"])
        check_choice(OP, "padding", attrs["padding"], ("SAME", "VALID"))
        check_choice(OP, "pad_values", attrs["pad_value"], (0, 1))
        check_choice(OP, "fused_activation_function", attrs["activation"], ACTIVATIONS)
        check_choice(OP, "out_dtype", attrs["out_dtype"], OUT_DTYPES)
        if self.channels_in < 1 or packed_words(self.channels_in) != self.in_words:
            raise BnnOpError(
                OP, "channels_in",
                f"{self.channels_in} channels need {packed_words(max(self.channels_in, 1))} words, "
                f"the input has {self.in_words}",
            )
        if self.filter_words < 1 or self.in_words % self.filter_words:
            raise BnnOpError(
                OP, "filter",
                f"{self.filter_words} packed words per filter do not divide the input's {self.in_words}",
            )
        self.groups = self.in_words // self.filter_words
        if self.groups > 1:
            if self.channels_in % (self.groups * BITS_PER_WORD):
                raise BnnOpError(
                    OP, "groups",
                    f"grouped convolution ({self.groups} groups) needs channels_in ({self.channels_in}) "
                    f"to be a multiple of 32 * groups",
                )
            if self.channels_out % self.groups:
                raise BnnOpError(
                    OP, "groups", f"{self.channels_out} output channels do not split into {self.groups} groups"
                )
        self.channels_in_per_group = self.channels_in // self.groups
        self.out_h, self.pad_top, self.pad_bottom = window_output(
            OP, self.in_h, self.kernel_h, self.stride_h, self.dilation_h, attrs["padding"], "height"
        )
        self.out_w, self.pad_left, self.pad_right = window_output(
            OP, self.in_w, self.kernel_w, self.stride_w, self.dilation_w, attrs["padding"], "width"
        )
        self.zero_padding = attrs["padding"] == "SAME" and attrs["pad_value"] == 0
        if self.zero_padding and attrs["activation"] != "NONE":
            raise BnnOpError(
                OP, "fused_activation_function",
                "fused activations need VALID or one-padding (pad_values=1), as in LCE",
            )
        if self.zero_padding and attrs["out_dtype"] == PACKED_DTYPE:
            raise BnnOpError(OP, "out_dtype", "bitpacked output needs VALID or one-padding (pad_values=1), as in LCE")
        self.depth = self.kernel_h * self.kernel_w * self.channels_in_per_group

    @property
    def out_shape(self) -> list[int]:
        channels = self.channels_out
        if self.attrs["out_dtype"] == PACKED_DTYPE:
            channels = packed_words(channels)
        return [self.batch, self.out_h, self.out_w, channels]

    def clamp_range(self) -> tuple[int, int]:
        """LCE's clamp bounds on ``2 * accum``: the activation range of ``K - 2 * accum``."""
        nominal = {
            "NONE": (INT32_MIN, INT32_MAX),
            "RELU": (0, INT32_MAX),
            "RELU_N1_TO_1": (-1, 1),
            "RELU6": (0, 6),
        }[self.attrs["activation"]]
        low, high = max(nominal[0], -self.depth), min(nominal[1], self.depth)
        return self.depth - high, self.depth - low


def _attrs(call: relax.Call) -> dict:
    keys = ("channels_in", "strides", "dilations", "padding", "pad_value", "activation", "out_dtype",
            "out_scale", "out_zero_point")
    return {k: attr(call, k) for k in keys}


def _infer_type(call: relax.Call) -> relax.TensorType:
    attrs = _attrs(call)
    x_shape, x_dtype = static_shape(OP, "input", call.args[0])
    w_shape, w_dtype = static_shape(OP, "filter", call.args[1])
    expect_dtype(OP, "input", x_dtype, (PACKED_DTYPE,))
    expect_dtype(OP, "filter", w_dtype, (PACKED_DTYPE,))
    geometry = Conv2dGeometry(x_shape, w_shape, attrs)
    if attrs["out_dtype"] == PACKED_DTYPE:
        expected = [("thresholds", PACKED_DTYPE)]
    else:
        expected = [("post_activation_multiplier", "float32"), ("post_activation_bias", "float32")]
        if attrs["out_dtype"] == "int8" and attrs["out_scale"] <= 0:
            raise BnnOpError(OP, "out_scale", f"int8 output needs a positive scale, got {attrs['out_scale']}")
    if len(call.args) != 2 + len(expected):
        names = ", ".join(name for name, _ in expected)
        raise BnnOpError(OP, "inputs", f"{attrs['out_dtype']} output takes input, filter, {names}")
    for arg, (name, dtype) in zip(call.args[2:], expected, strict=True):
        shape, arg_dtype = static_shape(OP, name, arg)
        expect_dtype(OP, name, arg_dtype, (dtype,))
        if shape != [geometry.channels_out]:
            raise BnnOpError(OP, name, f"expected shape [{geometry.channels_out}], got {shape}")
    return relax.TensorType(geometry.out_shape, attrs["out_dtype"])


# ---------------------------------------------------------------- numpy reference


def bconv2d_ref(x, w, attrs: dict, multiplier=None, bias=None, thresholds=None) -> np.ndarray:
    """Reference bconv2d on packed numpy arrays, written for clarity, not speed."""
    g = Conv2dGeometry(list(x.shape), list(w.shape), attrs)
    xb = unpack_bits(x, g.in_words * BITS_PER_WORD).astype(np.int64)  # 1 where the value is -1
    wb = unpack_bits(w, g.filter_words * BITS_PER_WORD).astype(np.int64)
    per_group_words = g.filter_words * BITS_PER_WORD
    xpad = np.zeros((g.batch, g.in_h + g.pad_top + g.pad_bottom, g.in_w + g.pad_left + g.pad_right, xb.shape[-1]),
                    np.int64)
    xpad[:, g.pad_top:g.pad_top + g.in_h, g.pad_left:g.pad_left + g.in_w] = xb
    inside = np.zeros(xpad.shape[1:3], np.int64)
    inside[g.pad_top:g.pad_top + g.in_h, g.pad_left:g.pad_left + g.in_w] = 1
    accum = np.zeros((g.batch, g.out_h, g.out_w, g.channels_out), np.int64)
    padded_dot = np.zeros_like(accum)  # +1 padding's contribution to the dot product
    out_per_group = g.channels_out // g.groups
    for kh in range(g.kernel_h):
        for kw in range(g.kernel_w):
            rows = slice(kh * g.dilation_h, kh * g.dilation_h + (g.out_h - 1) * g.stride_h + 1, g.stride_h)
            cols = slice(kw * g.dilation_w, kw * g.dilation_w + (g.out_w - 1) * g.stride_w + 1, g.stride_w)
            for group in range(g.groups):
                channels = slice(group * out_per_group, (group + 1) * out_per_group)
                xs = xpad[:, rows, cols, group * per_group_words:(group + 1) * per_group_words]
                ws = wb[channels, kh, kw]  # [out_per_group, bits]
                accum[..., channels] += np.einsum("nhwc,oc->nhwo", xs, 1 - ws) + np.einsum(
                    "nhwc,oc->nhwo", 1 - xs, ws)
                tap_sum = g.channels_in_per_group - 2 * ws.sum(axis=1)  # dot of +1s with the filter tap
                outside = 1 - inside[rows, cols]
                padded_dot[..., channels] += outside[None, :, :, None] * tap_sum[None, None, None, :]
    if attrs["out_dtype"] == PACKED_DTYPE:
        bits = accum > thresholds.astype(np.int64)
        return quantize_ref(np.where(bits, -1.0, 1.0).astype(np.float32))  # a set bit packs as 1
    low, high = g.clamp_range()
    out_scale = attrs["out_scale"] if attrs["out_dtype"] == "int8" else 1.0
    zero_point = attrs["out_zero_point"] if attrs["out_dtype"] == "int8" else 0
    mul_t, bias_t = transform_constants(multiplier, bias, g.depth, out_scale, zero_point)
    y = np.clip(2 * accum, low, high).astype(np.float32) * mul_t + bias_t
    if g.zero_padding:
        y = y + (-multiplier.astype(np.float32)) * padded_dot.astype(np.float32)
    if attrs["out_dtype"] == "int8":
        rounded = np.sign(y) * np.floor(np.abs(y) + 0.5)
        return np.clip(rounded, -128, 127).astype(np.int8)
    return y.astype(np.float32)


def transform_constants(multiplier, bias, depth: int, out_scale: float = 1.0, zero_point: int = 0):
    """LCE's folded multiplier ``-m / s`` and bias ``(b + K m) / s + z``, in double then float32."""
    m = multiplier.astype(np.float64)
    b = bias.astype(np.float64)
    return (-m / out_scale).astype(np.float32), ((b + depth * m) / out_scale + zero_point).astype(np.float32)


# ---------------------------------------------------------------- TE computes
#
# Legalization emits the weight-only stages (filter blocking, folded output
# constants, zero-padding correction) as functions of their own: their inputs
# are constants, so FoldConstant evaluates them at compile time and the kernel
# reads ready-made tables. Only padding, accumulation and the output transform
# run per inference.


def blocked_filter_compute(w: te.Tensor, accumulation: str = "words") -> te.Tensor:
    """The filter OHWI in blocks of 32 output channels, zero beyond Cout.

    ``words``: [block, kh, kw, word, channel]: channels contiguous, the vector lanes.
    ``halfwords``: [block, kh, kw, channel, word]: words contiguous and padded to whole 128-bit chunks.
    """
    channels_out, kernel_h, kernel_w, words = (int(d) for d in w.shape)
    blocks = (channels_out + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    zero = tirx.const(0, PACKED_DTYPE)

    def weight(block, p, q, c, lane):
        o = block * CHANNEL_BLOCK + lane
        inside = tirx.all(o < channels_out, c < words)
        return tirx.if_then_else(inside, w[tirx.min(o, channels_out - 1), p, q, tirx.min(c, words - 1)], zero)

    if accumulation == "words":
        return te.compute((blocks, kernel_h, kernel_w, words, CHANNEL_BLOCK), weight, name="bconv2d_filter_blocked")
    padded = _round_up(words, WORDS_PER_CHUNK)
    return te.compute((blocks, kernel_h, kernel_w, CHANNEL_BLOCK, padded),
                      lambda b, p, q, lane, c: weight(b, p, q, c, lane), name="bconv2d_filter_blocked")


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def accumulation_for(target, g: Conv2dGeometry) -> str:
    """``halfwords`` (NEON popcount into u16 lanes) on ARM when the lanes cannot overflow, else ``words``."""
    if target is None or "arm_cpu" not in list(target.keys):
        return "words"
    chunks = _round_up(g.filter_words, WORDS_PER_CHUNK) // WORDS_PER_CHUNK
    # Each chunk adds at most 16 to a lane; beyond this depth the lanes would need widening mid-reduction.
    fits = g.kernel_h * g.kernel_w * chunks * 16 <= UINT16_MAX
    return "halfwords" if fits else "words"


def folded_multiplier_compute(multiplier: te.Tensor, out_scale: float) -> te.Tensor:
    """LCE's ``m' = -m / s``, in double precision, then float32."""
    return te.compute(
        multiplier.shape,
        lambda o: (-multiplier[o].astype("float64") / out_scale).astype("float32"),
        name="bconv2d_multiplier",
    )


def folded_bias_compute(multiplier, bias, depth: int, out_scale: float, zero_point: int) -> te.Tensor:
    """LCE's ``b' = (b + K m) / s + z``, in double precision, then float32."""
    return te.compute(
        bias.shape,
        lambda o: ((bias[o].astype("float64") + depth * multiplier[o].astype("float64")) / out_scale
                   + zero_point).astype("float32"),
        name="bconv2d_bias",
    )


def zero_padding_correction_compute(w: te.Tensor, multiplier: te.Tensor, attrs: dict, in_h: int, in_w: int):
    """Per output pixel and channel: ``-m`` times the dot product the +1 padding wrongly added."""
    g = Conv2dGeometry([1, in_h, in_w, packed_words(attrs["channels_in"])], [int(d) for d in w.shape], attrs)
    c = te.reduce_axis((0, g.filter_words), name="c")
    tap_popcount = te.compute(
        (g.channels_out, g.kernel_h, g.kernel_w),
        lambda o, p, q: te.sum(tirx.popcount(w[o, p, q, c]), axis=c),
        name="bconv2d_filter_tap_popcount",
    )
    p = te.reduce_axis((0, g.kernel_h), name="p")
    q = te.reduce_axis((0, g.kernel_w), name="q")

    def padded_taps(i, j, o):
        ih = i * g.stride_h - g.pad_top + p * g.dilation_h
        iw = j * g.stride_w - g.pad_left + q * g.dilation_w
        outside = tirx.any(ih < 0, ih >= g.in_h, iw < 0, iw >= g.in_w)
        tap_sum = g.channels_in_per_group - 2 * tap_popcount[o, p, q]  # the tap's dot product with +1s
        return te.sum(tirx.Select(outside, tap_sum, 0), axis=[p, q])

    count = te.compute((g.out_h, g.out_w, g.channels_out), padded_taps, name="bconv2d_padding_count")
    return te.compute(
        count.shape, lambda i, j, o: (-multiplier[o]) * count[i, j, o].astype("float32"),
        name="bconv2d_padding_correction",
    )


def bconv2d_compute(x, w_blocked, *params, attrs: dict, filter_shape, accumulation: str = "words"):
    r"""Binary convolution on a blocked filter (see :func:`blocked_filter_compute`).

    .. math::
        a[n, i, j, o] = \sum_{p, q, c} \mathrm{popcount}\big(
            \hat x[n, i s_h + p d_h, j s_w + q d_w, g(o) W_g + c] \oplus w[o, p, q, c]\big)

    with :math:`\hat x` the input padded with zero words (+1), :math:`g(o)` the
    group of output channel :math:`o` and :math:`W_g` the packed words per group;
    then the output transform of the module docstring. ``params`` are the
    thresholds (packed output) or the folded multiplier, bias and, for zero
    padding, the correction table. ``accumulation`` says how the popcounts are
    summed: per word into int32 (``words``), or per 16-bit lane of 128-bit
    chunks into uint16 lanes summed afterwards (``halfwords``, NEON's uadalp).
    """
    g = Conv2dGeometry([int(d) for d in x.shape], list(filter_shape), attrs)
    if accumulation == "words":
        accum = _accumulate_words(_padded_input(x, g, g.filter_words), w_blocked, g)
    else:
        accum = _accumulate_halfwords(x, w_blocked, g)
    if attrs["out_dtype"] == PACKED_DTYPE:
        return _packed_output(accum, params[0], g)
    return _scaled_output(accum, *params, g=g)


def _padded_input(x, g: Conv2dGeometry, words_per_group: int):
    """The input padded spatially with zero words (+1), each group's words padded to ``words_per_group``."""
    if not (g.pad_top or g.pad_bottom or g.pad_left or g.pad_right) and words_per_group == g.filter_words:
        return x
    shape = (g.batch, g.in_h + g.pad_top + g.pad_bottom, g.in_w + g.pad_left + g.pad_right,
             g.groups * words_per_group)

    def padded(n, h, wi, c):
        ih, iw = h - g.pad_top, wi - g.pad_left
        group, word = c // words_per_group, c % words_per_group
        inside = tirx.all(ih >= 0, ih < g.in_h, iw >= 0, iw < g.in_w, word < g.filter_words)
        source = x[n, tirx.max(tirx.min(ih, g.in_h - 1), 0), tirx.max(tirx.min(iw, g.in_w - 1), 0),
                   group * g.filter_words + tirx.min(word, g.filter_words - 1)]
        return tirx.if_then_else(inside, source, tirx.const(0, PACKED_DTYPE))

    return te.compute(shape, padded, name="bconv2d_pad")


def _group_offset(o, g: Conv2dGeometry, words_per_group: int):
    if g.groups == 1:
        return 0
    return tirx.min(o, g.channels_out - 1) // (g.channels_out // g.groups) * words_per_group


def _accumulate_words(xpad, w_blocked, g: Conv2dGeometry):
    blocks = int(w_blocked.shape[0])
    p = te.reduce_axis((0, g.kernel_h), name="p")
    q = te.reduce_axis((0, g.kernel_w), name="q")
    c = te.reduce_axis((0, g.filter_words), name="c")

    def accumulate(n, i, j, o):
        word = _group_offset(o, g, g.filter_words) + c
        xv = xpad[n, i * g.stride_h + p * g.dilation_h, j * g.stride_w + q * g.dilation_w, word]
        wv = w_blocked[o // CHANNEL_BLOCK, p, q, c, o % CHANNEL_BLOCK]
        return te.sum(tirx.popcount(tirx.bitwise_xor(xv, wv)), axis=[p, q, c])

    return te.compute((g.batch, g.out_h, g.out_w, blocks * CHANNEL_BLOCK), accumulate, name="bconv2d_accum",
                      attrs={"schedule_rule": RULE})


def _accumulate_halfwords(x, w_blocked, g: Conv2dGeometry):
    blocks, padded_words = int(w_blocked.shape[0]), int(w_blocked.shape[4])
    xpad = _padded_input(x, g, padded_words)
    p = te.reduce_axis((0, g.kernel_h), name="p")
    q = te.reduce_axis((0, g.kernel_w), name="q")
    k = te.reduce_axis((0, padded_words // WORDS_PER_CHUNK), name="k")

    def lane_count(n, i, j, o, lane):
        word = k * WORDS_PER_CHUNK + lane // 2
        xv = xpad[n, i * g.stride_h + p * g.dilation_h, j * g.stride_w + q * g.dilation_w,
                  _group_offset(o, g, padded_words) + word]
        wv = w_blocked[o // CHANNEL_BLOCK, p, q, o % CHANNEL_BLOCK, word]
        # In int64 because relax makes every index int64 and the lane index takes part in the shift.
        bits = tirx.bitwise_xor(xv, wv).astype("int64")
        half = tirx.bitwise_and(tirx.shift_right(bits, lane % 2 * 16), tirx.const(UINT16_MAX, "int64"))
        return te.sum(tirx.popcount(half).astype("uint16"), axis=[p, q, k])

    lanes = te.compute((g.batch, g.out_h, g.out_w, blocks * CHANNEL_BLOCK, HALFWORD_LANES), lane_count,
                       name="bconv2d_lanes", attrs={"schedule_rule": RULE})
    lane = te.reduce_axis((0, HALFWORD_LANES), name="lane")
    return te.compute(lanes.shape[:4], lambda n, i, j, o: te.sum(lanes[n, i, j, o, lane].astype("int32"), axis=lane),
                      name="bconv2d_accum")


def _packed_output(accum, thresholds, g: Conv2dGeometry):
    bit = te.reduce_axis((0, BITS_PER_WORD), name="bit")
    bitwise_or = te.comm_reducer(lambda a, b: a | b, lambda t: tirx.const(0, t), name="bitwise_or")

    def word(n, i, j, k):
        o = k * BITS_PER_WORD + bit
        is_set = tirx.all(o < g.channels_out, accum[n, i, j, o] > thresholds[tirx.min(o, g.channels_out - 1)])
        value = tirx.shift_left(tirx.const(1, PACKED_DTYPE), bit.var.astype(PACKED_DTYPE))
        return bitwise_or(tirx.Select(is_set, value, tirx.const(0, PACKED_DTYPE)), axis=bit)

    return te.compute(g.out_shape, word, name="bconv2d_output")


def _scaled_output(accum, multiplier, bias, correction=None, *, g: Conv2dGeometry):
    low, high = g.clamp_range()

    def transform(n, i, j, o):
        doubled = tirx.max(tirx.min(accum[n, i, j, o] * 2, high), low)
        y = _no_fma(doubled.astype("float32") * multiplier[o]) + bias[o]
        if correction is not None:
            y = y + correction[i, j, o]
        if g.attrs["out_dtype"] == "float32":
            return y
        # TfLiteRound: half away from zero (tirx.round would round half to even).
        rounded = tirx.Select(y >= 0, tirx.floor(y + 0.5), tirx.ceil(y - 0.5))
        return tirx.max(tirx.min(rounded, 127.0), -128.0).astype("int8")

    return te.compute(g.out_shape, transform, name="bconv2d_output")


def _no_fma(product):
    """Keep LLVM from contracting ``product + ...`` into an FMA: LCE rounds the product first."""
    return tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", product)


def _legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    attrs = _attrs(call)
    x, w = call.args[:2]
    x_shape, _ = static_shape(OP, "input", x)
    w_shape, _ = static_shape(OP, "filter", w)
    g = Conv2dGeometry(x_shape, w_shape, attrs)
    accumulation = accumulation_for(tvm.target.Target.current(allow_none=True), g)
    w_blocked = bb.emit(bb.call_te(blocked_filter_compute, w, accumulation,
                                   primfunc_name_hint="bnn_bconv2d_block_filter"))
    if attrs["out_dtype"] == PACKED_DTYPE:
        params = [call.args[2]]
    else:
        multiplier, bias = call.args[2], call.args[3]
        int8_out = attrs["out_dtype"] == "int8"
        scale = attrs["out_scale"] if int8_out else 1.0
        zero_point = attrs["out_zero_point"] if int8_out else 0
        params = [
            bb.emit(bb.call_te(folded_multiplier_compute, multiplier, scale, primfunc_name_hint="bnn_bconv2d_fold")),
            bb.emit(bb.call_te(folded_bias_compute, multiplier, bias, g.depth, scale, zero_point,
                               primfunc_name_hint="bnn_bconv2d_fold")),
        ]
        if g.zero_padding:
            params.append(bb.emit(bb.call_te(zero_padding_correction_compute, w, multiplier, attrs, g.in_h, g.in_w,
                                             primfunc_name_hint="bnn_bconv2d_padding_correction")))
    return bb.call_te(bconv2d_compute, x, w_blocked, *params, attrs=attrs, filter_shape=w_shape,
                      accumulation=accumulation, primfunc_name_hint="bnn_bconv2d")


register_op(OP, "Binary 2-D convolution on bitpacked NHWC input (LceBconv2d).", _infer_type, _legalize)
