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
"""

from __future__ import annotations

from tvm import s_tir

from ...relay_ops.bconv2d import CHANNEL_BLOCK, RULE
from ...strategies import register
from ..generic._util import (
    blocks_by_name,
    inline_epilogues,
    parallel_rows,
    sample_column_tile,
    sample_split,
)

COLUMN_TILES = (4, 3, 2)
UNROLL_STEPS = (0, 16, 64, 512)


@register(RULE, ("cpu",))
def schedule_bconv2d(sch: s_tir.Schedule, accum) -> s_tir.Schedule | None:
    blocks = blocks_by_name(sch)
    output = blocks.get("bconv2d_output")
    if output is None:
        return None
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
