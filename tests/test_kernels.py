"""Every bconv2d / bdense kernel variant against the numpy reference of LCE's semantics, from one table.

The table is LCE's bconv2d test grid (input shape x filter x channels x groups x stride x dilation x padding
(same-zero, same-one, valid) x activation x output type), sampled: the valid combinations in a fixed order,
every ``SAMPLE_STEP``-th of them (deterministic, and each value of each axis still appears). Each case runs
with every accumulation kind its geometry admits: the x86 ones through the real pipeline (``host``: words with
VPOPCNTD, ``x86-avx2``: channel_halfwords), the ARM ones' computes (halfwords, pixel_halfwords, quad_words,
quad_halves, pixel_quad_halves) built for this machine without their NEON schedule (the board tests run those
schedules). The u16 lane kinds are also run at the deepest layer they accept, every bit disagreeing, and one
step past it, where the strategy picks another kind.
"""

import itertools

import numpy as np
import pytest
import tvm
from tvm import relax

import bnn_tvm
from bnn_tvm import targets
from bnn_tvm import relay_ops as ops
from bnn_tvm.relay_ops.bconv2d import legalize as legalize_bconv2d
from bnn_tvm.relay_ops.bconv2d_geometry import OP as BCONV2D_OP
from bnn_tvm.relay_ops.bconv2d_geometry import Conv2dGeometry
from bnn_tvm.relay_ops.bdense import OP as BDENSE_OP
from bnn_tvm.relay_ops.bdense import DenseGeometry
from bnn_tvm.relay_ops.bdense import legalize as legalize_bdense
from bnn_tvm.strategies import binary_legalizations
from bnn_tvm.strategies.accumulation import bconv2d_accumulation, bdense_accumulation

from .helpers import single_op_module

PADDINGS = {"same-zero": ("SAME", 0), "same-one": ("SAME", 1), "valid": ("VALID", 1)}
GRID = dict(
    shape=[(4, 4), (5, 3)],
    channels_in=[1, 31, 33, 64, 97, 128],
    filter=[1, 3],
    groups=[1, 2],
    stride=[1, 2],
    dilation=[1, 2],
    padding=list(PADDINGS),
    activation=["NONE", "RELU", "RELU_N1_TO_1", "RELU6"],
    out_dtype=["float32", "int8", "int32"],
)
SAMPLE_STEP = 97  # prime to every axis length, so the sample walks all values of every axis


def valid(case) -> bool:
    pad, pad_value = PADDINGS[case["padding"]]
    if case["groups"] > 1 and case["channels_in"] % (32 * case["groups"]):
        return False  # grouped: whole words per group
    if pad == "SAME" and pad_value == 0 and case["out_dtype"] == "int32":
        return False  # LCE: bitpacked output needs one-padding
    if case["filter"] == 1 and case["dilation"] > 1:
        return False
    h, w = case["shape"]
    window = (case["filter"] - 1) * case["dilation"] + 1
    return pad == "SAME" or window <= min(h, w)


def sampled_cases():
    every = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    return [case for case in every if valid(case)][::SAMPLE_STEP]


CASES = sampled_cases()
ARM_KINDS = ("halfwords", "pixel_halfwords", "quad_words", "quad_halves", "pixel_quad_halves")


def arm_kinds(g: Conv2dGeometry) -> list[str]:
    """The ARM accumulations whose computes take ``g`` (as ``strategies.accumulation`` assumes)."""
    if g.groups > 1:
        return ["halfwords"]
    kinds = ["halfwords", "quad_halves"]
    if g.filter_words in (1, 2):
        kinds.append("pixel_halfwords")
    if g.filter_words == 1:
        kinds.append("quad_words")
    if g.filter_words == 2:
        kinds.append("pixel_quad_halves")
    return kinds


def conv_problem(case, rng):
    ci, co, k, groups = case["channels_in"], 40, case["filter"], case["groups"]
    x = ops.quantize_ref(rng.standard_normal((1, *case["shape"], ci)).astype("float32"))
    w = ops.quantize_ref(rng.standard_normal((co, k, k, ci // groups)).astype("float32"))
    pad, pad_value = PADDINGS[case["padding"]]
    # LCE's formula where LCE takes the layer; zero padding with an activation only as "dot" (LCE refuses it).
    formula = "dot" if pad_value == 0 and case["activation"] != "NONE" else "lce"
    attrs = dict(channels_in=ci, strides=[case["stride"]] * 2, dilations=[case["dilation"]] * 2, padding=pad,
                 pad_value=pad_value, activation=case["activation"], out_dtype=case["out_dtype"], out_scale=0.05,
                 out_zero_point=3, output_formula=formula)
    multiplier = rng.uniform(-0.5, 0.5, co).astype("float32")
    bias = rng.uniform(-2, 2, co).astype("float32")
    thresholds = rng.integers(0, k * k * ci, co).astype("int32")
    transform = dict(thresholds=relax.const(thresholds)) if case["out_dtype"] == "int32" else dict(
        multiplier=relax.const(multiplier), bias=relax.const(bias))
    mod = single_op_module(lambda v: ops.bconv2d(v, relax.const(w), **transform, **attrs), x)
    expected = ops.bconv2d_ref(x, w, attrs, multiplier, bias, thresholds)
    return mod, x, expected, Conv2dGeometry(list(x.shape), list(w.shape), attrs)


def run_with_accumulation(mod, x, op: str, kind: str):
    """``mod`` built for this machine with ``op`` accumulating as ``kind``, TVM's default (unscheduled) lowering."""
    legalize = legalize_bconv2d if op == BCONV2D_OP else legalize_bdense
    mod = relax.transform.LegalizeOps({op: lambda bb, call: legalize(bb, call, lambda _g: kind)})(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def case_id(case):
    return "-".join(f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v) for v in case.values())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bconv2d_every_accumulation_is_bitexact(case, rng, build_and_load):
    mod, x, expected, g = conv_problem(case, rng)
    for target in ("host", "x86-avx2"):
        kind = bconv2d_accumulation(targets.resolve(target)[0], g)
        np.testing.assert_array_equal(build_and_load(mod, target=target)(x), expected, err_msg=f"{target} ({kind})")
    for kind in arm_kinds(g):
        np.testing.assert_array_equal(run_with_accumulation(mod, x, BCONV2D_OP, kind), expected, err_msg=kind)


def test_the_table_reaches_every_axis_value_and_every_accumulation():
    for axis, values in GRID.items():
        assert {repr(case[axis]) for case in CASES} == {repr(v) for v in values}, axis
    rng = np.random.default_rng(0)
    kinds = {kind for case in CASES for kind in arm_kinds(conv_problem(case, rng)[3])}
    assert kinds == set(ARM_KINDS)
    assert 12 <= len(CASES) <= 40  # a few minutes at most on 2 cores


# ---------------------------------------------------------------- the u16 lanes' overflow bound


def disagreeing(shape_x, shape_w):
    """Packed operands whose every bit differs (x all -1, w all +1), so each lane counts all it can."""
    return np.full(shape_x, -1, np.int32), np.zeros(shape_w, np.int32)


def conv_at_depth(words: int, channels_out: int = 8):
    x, w = disagreeing((1, 1, 1, words), (channels_out, 1, 1, words))
    ones = relax.const(np.ones(channels_out, np.float32))
    zeros = relax.const(np.zeros(channels_out, np.float32))
    attrs = dict(channels_in=32 * words, padding="VALID", output_formula="dot")
    mod = single_op_module(lambda v: ops.bconv2d(v, relax.const(w), multiplier=ones, bias=zeros, **attrs), x)
    g = Conv2dGeometry(list(x.shape), list(w.shape), {**attrs, "strides": [1, 1], "dilations": [1, 1],
                                                       "pad_value": 1, "activation": "NONE", "out_dtype": "float32"})
    return mod, x, g, np.full((1, 1, 1, channels_out), -32.0 * words, np.float32)  # dot = K - 2K


def dense_at_depth(words: int, channels_out: int = 4):
    x, w = disagreeing((1, words), (channels_out, words))
    ones = relax.const(np.ones(channels_out, np.float32))
    zeros = relax.const(np.zeros(channels_out, np.float32))
    mod = single_op_module(lambda v: ops.bdense(v, relax.const(w), multiplier=ones, bias=zeros,
                                                channels_in=32 * words), x)
    g = DenseGeometry(list(x.shape), list(w.shape), dict(channels_in=32 * words, activation="NONE",
                                                         out_dtype="float32"))
    return mod, x, g, np.full((1, channels_out), -32.0 * words, np.float32)


RPI4 = targets.resolve("rpi4")[0]
AVX2 = targets.resolve("x86-avx2")[0]
# (what, the deepest layer in words, its problem, target, the kind there, the kind one word deeper)
BOUNDS = [
    # a word adds 16 to each of a channel's two lanes: 4095 words of a 1x1 filter
    ("conv2d AVX2", 4095, conv_at_depth, AVX2, "channel_halfwords", "words"),
    # a half chunk (64 bits) adds 64 to a quad lane: 1023 chunks; deeper, one register per channel (16 per chunk)
    ("conv2d aarch64", 4092, conv_at_depth, RPI4, "quad_halves", "halfwords"),
    # a chunk adds 16 to a lane: 4095 chunks
    ("dense aarch64", 16380, dense_at_depth, RPI4, "halfwords", "words"),
]


@pytest.mark.parametrize("what,words,problem,target,kind,deeper_kind", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_halfword_lanes_reach_their_maximum_and_one_step_past_takes_another_accumulation(
        what, words, problem, target, kind, deeper_kind):
    choose = bconv2d_accumulation if problem is conv_at_depth else bdense_accumulation
    op = BCONV2D_OP if problem is conv_at_depth else BDENSE_OP
    mod, x, g, expected = problem(words)
    assert choose(target, g) == kind
    np.testing.assert_array_equal(run_with_accumulation(mod, x, op, kind), expected)
    # One word deeper (a chunk more, for chunked kinds) the lanes would wrap: the strategy takes another kind.
    step = 1 if kind == "channel_halfwords" else 4
    mod, x, g, expected = problem(words + step)
    assert choose(target, g) == deeper_kind
    np.testing.assert_array_equal(run_with_accumulation(mod, x, op, deeper_kind), expected)
    assert not np.array_equal(run_with_accumulation(mod, x, op, kind), expected), "the bound is not tight"


def test_channel_halfwords_at_its_bound_is_exact_through_the_avx2_schedule(build_and_load):
    mod, x, _, expected = conv_at_depth(4095)
    np.testing.assert_array_equal(build_and_load(mod, target="x86-avx2")(x), expected)


def test_legalizing_needs_the_target():
    mod, _, g, _ = conv_at_depth(2)
    with pytest.raises(ValueError, match="needs the target"):
        binary_legalizations(None)
    with pytest.raises(ValueError, match="needs the target"):
        bconv2d_accumulation(None, g)
    legalized = relax.transform.LegalizeOps()(mod)  # no target: no kernel is made
    assert not any(isinstance(f, tvm.tirx.PrimFunc) for _, f in legalized.functions_items())


def board_cases():
    """For each accumulation rpi4 chooses, a case of the table (its first 3x3 one, if any): the NEON schedules
    and intrinsics."""
    rng, chosen = np.random.default_rng(0), {}
    for case in CASES:
        kind = bconv2d_accumulation(RPI4, conv_problem(case, rng)[3])
        if kind not in chosen or case["filter"] > chosen[kind]["filter"]:
            chosen[kind] = case
    return chosen


def test_bconv2d_neon_kernels_are_bitexact_on_board(emulated_board, tmp_path, rng):
    from bnn_tvm.runtime import load_remote

    cases = board_cases()
    assert set(cases) == {"quad_words", "quad_halves", "pixel_quad_halves", "halfwords"}, set(cases)
    for kind, case in cases.items():
        mod, x, expected, _ = conv_problem(case, rng)
        so = tmp_path / f"bconv2d-{kind}.so"
        bnn_tvm.compile(mod, target="rpi4").export_library(so)
        np.testing.assert_array_equal(load_remote(so, *emulated_board)(x), expected, err_msg=f"{kind}: {case}")
