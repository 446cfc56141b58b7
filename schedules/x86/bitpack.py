"""x86 schedules of quantize (bitpacking) and dequantize (unpacking).

Elementwise producers fused into quantize by FuseOps (a batch-norm's add, say)
are inlined, so the float values are packed as they are computed.
"""

from __future__ import annotations

from tvm import s_tir

from ...relay_ops.bitpack import DEQUANTIZE_RULE, QUANTIZE_RULE
from ...strategies import register
from ..generic._util import extent, parallel_rows


def _inline_producers(sch: s_tir.Schedule, block) -> None:
    for producer in sch.get_producers(block):
        try:
            sch.compute_inline(producer)
        except s_tir.ScheduleError:
            pass


@register(QUANTIZE_RULE, ("cpu",))
def schedule_quantize(sch: s_tir.Schedule, block) -> s_tir.Schedule | None:
    # Step 1: compute fused elementwise producers in place.
    _inline_producers(sch, block)
    loops = sch.get_loops(block)
    # Step 2: parallel over the leading axes; the 32-bit reduction is unrolled so
    # LLVM turns compare-and-shift into vector compares and a mask.
    if len(loops) > 2:
        parallel_rows(sch, block, min(len(loops) - 2, 2))
    sch.unroll(sch.get_loops(block)[-1])
    return sch


@register(DEQUANTIZE_RULE, ("cpu",))
def schedule_dequantize(sch: s_tir.Schedule, block) -> s_tir.Schedule | None:
    loops = sch.get_loops(block)
    if len(loops) > 1:
        parallel_rows(sch, block, min(len(loops) - 1, 2))
    inner = sch.get_loops(block)[-1]
    if extent(sch, inner) >= 32 and extent(sch, inner) % 32 == 0:
        _, lanes = sch.split(inner, [None, 32])
        sch.vectorize(lanes)
    return sch
