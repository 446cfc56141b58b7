"""CPU schedule of the float matmul ``x[..., K] @ w[K, N]`` (a classifier's dense layer; the leading axes of
``x``, the batch, are its rows).

The default nest walks ``w`` down its columns, K floats apart, one scalar FMA and two loads per MAC. Here
the output columns are tiled by a vector width, the tile's accumulators live in registers, and the
reduction runs outside the tile: each step loads one ``x[k]`` and a contiguous row segment of ``w`` and
does one vector FMA per vector of columns. Column tiles run in parallel. (On the Cortex-A72, 0.5
instructions per MAC against 3.)

Knob (default in brackets): the column tile [x86: 40, 32, 16, 8 or 4 floats; ARM: 16, 8 or 4; the first that
divides N]. On x86 wide tiles read longer runs of each weight row per step, which the prefetcher streams: 1024 ->
1000 on AVX2 (Zen 3), 1 thread, 135-180 us with 40 columns against 175-197 us with 8. On the Cortex-A72, LLVM's
code for a 40-column tile took 1.3 instructions per MAC against 0.5 for 8 (emulated board).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ._util import extent, largest_divisor, sample_split

COLUMN_TILES = {"x86": (40, 32, 16, 8, 4), "arm_cpu": (16, 8, 4)}
MAX_COLUMN_TILE = 64


def schedule_matmul_columns(sch: s_tir.Schedule, block, target: tvm.target.Target) -> s_tir.Schedule | None:
    loops = sch.get_loops(block)
    block_stmt = sch.get(block)
    kinds = [iv.iter_type for iv in block_stmt.iter_vars]
    if len(loops) < 3 or kinds != [0] * (len(loops) - 1) + [2]:
        return None  # not rows x columns with one reduction innermost
    weights = block_stmt.reads[-1]
    column = block_stmt.iter_vars[-2].var
    if len(weights.region) != 2 or not weights.region[1].min.same_as(column):
        return None  # w is not [K, N] with the columns contiguous
    *row_loops, columns, k = loops
    rows = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]  # TFLite's dense keeps 4-D rows
    family = "arm_cpu" if "arm_cpu" in list(target.keys) else "x86"
    tile = largest_divisor(extent(sch, columns), COLUMN_TILES[family])
    if tile == 1:
        return None
    # Step 1: column tiles in parallel; the reduction outside the tile's columns.
    # Knob: the column tile.
    outer, inner = sample_split(sch, columns, tile, max_inner=MAX_COLUMN_TILE)
    sch.reorder(outer, rows, k, inner)
    sch.parallel(outer)
    # Step 2: the tile's accumulators in registers, zeroed before and stored after the reduction.
    # (Vectorized before the reduction is split off its init, as vectorize wants.)
    accumulators = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulators, rows, preserve_unit_loops=True)  # a loop count the knobs cannot change
    sch.vectorize(inner)
    init = sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(accumulators)[-1])
    return sch
