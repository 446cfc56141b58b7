"""What the search varies: the design spaces of a model's kernels, and the untuned schedule each starts from.

The search spaces are our schedule rules themselves (registered with MetaSchedule by ``strategies``): their
``sample_perfect_tile`` / ``sample_categorical`` knobs default to what the untuned build uses, and
MetaSchedule's evolutionary search varies them. A structural alternative a rule declares (the ARM bconv not
tensorized) is a design space of its own (``BinarySpace``). Float kernels (TVM's own ops) get MetaSchedule's
default CPU rules, and our schedule beside them where we have one (``float_space``).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from .. import strategies
from .. import targets as _targets
from ..runtime import physical_cores


def _binary_rules() -> tuple[list, list, dict]:
    """Schedule rules, postprocessors and mutators of binary kernels: only our rule for blocks it tags
    and nothing else rewriting what it scheduled; evolution turns the perfect-tile knobs (a categorical
    knob varies through the fresh samples of each initial population)."""
    return ([ms.schedule_rule.ApplyCustomRule()],
            [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteReductionBlock()],
            {ms.mutator.MutateTileSize(): 1.0})


@derived_object
class BinarySpace(ms.space_generator.PySpaceGenerator):
    """The design spaces of a binary kernel: its schedule rule as is, and once per alternative it declares.

    A trace can change its decisions, not its instructions, so a structural choice (to tensorize or
    not) is a design space of its own: the rule is generated again inside
    ``schedules.generic._util.choosing(name)`` for every declared alternative, and the spaces that
    differ from the default are added.
    """

    def __init__(self):
        self.sch_rules, self.postprocs, self.mutator_probs = _binary_rules()
        self._apply = ms.space_generator.PostOrderApply(None, *_binary_rules())

    def _initialize_with_tune_context(self, context) -> None:
        self._apply._initialize_with_tune_context(context)

    def generate_design_space(self, mod: tvm.IRModule) -> list:
        from ..schedules.generic._util import ALTERNATIVES, choosing

        spaces = []
        for names in [(), *((name,) for name in ALTERNATIVES)]:
            with choosing(*names):
                for space in self._apply.generate_design_space(mod):
                    if not any(tvm_ffi.structural_equal(space.mod, known.mod) for known in spaces):
                        spaces.append(space)
        return spaces

    def clone(self) -> BinarySpace:
        return BinarySpace()


def _our_float_schedule(sch) -> list:
    """Our schedule of a float kernel, where the strategies have one (the float convolutions): the
    first block a strategy schedules, as ``schedule_pass`` picks it for the untuned build."""
    target = tvm.target.Target.current()
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        name = sch.get(block).name_hint
        for schedule in strategies.candidates(f"topi:{name}", target):
            trial = sch.copy()
            if schedule(trial, trial.get_sblock(name)) is not None:
                return [trial]
    return []


def float_space() -> ms.space_generator.SpaceGeneratorUnion:
    """The design spaces of a float kernel (TVM's own ops): MetaSchedule's, and ours beside them where we
    have a schedule, so that the search also starts from the untuned build's schedule and its knobs."""
    return ms.space_generator.SpaceGeneratorUnion(
        [ms.space_generator.PostOrderApply(), ms.space_generator.ScheduleFn(_our_float_schedule)])


def untuned_schedule(mod: tvm.IRModule, target: tvm.target.Target, binary: bool,
                     space_generator=None) -> s_tir.Schedule:
    """The schedule the untuned build gives ``mod``'s kernel, as a traced schedule whose trace is a record.

    A binary kernel's is its space's default decisions (the first design space of ``space_generator``, the task's
    ``BinarySpace``); a float kernel's is ``schedule_pass.schedule_function``'s: the first strategy that applies
    to one of its blocks, else the generic CPU schedule. (The trace is unprocessed, as the untuned build is.)
    """
    if binary:
        return space_generator.generate_design_space(mod)[0]
    from ..schedule_pass import rule_of
    from ..schedules.generic import schedule_generic

    sch = s_tir.Schedule(mod)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    with target:
        for block in blocks:
            name = sch.get(block).name_hint
            choices = strategies.candidates(rule_of(sch.get(block)), target)
            if choices:
                trial = sch.copy()
                if any(choice(trial, trial.get_sblock(name)) is not None for choice in choices):
                    return trial
        for block in blocks:
            schedule_generic(sch, block)
    return sch


def tuning_target(target):
    """``target`` resolved as ``tune`` tunes it: with MetaSchedule's "num-cores" (this machine's physical cores
    for an x86 preset, which is tuned here)."""
    tvm_target, preset = _targets.resolve(target)
    if "num-cores" not in tvm_target.attrs:
        tvm_target = tvm.target.Target({**tvm_target.export(), "num-cores": physical_cores()})
    return tvm_target, preset
