"""ARM NEON schedules of binary conv2d: the quad accumulations (aarch64) and the halfword ones (armv7, and the
aarch64 layers the quads cannot take).

``quad_halves``, ``pixel_quad_halves`` and ``quad_words`` (aarch64): a register of 8 u16 lanes per pixel and 4
output channels, as in LCE's BinaryKernelNeon8x4. Per 128-bit input chunk and 4 channels the intrinsic
``popcount_acc_4x8_u32u16_neon`` does 4 eor + 4 cnt + 3 addp + 1 uadalp: the same 3 NEON instructions per 128
binary MACs as one uadalp per channel (Cortex-A72's two NEON pipes bound both at 1.5 cycles), but a quarter of
the accumulators, so the register tile reaches 7 columns x 8 channels and loads stay off the 3-wide dispatch,
and a quarter of the lane sums (one uaddlp per 4 outputs instead of an uaddlv and a lane insert per output).
Taps of one word broadcast the input word against 4 channels' words (``quad_words``). Knobs: the column tile
[4, 7 or 2, whichever divides the width] and the tile of channel quads [2].

``halfwords`` and ``pixel_halfwords``: the tensor intrinsic ``popcount_acc_1x8_u32u16_neon`` (eor, cnt,
uadalp) over 128-bit chunks, on a register tile of ``col_tile`` chunks of output pixels x 4 output channels x
8 u16 lanes. A chunk holds one pixel (``halfwords``) or, for taps of 1 or 2 words, 4 or 2 consecutive pixels
(``pixel_halfwords``): the loop nest is the same. Knobs: the column tile [4 or 2, whichever divides the
width] and the channel tile [4]. Alternative design space for tuning: the lane loop vectorized by LLVM
instead of tensorized [tensorized].

Rows run in parallel in both.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ...relay_ops._lanes import HALFWORD_LANES, QUAD_CHANNELS
from ..generic.accumulator import accumulator_of
from ..generic._util import (
    blocks_by_name,
    chosen,
    declare_alternative,
    extent,
    inline_epilogues,
    parallel_rows,
    sample_column_tile,
    sample_split,
    writes_packed_output,
)
from .intrin import (
    POPCOUNT_ACC_QUAD_NEON,
    POPCOUNT_ACC_QUAD_WORD_NEON,
    QUAD_SPLIT_NEON,
    QUAD_SUM_NEON,
    lane_sum_intrin,
    popcount_acc_intrin,
)

COLUMN_TILES = (4, 2)
CHANNEL_TILE = 4
MAX_CHANNEL_TILE = 8
# quad_halves: one register per pixel and 4 channels, so the register tile can hold 7 columns x 8 channels.
QUAD_COLUMN_TILES = (4, 7, 2)
QUAD_TILE = 2
MAX_QUAD_TILE = 4
VECTORIZED_LANES = declare_alternative(
    "arm_bconv2d_vectorized_lanes", "the NEON bconv's lane loop vectorized by LLVM instead of tensorized")


def schedule_bconv2d_neon(sch: s_tir.Schedule, lanes, target: tvm.target.Target) -> s_tir.Schedule | None:
    accumulator = accumulator_of(sch, lanes)
    if accumulator.lanes != HALFWORD_LANES or accumulator.channels_per_register != 1:
        return None  # "words" (the generic CPU schedule serves it), or the quads
    blocks = blocks_by_name(sch)
    accum, output = blocks["bconv2d_accum"], blocks["bconv2d_output"]
    # Step 1: padding and group re-layout of the input, parallel over rows.
    if "bconv2d_pad" in blocks:
        parallel_rows(sch, blocks["bconv2d_pad"])
    inline_epilogues(sch, output)

    # Step 2: tile pixels x channels x lanes; rows parallel.
    # Knobs: the column tile and the channel tile (together, the register tile).
    n, h, w, o, lane, p, q, k = sch.get_loops(lanes)
    w_outer, w_inner = sample_column_tile(sch, w, COLUMN_TILES)
    o_outer, o_inner = sample_split(sch, o, CHANNEL_TILE, max_inner=MAX_CHANNEL_TILE)
    sch.reorder(n, h, w_outer, o_outer, p, q, k, w_inner, o_inner, lane)
    sch.parallel(sch.fuse(n, h))

    # Step 3: u16 lanes in registers, zeroed before the reduction; the lane loop becomes eor/cnt/uadalp.
    # (Alternatively LLVM vectorizes it: before the reduction is split off its init, as vectorize wants.)
    tile = sch.cache_write(lanes, 0, "local")
    sch.reverse_compute_at(tile, o_outer)
    vectorized = chosen(VECTORIZED_LANES)
    if vectorized:
        sch.vectorize(lane)
    init = sch.decompose_reduction(lanes, p)
    sch.vectorize(sch.get_loops(init)[-1])
    if not vectorized:
        sch.tensorize(lane, popcount_acc_intrin(target))
    sch.unroll(w_inner)
    sch.unroll(o_inner)

    # Step 4: lanes summed to int32 on the tile (a pixel's 8 or 4 lanes in one uaddlv; 2 by LLVM), and the
    # output transform, vectorized over the channel tile.
    # Unit loops kept, and the channel loop vectorized whatever its extent: a trace records how many loops
    # each block has and what it did to them, and must replay under every decision of the knobs.
    sch.reverse_compute_at(accum, o_outer, preserve_unit_loops=True)
    sch.reverse_compute_at(output, o_outer, preserve_unit_loops=True)
    sch.compute_inline(tile)
    lane_sum = lane_sum_intrin(target, extent(sch, sch.get_loops(accum)[-1]))
    if lane_sum is not None and not vectorized:  # the alternative leaves every loop to LLVM
        accum_init = sch.decompose_reduction(accum, sch.get_loops(accum)[-1])
        sch.tensorize(sch.get_loops(accum)[-1], lane_sum)
        sch.unroll(sch.get_loops(accum_init)[-1])
    if not writes_packed_output(sch, output):
        sch.vectorize(sch.get_loops(output)[-1])
    return sch


def schedule_bconv2d_neon_quads(sch: s_tir.Schedule, quads, target: tvm.target.Target) -> s_tir.Schedule | None:
    """The quad accumulations (``quad_halves``, ``pixel_quad_halves``, ``quad_words``): see the module."""
    if accumulator_of(sch, quads).channels_per_register != QUAD_CHANNELS:
        return None
    blocks = blocks_by_name(sch)
    accum, output = blocks["bconv2d_accum"], blocks["bconv2d_output"]
    # Step 1: padding and group re-layout of the input, parallel over rows.
    if "bconv2d_pad" in blocks:
        parallel_rows(sch, blocks["bconv2d_pad"])
    inline_epilogues(sch, output)

    # Step 2: tile pixels (or pairs of pixels sharing a chunk) x quads of channels; rows parallel.
    # quad_halves reduce over taps, chunks and the 2 words of a half (inside the intrinsic); quad_words over taps.
    n, h, w, quad, lane, *reduction = sch.get_loops(quads)
    words_in_lane = reduction[3:]
    w_outer, w_inner = sample_column_tile(sch, w, QUAD_COLUMN_TILES)
    quad_outer, quad_inner = sample_split(sch, quad, QUAD_TILE, max_inner=MAX_QUAD_TILE)
    sch.reorder(n, h, w_outer, quad_outer, *reduction[:3], w_inner, quad_inner, lane, *words_in_lane)
    sch.parallel(sch.fuse(n, h))

    # Step 3: the quad registers zeroed before the reduction; per chunk, 4 channels' eor/cnt/addp/uadalp.
    tile = sch.cache_write(quads, 0, "local")
    sch.reverse_compute_at(tile, quad_outer)
    init = sch.decompose_reduction(quads, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(lane, POPCOUNT_ACC_QUAD_NEON if words_in_lane else POPCOUNT_ACC_QUAD_WORD_NEON)
    sch.unroll(w_inner)
    sch.unroll(quad_inner)

    # Step 4: each register's lanes to 4 int32 (a pixel's halves summed, or 2 pixels' unzipped), then the
    # output transform, vectorized over the channel tile.
    sch.reverse_compute_at(accum, quad_outer, preserve_unit_loops=True)
    sch.reverse_compute_at(output, quad_outer, preserve_unit_loops=True)
    sch.compute_inline(tile)
    if len(sch.get(accum).iter_vars) == 5:  # summing a pixel's two halves
        *_, channel, _half = sch.get_loops(accum)
        _, channel = sch.split(channel, [None, QUAD_CHANNELS])
        accum_init = sch.decompose_reduction(accum, channel)
        sch.tensorize(channel, QUAD_SUM_NEON)
        sch.vectorize(sch.get_loops(accum_init)[-1])
    else:
        *_, pixel, channel = sch.get_loops(accum)
        pixel_outer, pixel = sch.split(pixel, [None, 2])
        channel_outer, channel = sch.split(channel, [None, QUAD_CHANNELS])
        sch.reorder(pixel_outer, channel_outer, pixel, channel)
        sch.tensorize(pixel, QUAD_SPLIT_NEON)
    if not writes_packed_output(sch, output):
        sch.vectorize(sch.get_loops(output)[-1])
    return sch
