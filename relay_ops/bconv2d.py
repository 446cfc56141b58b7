"""``relax.bnn.bconv2d``: binary 2-D convolution with LCE's LceBconv2d semantics.

Inputs are bitpacked (see :mod:`bitpack`): ``x`` is NHWC with packed channels,
``w`` is OHWI with packed input channels. With ``accum`` the XOR-popcount over
the ``K = kh * kw * channels_in / groups`` bits under the window, the true dot
product of the +-1 values is ``K - 2 * accum``.

Outputs are LCE's (see :mod:`._output_transform`, shared with bdense): float32
``act(K - 2 * accum) * m + b`` in LCE's folded formula, int8 (the same rescaled
to the output scale and zero point), or bitpacked ``accum > threshold[c]``.

``pad_value`` 1 pads with +1 (bit 0: free). ``pad_value`` 0 pads with 0 for
SAME padding; the padded taps' +1 contributions are then subtracted, times
``-m``, as LCE's zero-padding correction does (exactly, also where LCE's own
correction assumes the window is smaller than the image).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.target.codegen import target_has_features as has_features

from ._common import (
    BITS_PER_WORD,
    PACKED_DTYPE,
    BnnOpError,
    attr,
    check_choice,
    check_positive_pair,
    make_call,
    packed_words,
    register_op,
    static_shape,
    window_output,
)
from ._output_transform import (
    DEFAULT_OUTPUT_FORMULA,
    TRANSFORM_ATTRS,
    ACTIVATIONS,
    OUT_DTYPES,
    infer_binary_mac_type,
    legalize_folded_constants,
    packed_output_compute,
    packed_output_ref,
    scaled_output_compute,
    scaled_output_ref,
    transform_args,
    transform_attrs,
)
from .bitpack import unpack_bits

OP = "relax.bnn.bconv2d"
RULE = "bnn_bconv2d"
# Output channels are computed in blocks of one packed word; the accumulator is
# padded to whole blocks so that schedules vectorize without remainder loops.
CHANNEL_BLOCK = BITS_PER_WORD
# The "halfwords" accumulation (ARM NEON) counts bits per 16-bit lane of 128-bit chunks of 4 words.
WORDS_PER_CHUNK = 4
HALFWORD_LANES = 8
UINT16_MAX = 2**16 - 1
# The "quad_halves" accumulation: 4 output channels share a register of 8 u16 lanes, lane 2c + h counting the
# set bits of half h (2 words) of the chunk for channel c.
QUAD_CHANNELS = 4
QUAD_HALF_BITS = 64


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
    output_formula: str = DEFAULT_OUTPUT_FORMULA,
) -> relax.Call:
    """Binary conv2d. Float/int8 output takes ``multiplier`` and ``bias``; packed output takes ``thresholds``."""
    return make_call(
        OP,
        [x, w, *transform_args(OP, out_dtype, multiplier, bias, thresholds)],
        channels_in=int(channels_in),
        strides=[int(s) for s in strides],
        dilations=[int(d) for d in dilations],
        padding=padding,
        pad_value=int(pad_value),
        **transform_attrs(activation, out_dtype, out_scale, out_zero_point, output_formula),
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
        # LCE adds its padding correction after the activation's clamp; "dot" subtracts it before.
        if self.zero_padding and attrs["activation"] != "NONE" and attrs["output_formula"] == "lce":
            raise BnnOpError(
                OP, "fused_activation_function",
                "LCE's formula fuses activations only with VALID or one-padding (pad_values=1)",
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


def _attrs(call: relax.Call) -> dict:
    keys = ("channels_in", "strides", "dilations", "padding", "pad_value", *TRANSFORM_ATTRS)
    return {k: attr(call, k) for k in keys}


def _infer_type(call: relax.Call) -> relax.TensorType:
    return infer_binary_mac_type(OP, call, _attrs(call), Conv2dGeometry)


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
        return packed_output_ref(accum, thresholds)
    correction = None
    if g.zero_padding:  # the dot product the +1 padding added: subtracted exactly ("dot"), or LCE's float term
        lce = attrs.get("output_formula", DEFAULT_OUTPUT_FORMULA) == "lce"
        correction = (-multiplier.astype(np.float32)) * padded_dot.astype(np.float32) if lce else padded_dot
    return scaled_output_ref(accum, attrs, g.depth, multiplier, bias, correction)


# ---------------------------------------------------------------- TE computes
#
# Legalization emits the weight-only stages (filter blocking, folded output
# constants, zero-padding correction) as functions of their own: their inputs
# are constants, so FoldConstant evaluates them at compile time and the kernel
# reads ready-made tables. Only padding, accumulation and the output transform
# run per inference.


def blocked_filter_compute(w: te.Tensor, accumulation: str = "words") -> te.Tensor:
    """The filter OHWI in blocks of 32 output channels, zero beyond Cout.

    ``words``, ``channel_halfwords`` and ``quad_words``: [block, kh, kw, word, channel]: channels contiguous,
    the vector lanes.
    ``halfwords``: [block, kh, kw, channel, word]: words contiguous and padded to whole 128-bit chunks.
    ``pixel_halfwords`` and ``pixel_quad_halves``: [block, kh, kw, channel, 4]: a tap's 1 or 2 words repeated
    to fill the chunk, once per pixel that shares it. ``quad_halves`` as ``halfwords``.
    """
    channels_out, kernel_h, kernel_w, words = (int(d) for d in w.shape)
    blocks = (channels_out + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    zero = tirx.const(0, PACKED_DTYPE)

    def weight(block, p, q, c, lane):
        o = block * CHANNEL_BLOCK + lane
        inside = tirx.all(o < channels_out, c < words)
        return tirx.if_then_else(inside, w[tirx.min(o, channels_out - 1), p, q, tirx.min(c, words - 1)], zero)

    if accumulation in ("words", "channel_halfwords", "quad_words"):
        return te.compute((blocks, kernel_h, kernel_w, words, CHANNEL_BLOCK), weight, name="bconv2d_filter_blocked")
    padded = _round_up(words, WORDS_PER_CHUNK)
    repeated = accumulation in ("pixel_halfwords", "pixel_quad_halves")
    return te.compute((blocks, kernel_h, kernel_w, CHANNEL_BLOCK, padded),
                      lambda b, p, q, lane, c: weight(b, p, q, c % words if repeated else c, lane),
                      name="bconv2d_filter_blocked")


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def accumulation_for(target, g: Conv2dGeometry) -> str:
    """How ``target`` accumulates the popcounts of ``g``, when its u16 lanes cannot overflow.

    On aarch64 (NEON popcount into u16 lanes of 128-bit chunks, 4 output channels per register): ``quad_words``
    for taps of one word; else, where a lane (64 bits per chunk) cannot overflow, ``quad_halves``, or
    ``pixel_quad_halves`` for taps of 2 words, whose 2 pixels share each chunk (see ``_shared_chunk_rows``); all
    three for one group only. Otherwise on ARM (armv7, and aarch64 where those do not apply) one register per
    channel: ``pixel_halfwords`` where a tap has 1 or 2 words (one group), 4 or 2 pixels sharing each chunk,
    else ``halfwords``, a pixel's words padded to whole chunks. On x86 with AVX2 but without a vector popcount
    instruction, for one group (the channels of a register share the input word): ``channel_halfwords``, the byte counts of each output channel's
    word added pairwise into its two u16 lanes (VPSHUFB + VPMADDUBSW), summed once after the reduction instead
    of widened to int32 every word. Else ``words`` (int32 per word).
    """
    if target is None or target.kind.name != "llvm":
        return "words"
    # Each chunk (or word) adds at most 16 to a lane; deeper, the lanes would need widening mid-reduction.
    if "arm_cpu" not in list(target.keys):
        fits = g.kernel_h * g.kernel_w * g.filter_words * 16 <= UINT16_MAX
        if fits and g.groups == 1 and has_features("avx2", target) and not has_features("avx512vpopcntdq", target):
            return "channel_halfwords"
        return "words"
    chunks = _round_up(g.filter_words, WORDS_PER_CHUNK) // WORDS_PER_CHUNK
    if g.kernel_h * g.kernel_w * chunks * 16 > UINT16_MAX:
        return "words"
    one_group = g.groups == 1  # a quad's 4 channels read one input chunk, and 2 pixels' chunks one group's words
    if one_group and "aarch64" in str(target.attrs.get("mtriple", "")):
        if g.filter_words == 1:
            return "quad_words"
        if g.kernel_h * g.kernel_w * chunks * QUAD_HALF_BITS <= UINT16_MAX:
            return "pixel_quad_halves" if g.filter_words == 2 else "quad_halves"
    return "pixel_halfwords" if g.filter_words in (1, 2) and one_group else "halfwords"


def zero_padding_correction_compute(w: te.Tensor, multiplier: te.Tensor, attrs: dict, in_h: int, in_w: int):
    """Per output pixel and channel, the dot product the +1 padding wrongly added: as such (``"dot"``, subtracted
    from the dot product), or times ``-m`` (``"lce"``, LCE's correction term)."""
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
    if attrs["output_formula"] == "dot":
        return count
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
    summed: per word into int32 (``words``), per halfword of each channel's
    word into two uint16 lanes summed afterwards (``channel_halfwords``), or
    per 16-bit lane of 128-bit chunks into uint16 lanes summed afterwards
    (``halfwords``, NEON's uadalp), the chunks possibly shared by consecutive
    pixels (``pixel_halfwords``), or per half chunk of 4 channels at a time
    (``quad_halves``, ``pixel_quad_halves``: see :func:`_accumulate_quad_halves`), or per halfword of 4
    channels' one-word taps (``quad_words``: see :func:`_accumulate_quad_words`).
    """
    g = Conv2dGeometry([int(d) for d in x.shape], list(filter_shape), attrs)
    if accumulation == "words":
        accum = _accumulate_words(_padded_input(x, g, g.filter_words), w_blocked, g)
    elif accumulation == "channel_halfwords":
        accum = _accumulate_channel_halfwords(_padded_input(x, g, g.filter_words), w_blocked, g)
    elif accumulation == "pixel_halfwords":
        accum = _accumulate_pixel_halfwords(x, w_blocked, g)
    elif accumulation == "quad_words":
        accum = _accumulate_quad_words(x, w_blocked, g)
    elif accumulation in ("quad_halves", "pixel_quad_halves"):
        accum = _accumulate_quad_halves(x, w_blocked, g, shares_chunks=accumulation == "pixel_quad_halves")
    else:
        accum = _accumulate_halfwords(x, w_blocked, g)
    leading = [g.batch, g.out_h, g.out_w]  # pixel_halfwords' accum has whole chunks of pixels
    if attrs["out_dtype"] == PACKED_DTYPE:
        return packed_output_compute(accum, params[0], g.channels_out, name="bconv2d_output", leading=leading)
    multiplier, bias, *padding_correction = params

    def correction(index):  # the table is [out_h, out_w, Cout]
        return padding_correction[0][index[1:]]

    return scaled_output_compute(accum, multiplier, bias, depth=g.depth, activation=attrs["activation"],
                                 out_dtype=attrs["out_dtype"], formula=attrs["output_formula"], channels_out=g.channels_out, name="bconv2d_output",
                                 correction=correction if padding_correction else None, leading=leading)


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


def _accumulate_channel_halfwords(xpad, w_blocked, g: Conv2dGeometry):
    """``words`` with each channel's popcount kept in two u16 lanes, its word's halves, summed at the end."""
    blocks = int(w_blocked.shape[0])
    p = te.reduce_axis((0, g.kernel_h), name="p")
    q = te.reduce_axis((0, g.kernel_w), name="q")
    c = te.reduce_axis((0, g.filter_words), name="c")

    def lane_count(n, i, j, o, half):
        word = _group_offset(o, g, g.filter_words) + c
        xv = xpad[n, i * g.stride_h + p * g.dilation_h, j * g.stride_w + q * g.dilation_w, word]
        wv = w_blocked[o // CHANNEL_BLOCK, p, q, c, o % CHANNEL_BLOCK]
        return te.sum(_halfword_popcount(xv, wv, half), axis=[p, q, c])

    return _sum_lanes(te.compute((g.batch, g.out_h, g.out_w, blocks * CHANNEL_BLOCK, 2), lane_count,
                                 name="bconv2d_lanes", attrs={"schedule_rule": RULE}))


def _sum_lanes(lanes: te.Tensor) -> te.Tensor:
    """The int32 sum of the u16 lanes (the last axis) of each output pixel and channel."""
    lane = te.reduce_axis((0, int(lanes.shape[-1])), name="lane")
    return te.compute(lanes.shape[:4], lambda n, i, j, o: te.sum(lanes[n, i, j, o, lane].astype("int32"), axis=lane),
                      name="bconv2d_accum")


def _halfword_popcount(xv, wv, lane):
    """The set bits of halfword ``lane % 2`` of ``xv ^ wv``, as uint16: one u16 lane of NEON's cnt + uadalp."""
    # In int64 because relax makes every index int64 and the lane index takes part in the shift.
    bits = tirx.bitwise_xor(xv, wv).astype("int64")
    half = tirx.bitwise_and(tirx.shift_right(bits, lane % 2 * 16), tirx.const(UINT16_MAX, "int64"))
    return tirx.popcount(half).astype("uint16")


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
        return te.sum(_halfword_popcount(xv, wv, lane), axis=[p, q, k])

    return _sum_lanes(te.compute((g.batch, g.out_h, g.out_w, blocks * CHANNEL_BLOCK, HALFWORD_LANES), lane_count,
                                 name="bconv2d_lanes", attrs={"schedule_rule": RULE}))


def _accumulate_pixel_halfwords(x, w_blocked, g: Conv2dGeometry):
    """``halfwords`` with ``4 / words`` consecutive output pixels per 128-bit chunk (see ``accumulation_for``).

    Tap ``q`` of pixels ``j .. j + P - 1`` reads one contiguous chunk of ``_shared_chunk_rows``. The filter
    chunk repeats the tap's words P times, so lane ``l`` of the chunk counts pixel ``j + l // (8 / P)``.
    """
    pixels = WORDS_PER_CHUNK // g.filter_words
    chunks = (g.out_w + pixels - 1) // pixels
    blocks = int(w_blocked.shape[0])
    xrows, chunk_start = _shared_chunk_rows(x, g, chunks * pixels)
    p = te.reduce_axis((0, g.kernel_h), name="p")
    q = te.reduce_axis((0, g.kernel_w), name="q")
    k = te.reduce_axis((0, 1), name="k")  # one chunk per tap: the loop nest of ``halfwords``, so one schedule

    def lane_count(n, i, chunk, o, lane):
        word = k * WORDS_PER_CHUNK + lane // 2
        xv = xrows[n, i * g.stride_h + p * g.dilation_h, chunk_start(chunk * pixels, q) + word]
        wv = w_blocked[o // CHANNEL_BLOCK, p, q, o % CHANNEL_BLOCK, word]
        return te.sum(_halfword_popcount(xv, wv, lane), axis=[p, q, k])

    lanes = te.compute((g.batch, g.out_h, chunks, blocks * CHANNEL_BLOCK, HALFWORD_LANES), lane_count,
                       name="bconv2d_lanes", attrs={"schedule_rule": RULE})
    per_pixel = HALFWORD_LANES // pixels
    lane = te.reduce_axis((0, per_pixel), name="lane")
    # Whole chunks of pixels, so that the schedule computes the sums chunk by chunk; the output reads out_w.
    return te.compute(
        (g.batch, g.out_h, chunks * pixels, blocks * CHANNEL_BLOCK),
        lambda n, i, j, o: te.sum(lanes[n, i, j // pixels, o, j % pixels * per_pixel + lane].astype("int32"),
                                  axis=lane),
        name="bconv2d_accum")


def _accumulate_quad_halves(x, w_blocked, g: Conv2dGeometry, shares_chunks: bool):
    r"""Popcounts of 4 output channels per register of 8 u16 lanes, by half chunk (LCE's 4-channel register).

    .. math::
        L[n, i, j, b, 2c + h] = \sum_{p, q, k, u} \mathrm{popcount}\big(\hat x[\ldots, 4k + 2h + u]
            \oplus w[4b + c, p, q, 4k + 2h + u]\big)

    NEON computes a lane as eor + cnt (bytes), two ``addp`` merging the byte counts of 4 channels' chunks into
    one register, and one ``uadalp`` per 4 channels. With one pixel per chunk the accumulator sums a channel's
    two halves; where 2 pixels share a chunk (taps of 2 words, ``shares_chunks``), half ``h`` is pixel
    ``2 j + h`` and there is nothing to sum.
    """
    blocks, padded_words = int(w_blocked.shape[0]), int(w_blocked.shape[4])
    quads = blocks * CHANNEL_BLOCK // QUAD_CHANNELS
    pixels = WORDS_PER_CHUNK // g.filter_words if shares_chunks else 1
    columns = (g.out_w + pixels - 1) // pixels
    p = te.reduce_axis((0, g.kernel_h), name="p")
    q = te.reduce_axis((0, g.kernel_w), name="q")
    k = te.reduce_axis((0, 1 if shares_chunks else padded_words // WORDS_PER_CHUNK), name="k")
    u = te.reduce_axis((0, WORDS_PER_CHUNK // 2), name="u")
    if shares_chunks:
        xrows, chunk_start = _shared_chunk_rows(x, g, columns * pixels)
    else:
        xpad = _padded_input(x, g, padded_words)

    def lane_count(n, i, j, quad, lane):
        o = quad * QUAD_CHANNELS + lane // 2
        word = k * WORDS_PER_CHUNK + lane % 2 * 2 + u
        if shares_chunks:
            xv = xrows[n, i * g.stride_h + p * g.dilation_h, chunk_start(j * pixels, q) + word]
        else:
            xv = xpad[n, i * g.stride_h + p * g.dilation_h, j * g.stride_w + q * g.dilation_w,
                      _group_offset(o, g, padded_words) + word]
        wv = w_blocked[o // CHANNEL_BLOCK, p, q, o % CHANNEL_BLOCK, word]
        return te.sum(tirx.popcount(tirx.bitwise_xor(xv, wv)).astype("uint16"), axis=[p, q, k, u])

    lanes = te.compute((g.batch, g.out_h, columns, quads, 2 * QUAD_CHANNELS), lane_count, name="bconv2d_quads",
                       attrs={"schedule_rule": RULE})
    if not shares_chunks:
        return _sum_quad_halves(lanes)
    # Whole chunks of pixels, as in pixel_halfwords; the output reads out_w.
    return te.compute((g.batch, g.out_h, columns * pixels, quads * QUAD_CHANNELS),
                      lambda n, i, j, o: lanes[n, i, j // pixels, o // QUAD_CHANNELS,
                                               o % QUAD_CHANNELS * 2 + j % pixels].astype("int32"),
                      name="bconv2d_accum")


def _sum_quad_halves(lanes: te.Tensor) -> te.Tensor:
    """The int32 outputs of quad registers [N, H, W, quad, 8]: channel ``c``'s two lanes summed."""
    n_, h_, w_, quads, _ = (int(d) for d in lanes.shape)
    half = te.reduce_axis((0, 2), name="half")
    return te.compute((n_, h_, w_, quads * QUAD_CHANNELS), lambda n, i, j, o: te.sum(
        lanes[n, i, j, o // QUAD_CHANNELS, o % QUAD_CHANNELS * 2 + half].astype("int32"), axis=half),
        name="bconv2d_accum")


def _accumulate_quad_words(x, w_blocked, g: Conv2dGeometry):
    r"""Taps of one word: the input word broadcast against 4 output channels' words in one chunk.

    .. math::
        L[n, i, j, b, 2c + h] = \sum_{p, q} \mathrm{popcount}\big(\text{halfword } h \text{ of }
            \hat x[n, i s_h + p d_h, j s_w + q d_w, 0] \oplus w[4b + c, p, q, 0]\big)

    NEON: ``ld1r`` + eor + cnt + one ``uadalp`` per pixel and 4 channels (lane 2c + h, as in ``quad_halves``),
    so that a chunk is never shared by pixels and any stride works.
    """
    quads = int(w_blocked.shape[0]) * CHANNEL_BLOCK // QUAD_CHANNELS
    xpad = _padded_input(x, g, g.filter_words)
    p = te.reduce_axis((0, g.kernel_h), name="p")
    q = te.reduce_axis((0, g.kernel_w), name="q")

    def lane_count(n, i, j, quad, lane):
        o = quad * QUAD_CHANNELS + lane // 2
        xv = xpad[n, i * g.stride_h + p * g.dilation_h, j * g.stride_w + q * g.dilation_w, 0]
        wv = w_blocked[o // CHANNEL_BLOCK, p, q, 0, o % CHANNEL_BLOCK]
        return te.sum(_halfword_popcount(xv, wv, lane), axis=[p, q])

    return _sum_quad_halves(te.compute((g.batch, g.out_h, g.out_w, quads, 2 * QUAD_CHANNELS), lane_count,
                                       name="bconv2d_quads", attrs={"schedule_rule": RULE}))


def _shared_chunk_rows(x, g: Conv2dGeometry, pixels: int):
    """The input padded spatially with zero words (+1), each row laid out so that any ``pixels`` consecutive
    output pixels' words under one tap are contiguous: [N, padded height, flat], and ``chunk_start(j, q)``, the
    flat offset of the words tap ``q`` of pixel ``j`` reads (those of pixels j, j + 1, ... follow).

    Pixel ``j``'s tap ``q`` reads column ``c = j s + q d`` (stride s, dilation d along the width): the columns
    are stored by phase ``c mod s``, then ``c // s``, then word, so pixels j and j + 1 read neighbours.
    Columns read: those of the last chunk's pixels, even beyond out_w (their lanes are never used).
    """
    words, stride = g.filter_words, g.stride_w
    width = (pixels - 1) * stride + (g.kernel_w - 1) * g.dilation_w + 1
    per_phase = (width + stride - 1) // stride

    # (Unit stride and dilation spelled without the phase arithmetic: the same kernels, so the same tuning
    # records, as before strides shared chunks.)
    def padded(n, h, flat):
        if stride == 1:
            column, word = flat // words, flat % words
        else:
            phase, rest = flat // (per_phase * words), flat % (per_phase * words)
            column, word = rest // words * stride + phase, rest % words
        ih, iw = h - g.pad_top, column - g.pad_left
        inside = tirx.all(ih >= 0, ih < g.in_h, iw >= 0, iw < g.in_w)
        source = x[n, tirx.max(tirx.min(ih, g.in_h - 1), 0), tirx.max(tirx.min(iw, g.in_w - 1), 0), word]
        return tirx.if_then_else(inside, source, tirx.const(0, PACKED_DTYPE))

    def chunk_start(j, q):
        column = q * g.dilation_w if g.dilation_w > 1 else q
        if stride == 1:
            return (j + column) * words
        return (column % stride * per_phase + j + column // stride) * words

    rows = te.compute((g.batch, g.in_h + g.pad_top + g.pad_bottom, stride * per_phase * words), padded,
                      name="bconv2d_pad")
    return rows, chunk_start


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
        params = legalize_folded_constants(bb, call, attrs, g.depth, "bconv2d")
        if g.zero_padding:
            multiplier = call.args[2]
            params.append(bb.emit(bb.call_te(zero_padding_correction_compute, w, multiplier, attrs, g.in_h, g.in_w,
                                             primfunc_name_hint="bnn_bconv2d_padding_correction")))
    return bb.call_te(bconv2d_compute, x, w_blocked, *params, attrs=attrs, filter_shape=w_shape,
                      accumulation=accumulation, primfunc_name_hint="bnn_bconv2d")


register_op(OP, "Binary 2-D convolution on bitpacked NHWC input (LceBconv2d).", _infer_type, _legalize)
