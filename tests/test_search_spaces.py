"""The schedule rules as MetaSchedule search spaces.

Each binary rule's design space carries its knobs as sampling instructions; at their default
decisions it is the untuned build's schedule; replayed with other decisions (or as an alternative
design space) it is another schedule, which must stay bit-exact with the numpy reference. The
schedules reach the build the way tuned ones do: as records of a tuning database. Float
convolutions get our schedule as a design space beside MetaSchedule's.
"""

import math

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, s_tir
from tvm.s_tir import meta_schedule as ms

import bnn_tvm
from bnn_tvm import relay_ops as ops
from bnn_tvm.build import import_model, legalize
from bnn_tvm.runtime import load_remote
from bnn_tvm.schedule_pass import is_binary_task, schedule_function
from bnn_tvm.tuning.spaces import BinarySpace, float_space
from bnn_tvm.tuning_database import AtomicJSONDatabase

from .helpers import single_op_module

SAMPLING = ("SamplePerfectTile", "SampleCategorical")


def _quantize():
    x = np.random.default_rng(0).standard_normal((1, 6, 8, 64)).astype("float32")
    return single_op_module(ops.quantize, x), x, ops.quantize_ref(x)


def _dequantize():
    x = np.random.default_rng(1).integers(-(2**31), 2**31, size=(1, 4, 6, 2), dtype=np.int64).astype(np.int32)
    return single_op_module(lambda v: ops.dequantize(v, 64), x), x, ops.dequantize_ref(x, 64)


def _bmaxpool2d():
    x = np.random.default_rng(2).integers(-(2**31), 2**31, size=(1, 7, 6, 16), dtype=np.int64).astype(np.int32)
    attrs = {"pool_size": [3, 3], "strides": [2, 2], "padding": "SAME"}
    return single_op_module(lambda v: ops.bmaxpool2d(v, **attrs), x), x, ops.bmaxpool2d_ref(x, attrs)


def _bconv2d(groups=1):
    rng = np.random.default_rng(3)
    x = ops.quantize_ref(rng.standard_normal((1, 9, 8, 64)).astype("float32"))
    w = ops.quantize_ref(rng.standard_normal((64, 3, 3, 64 // groups)).astype("float32"))
    multiplier = rng.uniform(-0.5, 0.5, 64).astype("float32")
    bias = rng.uniform(-2, 2, 64).astype("float32")
    attrs = {"channels_in": 64, "strides": [1, 1], "dilations": [1, 1], "padding": "SAME", "pad_value": 1,
             "activation": "NONE", "out_dtype": "float32"}
    mod = single_op_module(lambda v: ops.bconv2d(v, relax.const(w), multiplier=relax.const(multiplier),
                                                 bias=relax.const(bias), **attrs), x)
    return mod, x, ops.bconv2d_ref(x, w, attrs, multiplier, bias)


def _grouped_bconv2d():
    """Two groups: on aarch64 the halfwords accumulation (the quad accumulations need one group)."""
    return _bconv2d(groups=2)


# (operator case, target): every binary rule on the targets it has a schedule of its own for.
RULES = {
    "quantize-x86": (_quantize, "host"),
    "dequantize-x86": (_dequantize, "host"),
    "bmaxpool2d-x86": (_bmaxpool2d, "host"),
    "bconv2d-x86": (_bconv2d, "host"),
    "bconv2d-arm": (_bconv2d, "rpi4"),
    "bconv2d-arm-grouped": (_grouped_bconv2d, "rpi4"),
}


def tasks(mod, target):
    """The module's kernels as tuning extracts them."""
    return ms.relax_integration.extract_tasks(legalize(import_model(mod), target), target)


def binary_task(mod, target):
    """The kernel of the module's binary op."""
    found = [t for t in tasks(mod, target) if is_binary_task(t.dispatched[0]["main"])]
    assert len(found) == 1, [t.task_name for t in found]
    return found[0]


def tune_context(task, target, space=None) -> ms.TuneContext:
    return ms.TuneContext(mod=task.dispatched[0], target=target, space_generator=space or BinarySpace(),
                          task_name=task.task_name)


def design_spaces(context, target) -> list[s_tir.Schedule]:
    with target:  # the ARM rule picks its intrinsic by the current target, as under tuning
        return list(context.generate_design_space())


def other_decisions(trace, largest: bool):
    """``trace`` with every knob turned away from its default: to the largest (or smallest) other inner
    factor of a split, the last (or first) other choice of a categorical."""
    for inst in trace.insts:
        if inst.kind.name not in SAMPLING:
            continue
        decision = trace.decisions[inst]
        if inst.kind.name == "SamplePerfectTile":
            default = [int(d) for d in decision]
            assert len(default) == 2, "the knobs are 2-way splits"
            width, max_inner = math.prod(default), int(inst.attrs[1])
            inners = [d for d in range(1, min(width, max_inner) + 1) if width % d == 0 and d != default[1]]
            if inners:
                inner = inners[-1 if largest else 0]
                trace = trace.with_decision(inst, [width // inner, inner], remove_postproc=True)
        else:
            others = [i for i in range(len(inst.attrs[0])) if i != int(decision)]
            if others:
                trace = trace.with_decision(inst, others[-1 if largest else 0], remove_postproc=True)
    return trace


def replay(context, trace) -> s_tir.Schedule:
    """``trace`` on the task's kernel, followed by tuning's postprocessors, as a measured candidate is."""
    sch = s_tir.Schedule(context.mod)
    trace.apply_to_schedule(sch, remove_postproc=True)
    for postproc in context.space_generator.postprocs:
        assert postproc.apply(sch)
    return sch


def build_with_schedule(case, target_name, context, sch, tmp_path):
    """The op's module compiled with ``sch`` as its kernel's tuning record, exported (path returned)."""
    target = bnn_tvm.targets.resolve(target_name)[0]
    database = AtomicJSONDatabase(tmp_path / "records")
    workload = database.commit_workload(context.mod)
    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, [1e-6], target, ms.arg_info.ArgInfo.from_prim_func(context.mod["main"])))
    reports = []
    so = tmp_path / f"{case.__name__}-{target_name}-{len(list(tmp_path.glob('*.so')))}.so"
    bnn_tvm.compile(case()[0], target_name, tuning_records=tmp_path / "records",
                    pretuned=False, report=lambda tuned, _total, _folder: reports.append(tuned)).export_library(so)
    assert reports == [1]  # the kernel was built from the record
    return so


@pytest.mark.parametrize("rule", RULES)
def test_design_space_has_knobs_and_defaults_to_the_untuned_schedule(rule):
    case, target_name = RULES[rule]
    target = bnn_tvm.targets.resolve(target_name)[0]
    task = binary_task(case()[0], target)
    context = tune_context(task, target)
    default, *alternatives = design_spaces(context, target)
    knobs = [inst for inst in default.trace.insts if inst.kind.name in SAMPLING]
    assert knobs, f"{rule}: no sampling instruction in the design space"
    with target:
        untuned = schedule_function(task.dispatched[0]["main"], target)
    tvm.ir.assert_structural_equal(default.mod["main"].body, untuned.body)
    # Another decision is another schedule.
    turned = replay(context, other_decisions(default.trace, largest=True))
    assert not tvm_ffi.structural_equal(turned.mod["main"].body, untuned.body)
    assert len(alternatives) == (rule == "bconv2d-arm-grouped")  # the halfwords schedule's vectorized lanes


@pytest.mark.parametrize("largest", [True, False], ids=["largest", "smallest"])
@pytest.mark.parametrize("rule", [rule for rule, (_, target) in RULES.items() if target == "host"])
def test_other_decisions_stay_bitexact(rule, largest, tmp_path):
    case, target_name = RULES[rule]
    mod, x, expected = case()
    target = bnn_tvm.targets.resolve(target_name)[0]
    context = tune_context(binary_task(mod, target), target)
    (default,) = design_spaces(context, target)
    sch = replay(context, other_decisions(default.trace, largest))
    got = bnn_tvm.load(build_with_schedule(case, target_name, context, sch, tmp_path))(x)
    np.testing.assert_array_equal(got, expected)


def test_arm_bconv_other_decisions_and_vectorized_lanes_are_bitexact_on_board(emulated_board, tmp_path):
    target = bnn_tvm.targets.resolve("rpi4")[0]
    builds = []
    for case in (_bconv2d, _grouped_bconv2d):
        mod, x, expected = case()
        context = tune_context(binary_task(mod, target), target)
        spaces = design_spaces(context, target)
        assert all(any(inst.kind.name == "Tensorize" for inst in space.trace.insts) for space in spaces[:1])
        if case is _grouped_bconv2d:  # halfwords: the tensorized space and the vectorized alternative
            tensorized, vectorized = spaces
            assert not any(inst.kind.name == "Tensorize" for inst in vectorized.trace.insts)
            choices = ((tensorized, True), (vectorized, False))
        else:  # quad_halves: both ends of its knobs
            choices = ((spaces[0], True), (spaces[0], False))
        for space, largest in choices:
            sch = replay(context, other_decisions(space.trace, largest))
            builds.append((build_with_schedule(case, "rpi4", context, sch, tmp_path), x, expected))
    for so, x, expected in builds:
        np.testing.assert_array_equal(load_remote(so, *emulated_board)(x), expected)


def _float_conv():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 12, 12, 32)).astype("float32")
    w = rng.standard_normal((3, 3, 32, 48)).astype("float32")
    mod = single_op_module(lambda v: relax.op.nn.relu(relax.op.nn.conv2d(
        v, relax.const(w), padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="HWIO")), x)
    return mod, x, None  # no numpy reference: compared with the untuned build


def test_float_conv_space_offers_our_schedule_beside_meta_schedules(tmp_path, build_and_load):
    mod, x, _ = _float_conv()
    target = bnn_tvm.targets.resolve("host")[0]
    [task] = [t for t in tasks(mod, target) if "conv" in t.task_name]
    context = tune_context(task, target, float_space())
    spaces = design_spaces(context, target)
    with target:
        untuned = schedule_function(task.dispatched[0]["main"], target)
    ours = [space for space in spaces if tvm_ffi.structural_equal(space.mod["main"].body, untuned.body)]
    assert len(ours) == 1 and len(spaces) > 1, "ours, at its defaults, beside MetaSchedule's"
    assert any(inst.kind.name in SAMPLING for inst in ours[0].trace.insts)
    sch = replay(context, other_decisions(ours[0].trace, largest=False))
    got = bnn_tvm.load(build_with_schedule(_float_conv, "host", context, sch, tmp_path))(x)
    np.testing.assert_allclose(got, build_and_load(mod)(x), rtol=1e-5, atol=1e-5)  # the same sums, retiled
