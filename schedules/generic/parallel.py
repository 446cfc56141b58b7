"""Fallback CPU schedule: parallelize the outer spatial loops, vectorize short inner ones.

Float layers without a dedicated schedule get this; it is correct for any
block and keeps both cores busy, but it is not a tuned kernel.
"""

from __future__ import annotations

from tvm import s_tir

MAX_VECTOR_LANES = 16


def schedule_generic(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> None:
    """Parallelize the outermost data-parallel loops of ``block``'s nest and vectorize its innermost one."""
    loops = sch.get_loops(block)
    if not loops:
        return
    block_stmt = sch.get(block)
    spatial = [iv.iter_type == 0 for iv in block_stmt.iter_vars]  # 0: data parallel
    # Step 1: parallel over up to two leading data-parallel loops, keeping the innermost one for Step 2.
    leading = next((i for i, is_spatial in enumerate(spatial) if not is_spatial), len(spatial))
    if leading == 0:
        return
    count = max(1, min(leading - 1, 2))
    outer = sch.fuse(*loops[:count]) if count > 1 else loops[0]
    try:
        sch.parallel(outer)
    except s_tir.ScheduleError:
        pass
    # Step 2: vectorize an innermost spatial loop of modest extent.
    loops = sch.get_loops(block)
    inner = loops[-1]
    extent = sch.get(inner).extent
    if all(spatial) and len(loops) > 1 and hasattr(extent, "value") and 1 < extent.value <= MAX_VECTOR_LANES:
        try:
            sch.vectorize(inner)
        except s_tir.ScheduleError:
            pass
