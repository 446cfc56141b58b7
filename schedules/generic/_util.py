"""Small helpers shared by the schedules of every target family."""

from __future__ import annotations

from tvm import s_tir

from .parallel import schedule_generic


def blocks_by_name(sch: s_tir.Schedule) -> dict[str, s_tir.schedule.SBlockRV]:
    """Every block of the function, by name (TE names them after their compute)."""
    root = sch.get_sblock("root")
    return {sch.get(block).name_hint: block for block in sch.get_child_blocks(root)}


def extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def largest_divisor(n: int, candidates: tuple[int, ...]) -> int:
    """The largest of ``candidates`` dividing ``n`` (1 if none does)."""
    return next((c for c in candidates if n % c == 0), 1)


def sample_column_tile(sch: s_tir.Schedule, loop, candidates: tuple[int, ...]):
    """Split ``loop`` (output columns) into (outer, register tile) with a tunable perfect split.

    The default decision, which the untuned build uses, is the largest of ``candidates`` dividing
    the extent; MetaSchedule varies it (up to 8) when tuning.
    """
    width = extent(sch, loop)
    tile = largest_divisor(width, candidates)
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=8, decision=[width // tile, tile])
    return sch.split(loop, factors)


def parallel_rows(sch: s_tir.Schedule, block, spatial_loops: int = 2):
    """Fuse the first ``spatial_loops`` loops (batch, rows) of ``block`` and run them in parallel."""
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops[:spatial_loops]) if spatial_loops > 1 else loops[0]
    sch.parallel(fused)
    return fused


def inline_epilogues(sch: s_tir.Schedule, block) -> None:
    """Fold elementwise consumers of ``block`` (fused in by FuseOps) into it; schedule the rest generically."""
    while consumers := sch.get_consumers(block):
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:
            for consumer in consumers:
                schedule_generic(sch, consumer)
            return
