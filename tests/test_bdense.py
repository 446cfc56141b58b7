"""relax.bnn.bdense, the binary fully-connected layer: against its numpy reference and Larq's QuantDense.

Every output is compared bit for bit, the float one too: the output transform is bconv2d's (LCE's
formula, no FMA), so the compute and the reference round alike.
"""

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir
from tvm.s_tir import meta_schedule as ms

import bnn_tvm
from bnn_tvm import relay_ops as ops
from bnn_tvm.build import _pipeline, legalize
from bnn_tvm.relay_ops._output_transform import ACTIVATIONS, OUT_DTYPES
from bnn_tvm.relay_ops.bdense import RULE
from bnn_tvm.runtime import load_remote
from bnn_tvm.strategies import candidates
from bnn_tvm.transform import optimize
from bnn_tvm.tuning_database import AtomicJSONDatabase

from .helpers import single_op_module

CHANNELS_IN = (1, 31, 32, 33, 97, 256, 1000)  # below, at and above one word, odd remainders, many words
CHANNELS_OUT = (1, 7, 32, 100)  # below, at and above one block of 32 output channels
VARIANTS = list(itertools.product(ACTIVATIONS, OUT_DTYPES))


@dataclass(frozen=True)
class Case:
    batch: int
    channels_in: int
    channels_out: int
    activation: str = "NONE"
    out_dtype: str = "float32"
    formula: str = "dot"

    def __str__(self):
        return (f"n{self.batch}-c{self.channels_in}-o{self.channels_out}-{self.activation}-{self.out_dtype}"
                f"-{self.formula}")


def cases():
    """Every (channels_in, channels_out); each (activation, output dtype) pair comes at batch 1 and at 3, and
    the float and int8 ones with each output formula."""
    for i, (c, co) in enumerate(itertools.product(CHANNELS_IN, CHANNELS_OUT)):
        activation, out_dtype = VARIANTS[i % len(VARIANTS)]
        formula = "lce" if out_dtype != ops.PACKED_DTYPE and i // len(VARIANTS) % 2 else "dot"
        yield Case((1, 3)[i // len(CHANNELS_OUT) % 2], c, co, activation, out_dtype, formula)


CASES = list(cases())


def operands(case: Case, seed=0):
    """Packed input and filter, and the output transform's parameters, scaled so int8 outputs do not all
    saturate and thresholds fall inside [0, C]."""
    rng = np.random.default_rng(seed)
    x = ops.quantize_ref(rng.standard_normal((case.batch, case.channels_in)).astype("float32"))
    w = ops.quantize_ref(rng.standard_normal((case.channels_out, case.channels_in)).astype("float32"))
    multiplier = (rng.uniform(-2, 2, case.channels_out) / math.sqrt(case.channels_in)).astype("float32")
    bias = rng.uniform(-1, 1, case.channels_out).astype("float32")
    thresholds = rng.integers(0, case.channels_in + 1, case.channels_out).astype("int32")
    return x, w, multiplier, bias, thresholds


def attrs_of(case: Case) -> dict:
    return dict(channels_in=case.channels_in, activation=case.activation, out_dtype=case.out_dtype,
                out_scale=0.02, out_zero_point=3, output_formula=case.formula)


def bdense_call(case: Case, w, multiplier, bias, thresholds):
    if case.out_dtype == ops.PACKED_DTYPE:
        transform = dict(thresholds=relax.const(thresholds))
    else:
        transform = dict(multiplier=relax.const(multiplier), bias=relax.const(bias))
    return lambda v: ops.bdense(v, relax.const(w), **transform, **attrs_of(case))


def module_and_reference(case: Case, seed=0):
    x, w, multiplier, bias, thresholds = operands(case, seed)
    mod = single_op_module(bdense_call(case, w, multiplier, bias, thresholds), x)
    return mod, x, ops.bdense_ref(x, w, attrs_of(case), multiplier, bias, thresholds)


def check(compiled, x, expected):
    got = compiled(x)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bdense_matches_reference(case, build_and_load):
    mod, x, expected = module_and_reference(case)
    check(build_and_load(mod), x, expected)


@pytest.mark.parametrize("case", [Case(3, 97, 100, "RELU", "float32"), Case(1, 1000, 7, "NONE", "int32"),
                                  Case(3, 33, 32, "RELU6", "int8")], ids=str)
def test_avx2_preset_matches_reference(case, build_and_load):
    """AVX2 has no VPOPCNTD: LLVM counts by nibble lookup."""
    mod, x, expected = module_and_reference(case)
    check(build_and_load(mod, target="x86-avx2"), x, expected)


def test_reference_is_the_dot_product_of_signs():
    """The reference against plain float math on +-1 values: act(x . w) * m + b, and the bits accum > t."""
    rng = np.random.default_rng(1)
    xf, wf = rng.standard_normal((4, 70)).astype("float32"), rng.standard_normal((9, 70)).astype("float32")
    x, w = ops.quantize_ref(xf), ops.quantize_ref(wf)
    dot = np.where(xf < 0, -1.0, 1.0) @ np.where(wf < 0, -1.0, 1.0).T
    ones, zeros = np.ones(9, np.float32), np.zeros(9, np.float32)
    for activation, act in [("NONE", lambda d: d), ("RELU", lambda d: np.maximum(d, 0)),
                            ("RELU_N1_TO_1", lambda d: np.clip(d, -1, 1)), ("RELU6", lambda d: np.clip(d, 0, 6))]:
        got = ops.bdense_ref(x, w, dict(channels_in=70, activation=activation), ones, zeros)
        np.testing.assert_array_equal(got, act(dot).astype(np.float32))
    thresholds = rng.integers(0, 71, 9).astype(np.int32)
    packed = ops.bdense_ref(x, w, dict(channels_in=70, out_dtype="int32"), thresholds=thresholds)
    accum = (70 - dot) / 2
    np.testing.assert_array_equal(packed, ops.quantize_ref(np.where(accum > thresholds, -1.0, 1.0)))


@pytest.mark.parametrize("batch,channels_in,units", [(3, 97, 33), (1, 1000, 100)])
def test_matches_larq_quant_dense(batch, channels_in, units, build_and_load):
    """Larq's binary dense layer: its float output is a sum of +-1 products, exact integers, so equal."""
    from bnn_tvm import zoo  # noqa: F401 - sets TF_USE_LEGACY_KERAS before TensorFlow is imported

    tf = pytest.importorskip("tensorflow")
    lq = pytest.importorskip("larq")
    tf.keras.utils.set_random_seed(0)
    layer = lq.layers.QuantDense(units, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                 kernel_constraint="weight_clip", use_bias=False)
    model = tf.keras.Sequential([tf.keras.Input((channels_in,)), layer])
    x = np.random.default_rng(2).standard_normal((batch, channels_in)).astype("float32")
    x[0, :3] = 0.0  # ste_sign(0) = +1, as quantize packs it
    kernel = layer.get_weights()[0]  # [C, units]
    ones, zeros = relax.const(np.ones(units, np.float32)), relax.const(np.zeros(units, np.float32))
    mod = single_op_module(lambda v: ops.bdense(ops.quantize(v), relax.const(ops.quantize_ref(kernel.T.copy())),
                                                channels_in=channels_in, multiplier=ones, bias=zeros), x)
    expected = model.predict(x, verbose=0)
    assert np.array_equal(expected, np.round(expected))  # exact integers
    got = build_and_load(mod)(x)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- errors


def _emit(x_type, w_shape, **kwargs):
    x = relax.Var("x", relax.TensorType(*x_type))
    w = relax.const(np.zeros(w_shape, np.int32))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        bb.emit(ops.bdense(x, w, **kwargs))


M8 = relax.const(np.ones(8, np.float32))
GOOD = dict(x_type=((2, 4), "int32"), w_shape=(8, 4), channels_in=100, multiplier=M8, bias=M8)


@pytest.mark.parametrize(
    "change,what",
    [
        (dict(w_shape=(8, 3)), "filter"),  # words of input and filter differ
        (dict(w_shape=(8, 2, 2)), "filter"),
        (dict(x_type=((2, 2, 4), "int32")), "input"),
        (dict(x_type=((2, 4), "float32")), "input"),
        (dict(channels_in=200), "channels_in"),  # 200 channels are 7 words, not 4
        (dict(channels_in=96), "channels_in"),
        (dict(channels_in=0), "channels_in"),
        (dict(multiplier=relax.const(np.ones(7, np.float32))), "post_activation_multiplier"),
        (dict(bias=relax.const(np.ones(8, np.int32))), "post_activation_bias"),
        (dict(activation="TANH"), "activation"),
        (dict(out_dtype="float16"), "out_dtype"),
        (dict(out_dtype="int8", out_scale=0.0), "out_scale"),
        (dict(out_dtype="int32", thresholds=relax.const(np.ones(9, np.int32))), "thresholds"),
        (dict(out_dtype="int32", thresholds=relax.const(np.ones(8, np.float32))), "thresholds"),
        (dict(out_dtype="int32", thresholds=None), "thresholds"),  # refused by the constructor already
        (dict(multiplier=None), "multiplier"),
    ],
)
def test_bdense_rejects_bad_inputs_and_attributes_naming_them(change, what):
    kwargs = {**GOOD, **change}
    with pytest.raises(Exception) as err:
        _emit(**kwargs)
    assert "relax.bnn.bdense" in str(err.value) and what in str(err.value), str(err.value)


def test_bdense_infers_shapes():
    x = relax.Var("x", relax.TensorType((3, 4), "int32"))
    w = relax.const(np.zeros((40, 4), np.int32))
    m = relax.const(np.ones(40, np.float32))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        y = bb.emit(ops.bdense(x, w, channels_in=100, multiplier=m, bias=m, out_dtype="int8"))
        packed = bb.emit(ops.bdense(x, w, channels_in=100, thresholds=relax.const(np.ones(40, np.int32)),
                                    out_dtype="int32"))
        bb.emit_func_output(y)
    assert [int(d) for d in y.ty.shape.values] == [3, 40] and y.ty.dtype == "int8"
    assert [int(d) for d in packed.ty.shape.values] == [3, 2] and packed.ty.dtype == "int32"


# ---------------------------------------------------------------- generated code


def assembly(target_name, case=Case(1, 1024, 64)):
    target, _ = bnn_tvm.targets.resolve(target_name)
    executable = tvm.compile(module_and_reference(case)[0], target=target, relax_pipeline=_pipeline(target))
    return executable.mod.imports[0].inspect_source("asm")


def count(body, *instructions):
    return {op: len(re.findall(rf"\t{op}\t", body)) for op in instructions}


def test_aarch64_hot_loop_is_eor_cnt_uadalp_and_lanes_sum_by_uaddlv():
    counts = count(assembly("rpi4"), "eor", "cnt", "uadalp", "uaddlp", "uaddlv")
    # 1024 channels: 8 chunks of 128 bits per output channel, 4 channels a tile
    assert counts["cnt"] >= 32 and counts["uadalp"] + counts["uaddlp"] >= counts["cnt"], counts
    assert counts["eor"] >= counts["cnt"] and counts["uaddlv"] >= 4, counts


def test_avx512_uses_vpopcnt():
    assert re.search(r"\tvpopcnt[dq]\t%zmm", assembly("x86-avx512")), "no AVX-512 VPOPCNTDQ in the bdense kernel"


def test_armv7_builds():
    body = assembly("rpi3")
    assert "vcnt.8" in body and "vpadal.u8" in body


# ---------------------------------------------------------------- knobs and the board


def tilings(width: int, parts: int):
    """Every way to write ``width`` as a product of ``parts`` ordered factors."""
    if parts == 1:
        yield [width]
        return
    for d in (d for d in range(1, width + 1) if width % d == 0):
        for rest in tilings(width // d, parts - 1):
            yield [d, *rest]


def turned(default: list[int], max_inner: int) -> list[int] | None:
    """The valid tiling farthest from ``default``: most factors changed, then the largest inner one."""
    others = [t for t in tilings(math.prod(default), len(default)) if t[-1] <= max_inner and t != default]
    return max(others, key=lambda t: (sum(a != b for a, b in zip(t, default)), t[-1], t[0]), default=None)


def build_with_turned_knobs(case: Case, target_name, tmp_path):
    """The op built with every knob of its schedule turned away from its default (see ``turned``),
    handed to compile as a tuning record, as a tuned schedule is."""
    target = bnn_tvm.targets.resolve(target_name)[0]
    mod = module_and_reference(case)[0]
    kernel = legalize(optimize(mod), target)["bnn_bdense"]
    workload = ms.tune_context._normalize_mod(kernel)  # as MetaSchedule keys its records
    sch = s_tir.Schedule(workload)
    block = "bdense_lanes" if "arm_cpu" in target.keys else "bdense_accum"
    with target:
        rule = next(fn for fn in candidates(RULE, target) if fn(sch, sch.get_sblock(block)) is not None)
    trace, knobs = sch.trace, 0
    for inst in trace.insts:
        if inst.kind.name == "SamplePerfectTile":
            decision = turned([int(d) for d in trace.decisions[inst]], int(inst.attrs[1]))
            if decision is not None:
                trace = trace.with_decision(inst, decision, remove_postproc=True)
                knobs += 1
    assert knobs >= 3, f"{rule.__name__}: only {knobs} knobs could turn"
    replayed = s_tir.Schedule(workload)
    trace.apply_to_schedule(replayed, remove_postproc=True)
    database = AtomicJSONDatabase(tmp_path / "records")
    database.commit_tuning_record(ms.database.TuningRecord(
        replayed.trace, database.commit_workload(workload), [1e-6], target,
        ms.arg_info.ArgInfo.from_prim_func(kernel)))
    reports = []
    so = tmp_path / f"turned-{target_name}.so"
    bnn_tvm.compile(mod, target_name, tuning_records=tmp_path / "records",
                    pretuned=False, report=lambda tuned, _total, _folder: reports.append(tuned)).export_library(so)
    assert reports == [1]  # the kernel came from the record
    return so


KNOBS_CASE = Case(3, 1000, 100, "RELU", "float32")  # 32 words, 4 blocks: every knob has another choice


def test_turned_knobs_stay_bitexact_x86(tmp_path):
    _, x, expected = module_and_reference(KNOBS_CASE)
    check(bnn_tvm.load(build_with_turned_knobs(KNOBS_CASE, "host", tmp_path)), x, expected)


# One per output dtype: 33 channels (two words, padded to a 128-bit chunk for the NEON kernel) and 1000.
BOARD_CASES = [Case(3, 33, 40, "RELU6", "float32"), Case(3, 33, 7, "NONE", "int32"),
               Case(1, 1000, 100, "RELU_N1_TO_1", "int8")]


def test_neon_kernels_are_bitexact_on_board(emulated_board, tmp_path):
    for case in BOARD_CASES:
        mod, x, expected = module_and_reference(case)
        so = tmp_path / f"bdense-{case}-aarch64.so"
        bnn_tvm.compile(mod, target="rpi4").export_library(so)
        check(load_remote(so, *emulated_board), x, expected)
    _, x, expected = module_and_reference(KNOBS_CASE)
    check(load_remote(build_with_turned_knobs(KNOBS_CASE, "rpi4", tmp_path), *emulated_board), x, expected)
