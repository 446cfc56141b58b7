"""The graph-to-kernel step: give every PrimFunc its schedule for the target.

Runs after LegalizeOps/FuseOps/FuseTIR. A block tagged ``schedule_rule`` gets
the first applicable schedule the strategy registry offers for the target;
every other function gets the generic CPU schedule. (Tuned schedules from a
MetaSchedule database, when given, take precedence: see ``bnn_tvm.build``.)
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from . import relay_ops  # noqa: F401  (registers the ops)
from . import strategies
from .schedules.generic import schedule_generic


class ScheduleNotFound(RuntimeError):
    pass


def rule_of(block: s_tir.SBlock) -> str:
    """The strategy rule for a block: its ``schedule_rule`` if it is one of ours, else ``topi:<name>``
    for the TE computes TVM's own ops produce (named after their topi compute)."""
    rule = block.annotations.get("schedule_rule")
    if rule is not None and str(rule) in strategies.known_rules():
        return str(rule)
    return f"topi:{block.name_hint}"


def _block_rules(sch: s_tir.Schedule) -> list[tuple[s_tir.schedule.SBlockRV, str, bool]]:
    """Each block of the function with its rule, and whether that rule is one of our binary ops'."""
    try:
        root = sch.get_sblock("root")
    except s_tir.schedule.ScheduleError:
        # TVM writes some ops' TIR by hand, already scheduled (cumsum's parallel scan): no root block, no rule.
        return []
    blocks = sch.get_child_blocks(root)
    return [(block, rule, not rule.startswith("topi:")) for block in blocks for rule in [rule_of(sch.get(block))]]


def is_binary_task(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is a kernel of one of our binary ops (a block carries one of our rules)."""
    return any(ours for _, _, ours in _block_rules(s_tir.Schedule(func)))


def schedule_function(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc:
    """``func`` scheduled for ``target``: its anchor block by its strategy, the rest generically.

    The anchor is the block our binary ops tag, or else the first block of a TVM op for which a
    strategy exists (a float convolution, say). A binary op without an applicable schedule is an
    error; a float op without one gets the generic CPU schedule.
    """
    sch = s_tir.Schedule(func)
    rules = _block_rules(sch)
    ours = [(block, rule) for block, rule, is_ours in rules if is_ours]
    for block, rule in ours:
        if not any(choice(sch, block) is not None for choice in strategies.candidates(rule, target)):
            raise ScheduleNotFound(f"no schedule for rule {rule!r} on target keys {list(target.keys)}")
    if ours:
        return sch.mod["main"]
    for block, rule, _ in rules:
        choices = strategies.candidates(rule, target)
        if choices:
            trial = sch.copy()
            if any(choice(trial, trial.get_sblock(sch.get(block).name_hint)) is not None for choice in choices):
                return trial.mod["main"]
    for block, _, _ in rules:
        schedule_generic(sch, block)
    return sch.mod["main"]


def apply_default_schedules(target: tvm.target.Target):
    """A module pass scheduling every PrimFunc not already scheduled (a tuning record may have)."""

    @tvm.transform.module_pass(opt_level=0, name="bnn_tvm.ApplyDefaultSchedules")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            updated[gvar] = schedule_function(func, target).with_attr("tirx.is_scheduled", True)
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod

    return _pass
