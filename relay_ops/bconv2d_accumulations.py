"""The TE computes of ``relax.bnn.bconv2d``'s popcount accumulations, one per kind, and the filter layouts
they read.

Which kind a layer takes is the strategy layer's choice (``strategies.accumulation``), from the target and the
geometry; every kind gives the same ``accum[n, i, j, o]``, the XOR-popcount over the window's bits, as int32.
The block a schedule tiles is tagged ``schedule_rule``: ``bconv2d_accum`` (int32 per word), ``bconv2d_lanes``
(u16 lanes per channel) or ``bconv2d_quads`` (u16 lanes of 4 channels per register).
"""

from __future__ import annotations

from tvm import te, tirx

from ._common import PACKED_DTYPE, round_up
from ._lanes import (
    CHANNEL_BLOCK,
    HALFWORD_LANES,
    QUAD_CHANNELS,
    WORDS_PER_CHUNK,
    halfword_popcount,
    sum_lanes,
)
from .bconv2d_geometry import RULE, Conv2dGeometry

# Filter layouts: channels contiguous (the vector lanes), or words contiguous and padded to whole chunks.
CHANNELS_INNERMOST = ("words", "channel_halfwords", "quad_words")
ACCUMULATIONS = ("words", "channel_halfwords", "halfwords", "pixel_halfwords", "quad_words", "quad_halves",
                 "pixel_quad_halves")


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

    if accumulation in CHANNELS_INNERMOST:
        return te.compute((blocks, kernel_h, kernel_w, words, CHANNEL_BLOCK), weight, name="bconv2d_filter_blocked")
    padded = round_up(words, WORDS_PER_CHUNK)
    repeated = accumulation in ("pixel_halfwords", "pixel_quad_halves")
    return te.compute((blocks, kernel_h, kernel_w, CHANNEL_BLOCK, padded),
                      lambda b, p, q, lane, c: weight(b, p, q, c % words if repeated else c, lane),
                      name="bconv2d_filter_blocked")


def accumulate(x, w_blocked, g: Conv2dGeometry, accumulation: str) -> te.Tensor:
    """``accum[n, i, j, o]`` (int32) by ``accumulation``: see :func:`.bconv2d.bconv2d_compute`.

    ``pixel_halfwords`` and ``pixel_quad_halves`` give whole chunks of pixels along the width, so that the
    schedule computes the sums chunk by chunk; the output reads its ``out_w`` columns.
    """
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"unknown bconv2d accumulation {accumulation!r}; known: {', '.join(ACCUMULATIONS)}")
    if accumulation in ("words", "channel_halfwords"):
        return _accumulate_per_word(_padded_input(x, g, g.filter_words), w_blocked, g,
                                    halves=accumulation == "channel_halfwords")
    if accumulation == "pixel_halfwords":
        return _accumulate_pixel_halfwords(x, w_blocked, g)
    if accumulation == "quad_words":
        return _accumulate_quad_words(x, w_blocked, g)
    if accumulation in ("quad_halves", "pixel_quad_halves"):
        return _accumulate_quad_halves(x, w_blocked, g, shares_chunks=accumulation == "pixel_quad_halves")
    return _accumulate_halfwords(x, w_blocked, g)


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



def _accumulate_per_word(xpad, w_blocked, g: Conv2dGeometry, halves: bool):
    """Per word of the window: its popcount into int32 (``words``), or each halfword's into a u16 lane of its
    channel, the two lanes summed after the reduction (``channel_halfwords``: AVX2's VPMADDUBSW)."""
    blocks = int(w_blocked.shape[0])
    p = te.reduce_axis((0, g.kernel_h), name="p")
    q = te.reduce_axis((0, g.kernel_w), name="q")
    c = te.reduce_axis((0, g.filter_words), name="c")

    def count(n, i, j, o, *half):
        word = _group_offset(o, g, g.filter_words) + c
        xv = xpad[n, i * g.stride_h + p * g.dilation_h, j * g.stride_w + q * g.dilation_w, word]
        wv = w_blocked[o // CHANNEL_BLOCK, p, q, c, o % CHANNEL_BLOCK]
        bits = halfword_popcount(xv, wv, half[0]) if halves else tirx.popcount(tirx.bitwise_xor(xv, wv))
        return te.sum(bits, axis=[p, q, c])

    shape = (g.batch, g.out_h, g.out_w, blocks * CHANNEL_BLOCK)
    if not halves:
        return te.compute(shape, count, name="bconv2d_accum", attrs={"schedule_rule": RULE})
    lanes = te.compute((*shape, 2), count, name="bconv2d_lanes", attrs={"schedule_rule": RULE})
    return sum_lanes(lanes, "bconv2d_accum")


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
        return te.sum(halfword_popcount(xv, wv, lane), axis=[p, q, k])

    return sum_lanes(te.compute((g.batch, g.out_h, g.out_w, blocks * CHANNEL_BLOCK, HALFWORD_LANES), lane_count,
                                name="bconv2d_lanes", attrs={"schedule_rule": RULE}), "bconv2d_accum")


def _accumulate_pixel_halfwords(x, w_blocked, g: Conv2dGeometry):
    """``halfwords`` with ``4 / words`` consecutive output pixels per 128-bit chunk (taps of 1 or 2 words).

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
        return te.sum(halfword_popcount(xv, wv, lane), axis=[p, q, k])

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
        return te.sum(halfword_popcount(xv, wv, lane), axis=[p, q])

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


