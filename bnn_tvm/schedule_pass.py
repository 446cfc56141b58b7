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


def _tagged_blocks(sch: s_tir.Schedule):
    root = sch.get_sblock("root")
    tagged, others = [], []
    for block in sch.get_child_blocks(root):
        rule = sch.get(block).annotations.get("schedule_rule")
        (tagged if rule is not None else others).append((block, None if rule is None else str(rule)))
    return tagged, others


def schedule_function(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc:
    """``func`` scheduled for ``target``: rule-tagged blocks by their strategy, the rest generically."""
    sch = s_tir.Schedule(func)
    tagged, others = _tagged_blocks(sch)
    ours = [(block, rule) for block, rule in tagged if rule in strategies.known_rules()]
    for block, rule in ours:
        choices = strategies.candidates(rule, target)
        if not any(choice(sch, block) for choice in choices):
            raise ScheduleNotFound(f"no schedule for rule {rule!r} on target keys {list(target.keys)}")
    if not ours:  # TVM's own ops (their rules name MetaSchedule templates we do not use here)
        for block, _ in tagged + others:
            schedule_generic(sch, block)
    return sch.mod["main"]


def apply_default_schedules(target: tvm.target.Target, skip: set[str] | None = None):
    """A module pass scheduling every PrimFunc not already scheduled (not in ``skip``)."""

    @tvm.transform.module_pass(opt_level=0, name="bnn_tvm.ApplyDefaultSchedules")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (skip and gvar.name_hint in skip):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            updated[gvar] = schedule_function(func, target).with_attr("tirx.is_scheduled", True)
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod

    return _pass
