"""CPU schedule (x86 and ARM) of the float NHWC convolutions TVM's TFLite frontend emits (topi's
``conv2d_nhwc`` and ``group_conv2d_nhwc``, which covers depthwise).

A BNN keeps its stem, its transition and its depthwise convolutions in float;
left to the generic schedule they take most of a QuickNet's time. Same shape of
kernel as the binary one: rows in parallel, a tile of output columns in
registers, output channels as the vector lanes (HWIO weights are contiguous in
the output channel), the bias/activation epilogue applied to the tile.

Knobs (defaults in brackets): the column tile [4, 7 or 2, whichever divides the
width] and the vector width over output channels [16, 8 or 4, the widest that
divides them]. Tuning offers this schedule beside MetaSchedule's own space for
these kernels (``bnn_tvm.tuning``).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ._util import (
    blocks_by_name,
    extent,
    inline_epilogues,
    largest_divisor,
    parallel_rows,
    sample_column_tile,
    sample_split,
)

COLUMN_TILES = (4, 7, 2)
LANES = (16, 8, 4)
# Windows from this many taps read a padded copy of the input: inlined, the padding is a bounds check on every
# load of the hot loop (BiRealNet's 7x7 stem: 5.3 ms inlined, 3.3 ms from the copy, AVX2), while for 3x3 windows
# the copy costs more than the checks (QuickNet's depthwise convolutions: 0.04 ms inlined, 0.1 ms copied).
MATERIALIZED_PADDING_TAPS = 25


def schedule_conv2d_nhwc(sch: s_tir.Schedule, conv, target: tvm.target.Target) -> s_tir.Schedule | None:
    loops = sch.get_loops(conv)
    if len(loops) != 7:
        return None
    n, h, w, c, *reduction = loops
    lanes = largest_divisor(extent(sch, c), LANES)
    if lanes == 1:
        return None
    # Step 1: the padded copy of the input, in parallel; inlined into small windows.
    pad = blocks_by_name(sch).get("pad_temp")
    if pad is not None:
        inlined = False
        if extent(sch, reduction[0]) * extent(sch, reduction[1]) < MATERIALIZED_PADDING_TAPS:
            try:
                sch.compute_inline(pad)
                inlined = True
            except s_tir.ScheduleError:
                pass
        if not inlined:
            parallel_rows(sch, pad)
    # Step 2: tile columns x channels; rows parallel; reductions outside the register tile.
    # Knobs: the column tile; the channels of the tile, which are its vector lanes.
    w_outer, w_inner = sample_column_tile(sch, w, COLUMN_TILES)
    c_outer, c_inner = sample_split(sch, c, lanes, max_inner=LANES[0])
    sch.reorder(n, h, w_outer, c_outer, *reduction, w_inner, c_inner)
    sch.parallel(sch.fuse(n, h))
    # Step 3: accumulate in registers; the epilogue (bias, activation) runs on the tile.
    tile = sch.cache_write(conv, 0, "local")
    inline_epilogues(sch, tile)
    sch.reverse_compute_at(tile, c_outer, preserve_unit_loops=True)  # a loop count the knobs cannot change
    sch.vectorize(c_inner)
    sch.unroll(w_inner)
    init = sch.decompose_reduction(conv, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(tile)[-1])
    return sch
