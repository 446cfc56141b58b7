"""x86 schedule of binary dense, on the ``words`` accumulation.

The accumulator [N, blocks * 32] is tiled as ``row_tile x channel_tile x 32``
output channels held in registers: each input word is broadcast once and XORed
with the words of ``channel_tile`` blocks of 32 output channels (contiguous in
the blocked filter: two AVX-512 registers of int32 per block, counted by
VPOPCNTD; AVX2 counts by nibble lookup), and each filter load serves
``row_tile`` batch rows. The word loop is unrolled by ``word_tile``. Batch is
usually 1, so the work is split over output channel blocks, in parallel when
the layer is large enough to pay for waking the thread pool.

A packed output is made from the tile while it is in registers (a tile is whole
output words). A float or int8 output is one vectorized pass over [N, Cout]
after the accumulation: done per tile, the last tile's bounds check on Cout
would keep the whole transform scalar.

Knobs (defaults in brackets): the channel tile [2 blocks where they divide, else
1], the parallel chunks of channel tiles [the cores, from 2^18 word
XOR-popcounts on; else 1], the row tile [4, 3 or 2, whichever divides N] and the
word tile [4 or 2, whichever divides the words].
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ...relay_ops._lanes import CHANNEL_BLOCK
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

CHANNEL_TILES = (2,)
ROW_TILES = (4, 3, 2)
WORD_TILES = (4, 2)
OUTPUT_LANES = 16
# Below this many XOR-popcounts of words (N * Cout * words), waking the thread pool costs more than a
# second core saves (measured here: waking it about 3 us; 2^17 words about 9 us on one core).
PARALLEL_MIN_WORDS = 1 << 18


def schedule_bdense(sch: s_tir.Schedule, accum, target: tvm.target.Target) -> s_tir.Schedule | None:
    if accumulator_of(sch, accum).lanes:
        return None  # u16 lanes: the "halfwords" accumulation is ARM's
    output = blocks_by_name(sch)["bdense_output"]
    packed_output = writes_packed_output(sch, output)
    # Step 1: elementwise epilogues fused by FuseOps (an activation, an add) join the output transform.
    inline_epilogues(sch, output)

    # Step 2: tile channel blocks (in parallel chunks) x batch rows x words.
    n, o, c = sch.get_loops(accum)
    batch, blocks, words = extent(sch, n), extent(sch, o) // CHANNEL_BLOCK, extent(sch, c)
    o_blocks, lanes = sch.split(o, [None, CHANNEL_BLOCK])
    channel_tile = largest_divisor(blocks, CHANNEL_TILES)
    chunks = parallel_chunks(batch * blocks * CHANNEL_BLOCK * words, blocks // channel_tile, PARALLEL_MIN_WORDS, target)
    b_parallel, b_serial, b_tile = sample_tiles(
        sch, o_blocks, [chunks, blocks // channel_tile // chunks, channel_tile], max_inner=4)
    row_tile, word_tile = largest_divisor(batch, ROW_TILES), largest_divisor(words, WORD_TILES)
    n_outer, n_inner = sample_tiles(sch, n, [batch // row_tile, row_tile], max_inner=4)
    c_outer, c_inner = sample_tiles(sch, c, [words // word_tile, word_tile], max_inner=8)
    sch.reorder(b_parallel, b_serial, n_outer, c_outer, c_inner, n_inner, b_tile, lanes)
    sch.parallel(b_parallel)

    # Step 3: accumulate into a register tile, zeroed before the reduction.
    # Unit loops kept throughout: the trace records how many loops each block has, whatever the knobs.
    tile = sch.cache_write(accum, 0, "local")
    sch.reverse_compute_at(tile, n_outer, preserve_unit_loops=True)
    sch.vectorize(lanes)
    sch.unroll(b_tile)
    sch.unroll(n_inner)
    sch.unroll(c_inner)
    init = sch.decompose_reduction(accum, c_outer)
    sch.vectorize(sch.get_loops(init)[-1])

    # Step 4: packed output words straight from the tile; float/int8 output in one vectorized pass.
    if packed_output:
        sch.reverse_compute_at(output, n_outer, preserve_unit_loops=True)
        sch.compute_inline(tile)
    else:
        sch.vectorize(sch.get_loops(tile)[-1])
        vectorize_channels(sch, sch.get_loops(output)[-1], OUTPUT_LANES)
    return sch
