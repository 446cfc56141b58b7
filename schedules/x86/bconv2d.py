"""x86 schedule of binary conv2d.

The accumulator is tiled as ``(batch*rows) x col_tile x 32 channels``: rows run
in parallel, a tile of output columns is held in registers (unrolled), and the
32 output channels of one packed word are the vector lanes (two AVX-512
registers of int32, whose popcount is VPOPCNTD where the CPU has it). The
output transform runs on the tile while it is still in registers.

Knobs (defaults in brackets): the column tile [4, 3 or 2, whichever divides the
width], the vector width over output channels [32, one packed word: fewer
lanes free registers where vectors are narrow, as on AVX2] and how far the
reduction is unrolled [not at all].

Without a vector popcount (the ``channel_halfwords`` accumulation: AVX2), the
tile holds u16 lanes, two per output channel, and the hot loop is the tensor
intrinsic ``popcount_acc_8x2_u32u16_avx2`` on 8 channels (one YMM register);
the lanes are summed into int32 on the tile after the reduction. Knobs: the
column tile [8, 7, 4 or 2, whichever divides the width] and the channel tile [8].
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ...relay_ops._lanes import CHANNEL_BLOCK
from ..generic.accumulator import accumulator_of
from ..generic._util import (
    blocks_by_name,
    inline_epilogues,
    parallel_rows,
    sample_column_tile,
    sample_split,
    writes_packed_output,
)
from .intrin import CHANNELS as INTRIN_CHANNELS
from .intrin import POPCOUNT_ACC_AVX2

COLUMN_TILES = (4, 3, 2)
UNROLL_STEPS = (0, 16, 64, 512)
# One YMM register of u16 lanes per 8 channels of a column. QuickNet 224 on AVX2 (Zen 3), 1 thread: a tile of
# 8 columns x 8 channels 8.2 ms, 4 x 8 8.9 ms, 4 x 16 9.4 ms, 4 x 32 10.1-11.7 ms (spilled).
HALFWORD_COLUMN_TILES = (8, 7, 4, 2)
HALFWORD_CHANNEL_TILE = 8


def schedule_bconv2d(sch: s_tir.Schedule, accum, target: tvm.target.Target) -> s_tir.Schedule | None:
    lanes = accumulator_of(sch, accum).lanes
    if lanes not in (0, 2):
        return None  # u16 lanes of 128-bit chunks: ARM's accumulations
    blocks = blocks_by_name(sch)
    output = blocks.get("bconv2d_output")
    if output is None:
        return None
    if lanes == 2:  # channel_halfwords: a channel's two halfwords in u16 lanes
        return _schedule_channel_halfwords(sch, accum, blocks)
    # Step 1: the zero-word padding of the input, parallel over rows.
    if "bconv2d_pad" in blocks:
        parallel_rows(sch, blocks["bconv2d_pad"])
    # Step 2: elementwise epilogues fused by FuseOps (an activation, an add) join the output transform.
    inline_epilogues(sch, output)

    # Step 3: tile the accumulator: rows parallel, columns x one word of channels in registers.
    # Knobs: the column tile; the channels of the tile, which are its vector lanes.
    n, h, w, o, p, q, c = sch.get_loops(accum)
    w_outer, w_inner = sample_column_tile(sch, w, COLUMN_TILES)
    o_outer, o_inner = sample_split(sch, o, CHANNEL_BLOCK, max_inner=CHANNEL_BLOCK)
    sch.reorder(n, h, w_outer, o_outer, p, q, c, w_inner, o_inner)
    rows = sch.fuse(n, h)
    sch.parallel(rows)

    # Step 4: accumulate into a register tile, initialised before the reduction.
    tile = sch.cache_write(accum, 0, "local")
    sch.reverse_compute_at(tile, o_outer)
    sch.vectorize(o_inner)
    sch.unroll(w_inner)
    # Knob: how far to unroll the reduction over kernel taps and words (a loop pragma, so that replaying
    # the trace with another decision changes it); default: not at all.
    unroll_steps = sch.sample_categorical(UNROLL_STEPS, [1 / len(UNROLL_STEPS)] * len(UNROLL_STEPS), decision=0)
    sch.annotate(p, "pragma_auto_unroll_max_step", unroll_steps)
    sch.annotate(p, "pragma_unroll_explicit", 1)
    init = sch.decompose_reduction(accum, p)
    sch.vectorize(sch.get_loops(init)[-1])

    # Step 5: the output transform consumes the tile in place.
    sch.reverse_compute_at(output, o_outer)
    sch.compute_inline(tile)
    return sch


def _schedule_channel_halfwords(sch: s_tir.Schedule, lanes, blocks) -> s_tir.Schedule:
    accum, output = blocks["bconv2d_accum"], blocks["bconv2d_output"]
    if "bconv2d_pad" in blocks:
        parallel_rows(sch, blocks["bconv2d_pad"])
    inline_epilogues(sch, output)

    # Tile columns x channels (x their two lanes), rows parallel. Knobs: the column and the channel tile.
    n, h, w, o, half, p, q, c = sch.get_loops(lanes)
    w_outer, w_inner = sample_column_tile(sch, w, HALFWORD_COLUMN_TILES)
    o_groups, o_intrin = sch.split(o, [None, INTRIN_CHANNELS])
    o_outer, o_mid = sample_split(sch, o_groups, HALFWORD_CHANNEL_TILE // INTRIN_CHANNELS,
                                  max_inner=CHANNEL_BLOCK // INTRIN_CHANNELS)
    sch.reorder(n, h, w_outer, o_outer, p, q, c, w_inner, o_mid, o_intrin, half)
    sch.parallel(sch.fuse(n, h))

    # u16 lanes in registers, zeroed before the reduction; 8 channels' lanes per intrinsic.
    tile = sch.cache_write(lanes, 0, "local")
    sch.reverse_compute_at(tile, o_outer)
    init = sch.decompose_reduction(lanes, p)
    sch.vectorize(sch.fuse(*sch.get_loops(init)[-2:]))
    sch.tensorize(o_intrin, POPCOUNT_ACC_AVX2)
    sch.unroll(w_inner)
    sch.unroll(o_mid)

    # Lanes summed into int32 and the output transform, on the tile, vectorized over its channels.
    sch.reverse_compute_at(accum, o_outer, preserve_unit_loops=True)
    sch.reverse_compute_at(output, o_outer, preserve_unit_loops=True)
    sch.compute_inline(tile)
    if not writes_packed_output(sch, output):
        sch.vectorize(sch.get_loops(output)[-1])
    return sch
