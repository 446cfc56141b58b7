"""x86 schedules of quantize (bitpacking) and dequantize (unpacking).

Elementwise producers fused into quantize by FuseOps (a batch-norm's add, say)
are inlined, so the float values are packed as they are computed.

Knobs (defaults in brackets): quantize, how deep into the leading loops the
parallel part goes [the first two] and how much of the 32-bit reduction is
unrolled [all of it]; dequantize, the same parallel depth and the vector width
over channels [32 where it divides them, else none].
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ..generic._util import extent, sample_parallel, sample_split

VECTOR_LANES = 32


def _inline_producers(sch: s_tir.Schedule, block) -> None:
    for producer in sch.get_producers(block):
        try:
            sch.compute_inline(producer)
        except s_tir.ScheduleError:
            pass


def schedule_quantize(sch: s_tir.Schedule, block, target: tvm.target.Target) -> s_tir.Schedule | None:
    # Step 1: compute fused elementwise producers in place.
    _inline_producers(sch, block)
    *leading, _words, bit = sch.get_loops(block)
    # Step 2: parallel over the leading axes. Knob: how deep.
    if leading:
        sample_parallel(sch, leading, min(len(leading), 2))
    # Step 3: unroll the 32-bit reduction, so that LLVM turns compare-and-shift into vector compares and
    # a mask. Knob: how much of it.
    _, unrolled = sample_split(sch, bit, 32, max_inner=32)
    sch.unroll(unrolled)
    return sch


def schedule_dequantize(sch: s_tir.Schedule, block, target: tvm.target.Target) -> s_tir.Schedule | None:
    *leading, channels = sch.get_loops(block)
    # Step 1: parallel over the leading axes. Knob: how deep.
    if leading:
        sample_parallel(sch, leading, min(len(leading), 2))
    # Step 2: vectorize over channels, a word's 32 by default. Knob: the vector width (1: scalar).
    _, lanes = sample_split(sch, channels, VECTOR_LANES if extent(sch, channels) % VECTOR_LANES == 0 else 1,
                            max_inner=2 * VECTOR_LANES)
    sch.vectorize(lanes)
    return sch
