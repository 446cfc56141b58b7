"""Small helpers shared by the schedules of every target family."""

from __future__ import annotations

import contextlib
import contextvars
import math
import os

import tvm
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
    return sample_split(sch, loop, largest_divisor(extent(sch, loop), candidates), max_inner=8)


def parallel_rows(sch: s_tir.Schedule, block, spatial_loops: int = 2):
    """Fuse the first ``spatial_loops`` loops (batch, rows) of ``block`` and run them in parallel."""
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops[:spatial_loops]) if spatial_loops > 1 else loops[0]
    sch.parallel(fused)
    return fused


def inline_epilogues(sch: s_tir.Schedule, block) -> None:
    """Fold elementwise consumers of ``block`` (fused in by FuseOps) into it; schedule the rest generically."""
    while consumers := sch.get_consumers(block):
        # Only a sole reader is inlined: TVM would inline one of several and leave the others reading a
        # buffer no block writes any more.
        if len(consumers) == 1:
            try:
                sch.reverse_compute_inline(consumers[0])
                continue
            except s_tir.ScheduleError:
                pass
        for consumer in consumers:
            schedule_generic(sch, consumer)
        return


def sample_split(sch: s_tir.Schedule, loop, inner: int, max_inner: int):
    """Split ``loop`` into (outer, inner) with a tunable perfect split: a knob replaying a trace can turn.

    The default decision, which the untuned build uses, makes the inner extent ``inner``; MetaSchedule
    tries the other divisors of the extent up to ``max_inner``.
    """
    width = extent(sch, loop)
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(max_inner, inner),
                                      decision=[width // inner, inner])
    return sch.split(loop, factors)


def sample_parallel(sch: s_tir.Schedule, loops, parallel: int, max_serial: int = 16):
    """Run the leading spatial ``loops`` in parallel to a tunable depth; return (parallel, serial) loops.

    The first ``parallel`` loops and the next one are fused and split; the outer part is parallel. The
    default decision cuts at the next loop, which stays serial (``parallel_rows``); tuning moves the
    cut into it, parallelizing it too or handing out coarser chunks (of up to ``max_serial`` iterations,
    or the next loop's extent). Loops after the next one stay serial as they were.
    """
    fused_loops = loops[: parallel + 1]
    serial = math.prod(extent(sch, loop) for loop in fused_loops[parallel:])
    fused = sch.fuse(*fused_loops) if len(fused_loops) > 1 else fused_loops[0]
    outer, inner = sample_split(sch, fused, serial, max_serial)
    sch.parallel(outer)
    return outer, inner


# Structural choices a schedule offers besides its default (to tensorize or not, say): a trace cannot
# switch instructions, so tuning generates one design space per choice (``bnn_tvm.tuning``).
ALTERNATIVES: dict[str, str] = {}
_CHOSEN: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("bnn_tvm_alternatives", default=frozenset())


def declare_alternative(name: str, what: str) -> str:
    """Declare the alternative ``name`` (``what`` it does), for tuning to offer as its own design space."""
    ALTERNATIVES[name] = what
    return name


def chosen(name: str) -> bool:
    """Whether the schedule being generated should take the alternative ``name`` (never, untuned)."""
    return name in _CHOSEN.get()


@contextlib.contextmanager
def choosing(*names: str):
    """Schedules generated inside take the alternatives ``names``."""
    token = _CHOSEN.set(frozenset(names))
    try:
        yield
    finally:
        _CHOSEN.reset(token)


def target_cores(target: tvm.target.Target) -> int:
    """The target's ``num-cores`` (this machine's count if the target does not say)."""
    cores = target.attrs.get("num-cores")
    return int(cores) if cores else (os.cpu_count() or 1)


def parallel_chunks(work: int, iterations: int, min_work: int, target: tvm.target.Target) -> int:
    """How many parallel chunks to cut ``iterations`` into by default: the largest divisor up to the target's
    cores when ``work`` reaches ``min_work``, else 1 (TVM emits no thread launch for a parallel loop of 1)."""
    if work < min_work:
        return 1
    return max(d for d in range(1, min(target_cores(target), iterations) + 1) if iterations % d == 0)


def writes_packed_output(sch: s_tir.Schedule, output) -> bool:
    """Whether the output block packs bits into words: it reduces (over a word's 32 channels), the others
    are elementwise."""
    return any(var.iter_type == tvm.tirx.IterVar.CommReduce for var in sch.get(output).iter_vars)


def vectorize_channels(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorize ``loop`` by ``lanes``; a remainder that does not fill a vector is partitioned off, scalar
    (a split with a bounds check would keep the whole loop scalar)."""
    width = extent(sch, loop)
    if width < lanes:
        return
    if width % lanes:
        loop, _ = sch.loop_partition(loop, [width // lanes * lanes, None])
    _, inner = sch.split(loop, [None, lanes])
    sch.vectorize(inner)


def sample_tiles(sch: s_tir.Schedule, loop, decision: list[int], max_inner: int):
    """Split ``loop`` into ``len(decision)`` loops with one tunable perfect tiling, ``decision`` by default.

    One sampling instruction for all the loops, so that MetaSchedule's tile mutator keeps their product
    (nested 2-way splits would make each knob's valid values depend on the others' decisions).
    """
    factors = sch.sample_perfect_tile(loop, n=len(decision), max_innermost_factor=max(max_inner, decision[-1]),
                                      decision=list(decision))
    return sch.split(loop, factors)
