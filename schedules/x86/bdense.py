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
"""

from __future__ import annotations

import os

import tvm
from tvm import s_tir

from ...relay_ops.bdense import CHANNEL_BLOCK, RULE
from ...strategies import register
from ..generic._util import blocks_by_name, extent, inline_epilogues, largest_divisor

ROW_TILES = (4, 3, 2)
CHANNEL_TILES = (2,)
WORD_TILES = (4, 2)
OUTPUT_LANES = 16
# Below this many XOR-popcounts of words (N * Cout * words), waking the thread pool costs more than a
# second core saves (measured here: waking it about 3 us; 2^17 words about 9 us on one core).
PARALLEL_MIN_WORDS = 1 << 18


def _num_cores() -> int:
    target = tvm.target.Target.current(allow_none=True)
    cores = target.attrs.get("num-cores") if target is not None else None
    return int(cores) if cores else (os.cpu_count() or 1)


def parallel_chunks(work: int, outer: int, min_work: int) -> int:
    """How many parallel chunks to cut ``outer`` iterations into: the largest divisor of ``outer`` up to
    the target's cores when ``work`` pays for the threads, else 1 (a parallel loop of extent 1 costs nothing)."""
    if work < min_work:
        return 1
    return max(d for d in range(1, min(_num_cores(), outer) + 1) if outer % d == 0)


def vectorize_channels(sch: s_tir.Schedule, loop, lanes: int = OUTPUT_LANES) -> None:
    """Vectorize ``loop`` by ``lanes``; a remainder that does not fill a vector is split off, scalar."""
    width = extent(sch, loop)
    if width < lanes:
        return
    if width % lanes:
        loop, _ = sch.loop_partition(loop, [width // lanes * lanes, None])
    _, inner = sch.split(loop, [None, lanes])
    sch.vectorize(inner)


@register(RULE, ("cpu",))
def schedule_bdense(sch: s_tir.Schedule, accum) -> s_tir.Schedule | None:
    if sch.get(accum).name_hint != "bdense_accum":
        return None  # the "halfwords" accumulation is ARM's
    output = blocks_by_name(sch)["bdense_output"]
    packed_output = len(sch.get_loops(output)) == 3  # the bit reduction
    # Step 1: elementwise epilogues fused by FuseOps (an activation, an add) join the output transform.
    inline_epilogues(sch, output)

    # Step 2: tile channel blocks x batch rows x words. Knobs: the parallel split of the channel blocks,
    # the channel tile (blocks in registers), the row tile and the word tile.
    n, o, c = sch.get_loops(accum)
    batch, blocks, words = extent(sch, n), extent(sch, o) // CHANNEL_BLOCK, extent(sch, c)
    o_blocks, lanes = sch.split(o, [None, CHANNEL_BLOCK])
    channel_tile = largest_divisor(blocks, CHANNEL_TILES)
    chunks = parallel_chunks(batch * blocks * CHANNEL_BLOCK * words, blocks // channel_tile, PARALLEL_MIN_WORDS)
    b_parallel, b_serial, b_tile = sch.split(o_blocks, sch.sample_perfect_tile(
        o_blocks, n=3, max_innermost_factor=4, decision=[chunks, blocks // channel_tile // chunks, channel_tile]))
    row_tile = largest_divisor(batch, ROW_TILES)
    n_outer, n_inner = sch.split(n, sch.sample_perfect_tile(
        n, n=2, max_innermost_factor=4, decision=[batch // row_tile, row_tile]))
    word_tile = largest_divisor(words, WORD_TILES)
    c_outer, c_inner = sch.split(c, sch.sample_perfect_tile(
        c, n=2, max_innermost_factor=8, decision=[words // word_tile, word_tile]))
    sch.reorder(b_parallel, b_serial, n_outer, c_outer, c_inner, n_inner, b_tile, lanes)
    sch.parallel(b_parallel)

    # Step 3: accumulate into a register tile, zeroed before the reduction.
    tile = sch.cache_write(accum, 0, "local")
    sch.reverse_compute_at(tile, n_outer)
    sch.vectorize(lanes)
    sch.unroll(b_tile)
    sch.unroll(n_inner)
    sch.unroll(c_inner)
    init = sch.decompose_reduction(accum, c_outer)
    sch.vectorize(sch.get_loops(init)[-1])

    # Step 4: packed output words straight from the tile; float/int8 output in one vectorized pass.
    if packed_output:
        sch.reverse_compute_at(output, n_outer)
        sch.compute_inline(tile)
    else:
        sch.vectorize(sch.get_loops(tile)[-1])
        vectorize_channels(sch, sch.get_loops(output)[-1])
    return sch
