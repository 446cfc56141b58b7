"""What a binary MAC kernel accumulates in, read from its TIR: which schedule applies is decided from this.

The block tagged ``schedule_rule`` (``relay_ops``' accumulation computes) writes either int32 popcounts, one
per output, or u16 lanes: ``lanes`` per output channel, or per register of several channels, which a second
block sums into the int32 outputs. The channels a register holds are the ratio of that sum's channels to the
lane block's. Read from the IR, not through schedule instructions, so that a trace holds only what the
schedule did.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir


@dataclass(frozen=True)
class Accumulator:
    """``lanes``: u16 lanes per register (0: int32 accumulators); ``channels_per_register``: the output channels
    sharing one register of lanes (1: each channel its own); ``reductions``: the block's reduction axes."""

    lanes: int
    channels_per_register: int
    reductions: int


def _consumers(sch: s_tir.Schedule, block) -> list:
    """The blocks reading what ``block`` writes, from the dependences of its scope (no schedule instruction)."""
    sref = sch.get_sref(block)
    scope_root = sref.parent
    while not isinstance(scope_root.stmt, s_tir.SBlock):
        scope_root = scope_root.parent
    scope = sch.state.get_sblock_scope(scope_root)
    return [dependence.dst.stmt for dependence in scope.get_deps_by_src(sref)]


def accumulator_of(sch: s_tir.Schedule, block) -> Accumulator:
    """The accumulator ``block`` (the rule's block) writes."""
    stmt = sch.get(block)
    written = stmt.writes[0].source
    reductions = sum(var.iter_type == tvm.tirx.IterVar.CommReduce for var in stmt.iter_vars)
    if written.dtype != "uint16":
        return Accumulator(lanes=0, channels_per_register=1, reductions=reductions)
    lanes, registers = int(written.shape[-1]), int(written.shape[-2])
    sums = [b for b in _consumers(sch, block) if any(r.source.same_as(written) for r in b.reads)]
    channels = int(sums[0].writes[0].source.shape[-1]) if sums else registers
    return Accumulator(lanes=lanes, channels_per_register=max(channels // registers, 1), reductions=reductions)
