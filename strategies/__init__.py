"""Which schedule serves which (schedule rule, target key).

TE computes of the binary ops carry ``schedule_rule``; for each rule this
registry keeps, per target key (``arm_cpu``, ``cpu``, ...), an ordered list of
schedule functions ``fn(sch, block)``. A function returns None where it does
not apply and the schedule where it did, so the first applicable one wins (as
in TVM's dlight). TVM's own ops are found by their topi block name,
``topi:<name>``. Target
keys are tried in the target's own order, most specific first.
"""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import s_tir

ScheduleFn = Callable[[s_tir.Schedule, s_tir.schedule.SBlockRV], "s_tir.Schedule | None"]

_REGISTRY: dict[tuple[str, str], list[ScheduleFn]] = {}


def register(rule: str, target_keys: tuple[str, ...]):
    """Decorator: ``fn`` schedules blocks tagged ``rule`` on targets with any of ``target_keys``."""

    def wrap(fn: ScheduleFn) -> ScheduleFn:
        for key in target_keys:
            _REGISTRY.setdefault((rule, key), []).append(fn)
        return fn

    return wrap


def candidates(rule: str, target: tvm.target.Target) -> list[ScheduleFn]:
    """Schedule functions for ``rule`` on ``target``, in the order they should be tried."""
    found = []
    for key in list(target.keys):
        found.extend(_REGISTRY.get((rule, key), []))
    return found


def known_rules() -> set[str]:
    return {rule for rule, _ in _REGISTRY}



# Keys a target can carry, most specific first: an ARM rule that does not apply falls back to the CPU one.
_KEY_ORDER = {"arm_cpu": ("arm_cpu", "cpu"), "cpu": ("cpu",)}
META_SCHEDULE_PREFIX = "s_tir.meta_schedule"


def _register_with_meta_schedule() -> None:
    """Expose our rules to MetaSchedule: the same functions are its search spaces.

    MetaSchedule's ApplyCustomRule calls ``s_tir.meta_schedule.<key>.<rule>(sch, block)`` for blocks
    tagged ``schedule_rule`` and expects the list of schedules (design spaces) it made.
    """
    for rule, key in list(_REGISTRY):
        if rule.startswith("topi:"):
            continue
        chain = [fn for k in _KEY_ORDER.get(key, (key,)) for fn in _REGISTRY.get((rule, k), [])]

        def space(sch, block, chain=chain):
            for fn in chain:
                if fn(sch, block) is not None:
                    return [sch]
            return []

        tvm.register_global_func(f"{META_SCHEDULE_PREFIX}.{key}.{rule}", space, override=True)


def _load_schedules() -> None:
    # Importing the schedule modules registers them.
    from ..schedules import arm_cpu, generic, x86  # noqa: F401

    generic.register_all()
    _register_with_meta_schedule()


_load_schedules()
