"""Which schedule serves which (schedule rule, target key), and how each target accumulates.

TE computes of the binary ops carry ``schedule_rule``; for each rule the table below lists, per target key
(``arm_cpu``, ``cpu``), the schedule functions ``fn(sch, block, target)`` to try in order. A function returns
None where it does not apply and the schedule where it did, so the first applicable one wins (as in TVM's
dlight). TVM's own ops are found by their topi block name, ``topi:<name>``. Target keys are tried in the
target's own order, most specific first: an ARM rule that does not apply falls back to the CPU one.

The binary MAC ops' computes depend on the target too (how they accumulate: ``accumulation``):
``binary_legalizations(target)`` is LegalizeOps' map for them, with the target passed in, never read from
the scope. The table imports the schedules; the schedules import nothing from here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import tvm
from tvm import relax, s_tir

from ..relay_ops.bconv2d import legalize as legalize_bconv2d
from ..relay_ops.bconv2d_geometry import OP as BCONV2D_OP
from ..relay_ops.bconv2d_geometry import RULE as BCONV2D_RULE
from ..relay_ops.bdense import OP as BDENSE_OP
from ..relay_ops.bdense import RULE as BDENSE_RULE
from ..relay_ops.bdense import legalize as legalize_bdense
from ..relay_ops.bitpack import DEQUANTIZE_RULE, QUANTIZE_RULE
from ..relay_ops.bmaxpool2d import RULE as BMAXPOOL2D_RULE
from ..schedules.arm_cpu.bconv2d import schedule_bconv2d_neon, schedule_bconv2d_neon_quads
from ..schedules.arm_cpu.bdense import schedule_bdense_neon
from ..schedules.generic.conv2d import schedule_conv2d_nhwc
from ..schedules.generic.dense import schedule_matmul_columns
from ..schedules.x86.bconv2d import schedule_bconv2d
from ..schedules.x86.bdense import schedule_bdense
from ..schedules.x86.bitpack import schedule_dequantize, schedule_quantize
from ..schedules.x86.bmaxpool2d import schedule_bmaxpool2d
from .accumulation import bconv2d_accumulation, bdense_accumulation

ScheduleFn = Callable[[s_tir.Schedule, s_tir.schedule.SBlockRV, tvm.target.Target], "s_tir.Schedule | None"]
BoundScheduleFn = Callable[[s_tir.Schedule, s_tir.schedule.SBlockRV], "s_tir.Schedule | None"]

_TABLE: dict[tuple[str, str], list[ScheduleFn]] = {
    (BCONV2D_RULE, "arm_cpu"): [schedule_bconv2d_neon, schedule_bconv2d_neon_quads],
    (BCONV2D_RULE, "cpu"): [schedule_bconv2d],
    (BDENSE_RULE, "arm_cpu"): [schedule_bdense_neon],
    (BDENSE_RULE, "cpu"): [schedule_bdense],
    (QUANTIZE_RULE, "cpu"): [schedule_quantize],
    (DEQUANTIZE_RULE, "cpu"): [schedule_dequantize],
    (BMAXPOOL2D_RULE, "cpu"): [schedule_bmaxpool2d],
    ("topi:conv2d_nhwc", "cpu"): [schedule_conv2d_nhwc],
    ("topi:group_conv2d_nhwc", "cpu"): [schedule_conv2d_nhwc],
    ("topi:matmul", "cpu"): [schedule_matmul_columns],
}
# Keys a target can carry, most specific first.
_KEY_ORDER = {"arm_cpu": ("arm_cpu", "cpu"), "cpu": ("cpu",)}
META_SCHEDULE_PREFIX = "s_tir.meta_schedule"


def _bound(fn: ScheduleFn, target: tvm.target.Target) -> BoundScheduleFn:
    return functools.update_wrapper(lambda sch, block: fn(sch, block, target), fn)


def candidates(rule: str, target: tvm.target.Target) -> list[BoundScheduleFn]:
    """Schedule functions for ``rule`` on ``target``, in the order they should be tried, as ``fn(sch, block)``."""
    return [_bound(fn, target) for key in list(target.keys) for fn in _TABLE.get((rule, key), [])]


def known_rules() -> set[str]:
    return {rule for rule, _ in _TABLE}


def binary_legalizations(target: tvm.target.Target) -> dict[str, Callable]:
    """``LegalizeOps``' customized map for the binary MAC ops: their computes for ``target``'s accumulation."""
    if target is None:
        raise ValueError("the binary ops' legalization needs the target")
    return {
        BCONV2D_OP: lambda bb, call: legalize_bconv2d(bb, call, functools.partial(bconv2d_accumulation, target)),
        BDENSE_OP: lambda bb, call: legalize_bdense(bb, call, functools.partial(bdense_accumulation, target)),
    }


def legalize_binary_ops(target: tvm.target.Target) -> tvm.transform.Pass:
    """LegalizeOps with the binary ops' computes chosen for ``target`` (the rest as TVM legalizes them)."""
    return relax.transform.LegalizeOps(binary_legalizations(target))


def _register_with_meta_schedule() -> None:
    """Expose our rules to MetaSchedule: the same functions are its search spaces.

    MetaSchedule's ApplyCustomRule calls ``s_tir.meta_schedule.<key>.<rule>(sch, block)`` for blocks
    tagged ``schedule_rule`` and expects the list of schedules (design spaces) it made. It passes no
    target: the one in scope (tuning sets it) is read here, once, and handed to the schedules.
    """
    for rule, key in list(_TABLE):
        if rule.startswith("topi:"):
            continue
        chain = [fn for k in _KEY_ORDER.get(key, (key,)) for fn in _TABLE.get((rule, k), [])]

        def space(sch, block, chain=chain, rule=rule):
            target = tvm.target.Target.current(allow_none=True)
            if target is None:
                raise ValueError(f"MetaSchedule's rule {rule!r} needs a target in scope (`with target:`)")
            for fn in chain:
                if fn(sch, block, target) is not None:
                    return [sch]
            return []

        tvm.register_global_func(f"{META_SCHEDULE_PREFIX}.{key}.{rule}", space, override=True)


_register_with_meta_schedule()
