"""ARM (NEON) schedule of binary dense, on the ``halfwords`` accumulation.

The hot loop is the tensor intrinsic ``popcount_acc_1x8_u32u16_neon`` (eor,
cnt, uadalp) over 128-bit chunks of 4 words, on a register tile of
``row_tile`` batch rows x ``channel_tile`` output channels x 8 u16 lanes: each
input chunk is loaded once per row and reused across the channels, each filter
chunk (contiguous in the blocked filter) once per channel and reused across the
rows. The chunk loop is unrolled by ``chunk_tile``. Batch is usually 1, so the
work is split over output channels, in parallel when the layer is large enough
to pay for waking the thread pool. The lanes are summed per channel on the tile;
the output transform is one vectorized pass over [N, Cout] afterwards.

Knobs (defaults in brackets): the channel tile [4], the parallel chunks of
channel tiles [the cores, from 2^16 word XOR-popcounts on; else 1], the row tile
[3 or 2, whichever divides N] and the chunk tile [2 where it divides].
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ...relay_ops._lanes import HALFWORD_LANES, WORDS_PER_CHUNK
from ..generic.accumulator import accumulator_of
from ..generic._util import (
    blocks_by_name,
    extent,
    inline_epilogues,
    largest_divisor,
    parallel_chunks,
    sample_tiles,
    vectorize_channels,
    writes_packed_output,
)
from .intrin import lane_sum_intrin, popcount_acc_intrin

CHANNEL_TILE = 4
MAX_CHANNEL_TILE = 8
ROW_TILES = (3, 2)
CHUNK_TILES = (2,)
OUTPUT_LANES = 16
# 2^16 words are 16k chunks at about 3.5 instructions each: some 20 us on one Cortex-A72 core, against a
# few us to wake the thread pool (estimates: there is no ARM hardware here, and qemu's times mean nothing).
PARALLEL_MIN_WORDS = 1 << 16


def schedule_bdense_neon(sch: s_tir.Schedule, lanes, target: tvm.target.Target) -> s_tir.Schedule | None:
    if accumulator_of(sch, lanes).lanes != HALFWORD_LANES:
        return None  # the "words" accumulation: the generic CPU schedule serves it
    blocks = blocks_by_name(sch)
    accum, output = blocks["bdense_accum"], blocks["bdense_output"]
    packed_output = writes_packed_output(sch, output)
    # Step 1: elementwise epilogues fused by FuseOps join the output transform.
    inline_epilogues(sch, output)

    # Step 2: tile channels (in parallel chunks) x batch rows x chunks of words.
    n, o, lane, k = sch.get_loops(lanes)
    batch, channels, chunks = extent(sch, n), extent(sch, o), extent(sch, k)
    tiles = channels // CHANNEL_TILE
    parallel = parallel_chunks(batch * channels * chunks * WORDS_PER_CHUNK, tiles, PARALLEL_MIN_WORDS, target)
    o_parallel, o_serial, o_inner = sample_tiles(
        sch, o, [parallel, tiles // parallel, CHANNEL_TILE], max_inner=MAX_CHANNEL_TILE)
    row_tile, chunk_tile = largest_divisor(batch, ROW_TILES), largest_divisor(chunks, CHUNK_TILES)
    n_outer, n_inner = sample_tiles(sch, n, [batch // row_tile, row_tile], max_inner=4)
    k_outer, k_inner = sample_tiles(sch, k, [chunks // chunk_tile, chunk_tile], max_inner=4)
    sch.reorder(o_parallel, o_serial, n_outer, k_outer, k_inner, n_inner, o_inner, lane)
    sch.parallel(o_parallel)

    # Step 3: u16 lanes in registers, zeroed before the reduction; the lane loop becomes eor/cnt/uadalp.
    # Unit loops kept throughout: the trace records how many loops each block has, whatever the knobs.
    tile = sch.cache_write(lanes, 0, "local")
    sch.reverse_compute_at(tile, n_outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(lanes, k_outer)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(lane, popcount_acc_intrin(target))
    sch.unroll(k_inner)
    sch.unroll(n_inner)
    sch.unroll(o_inner)

    # Step 4: lanes summed to int32 on the tile (uaddlv); the output transform in one pass, vectorized
    # over channels (a packed output: its bit loop unrolled).
    sch.reverse_compute_at(accum, n_outer, preserve_unit_loops=True)
    sch.compute_inline(tile)
    lane_sum = lane_sum_intrin(target)
    if lane_sum is not None:
        accum_init = sch.decompose_reduction(accum, sch.get_loops(accum)[-1])
        sch.tensorize(sch.get_loops(accum)[-1], lane_sum)
        sch.unroll(sch.get_loops(accum_init)[-1])
    if "bdense_pad" in blocks:
        sch.vectorize(sch.get_loops(blocks["bdense_pad"])[-1])
    if packed_output:
        sch.unroll(sch.get_loops(output)[-1])
    else:
        vectorize_channels(sch, sch.get_loops(output)[-1], OUTPUT_LANES)
    return sch
