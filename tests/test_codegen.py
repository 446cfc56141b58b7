"""The generated machine code: the kernels use the instructions they were scheduled for."""

import re

import numpy as np
import pytest
import tvm
from tvm import relax

import bnn_tvm
from bnn_tvm import relay_ops as ops
from bnn_tvm.build import _pipeline

from .helpers import single_op_module


def bconv_module(channels_in=256, channels_out=64, size=8):
    rng = np.random.default_rng(0)
    x = np.zeros((1, size, size, ops.packed_words(channels_in)), np.int32)
    w = ops.quantize_ref(rng.standard_normal((channels_out, 3, 3, channels_in)).astype("float32"))
    ones = relax.const(np.ones(channels_out, np.float32))
    return single_op_module(
        lambda v: ops.bconv2d(v, relax.const(w), multiplier=ones, bias=ones, channels_in=channels_in,
                              padding="SAME", pad_value=1), x)


def assembly(target_name, mod):
    target, _ = bnn_tvm.targets.resolve(target_name)
    executable = tvm.compile(mod, target=target, relax_pipeline=_pipeline(target))
    return executable.mod.imports[0].inspect_source("asm")


@pytest.mark.parametrize("target", ["rpi4", "aarch64"])
def test_aarch64_bconv_hot_loop_is_eor_cnt_uadalp(target):
    body = assembly(target, bconv_module())  # the module holds the bconv kernel and little else
    counts = {op: len(re.findall(rf"\t{op}\t", body)) for op in ("eor", "cnt", "uadalp", "ldr", "ldp")}
    assert counts["cnt"] >= 16 and counts["uadalp"] >= 16, counts
    # one eor, cnt and uadalp (or uaddlp, for a lane's first chunk) per 128-bit chunk and channel
    assert counts["eor"] >= counts["cnt"] and counts["uadalp"] + len(re.findall(r"\tuaddlp\t", body)) >= counts["cnt"]


def test_x86_avx512_bconv_uses_vpopcnt():
    body = assembly("x86-avx512", bconv_module())
    assert re.search(r"\tvpopcnt[dq]\t%zmm", body), "no AVX-512 VPOPCNTDQ in the bconv kernel"


def test_armv7_builds():
    body = assembly("rpi3", bconv_module())
    assert "vcnt.8" in body and "vpadal.u8" in body
