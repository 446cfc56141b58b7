"""The generated machine code: the kernels' hot loops use the instructions they were scheduled for.

Counted in the hot loop (the longest innermost loop of the kernel's function in the disassembly), not over the
whole module: an instruction the prologue, the padding or the output transform uses proves nothing about the
loop that runs K times per output.
"""

import re

import numpy as np
import pytest
import tvm
from tvm import relax

import bnn_tvm
from bnn_tvm import relay_ops as ops
from bnn_tvm.build import _pipeline
from bnn_tvm.elf import MACHINES as ELF_MACHINES, machine as elf_machine

from .helpers import single_op_module


def bconv_module(channels_in=256, channels_out=64, size=8):
    rng = np.random.default_rng(0)
    x = np.zeros((1, size, size, ops.packed_words(channels_in)), np.int32)
    w = ops.quantize_ref(rng.standard_normal((channels_out, 3, 3, channels_in)).astype("float32"))
    ones = relax.const(np.ones(channels_out, np.float32))
    return single_op_module(
        lambda v: ops.bconv2d(v, relax.const(w), multiplier=ones, bias=ones, channels_in=channels_in,
                              padding="SAME", pad_value=1), x)


LABEL = re.compile(r"^(\.LBB\d+_\d+):")
BRANCH = re.compile(r"^\t(?:b\.?[a-z]*|cbn?z|tbn?z|j[a-z]+)\t.*?(\.LBB\d+_\d+)\s*$")  # aarch64, armv7, x86
FUNCTION = re.compile(r"^([A-Za-z_][\w.]*):")


def hot_loop(asm: str, function: str) -> str:
    """The longest innermost loop (a label and the backward branch to it, with no loop inside) of the
    functions named ``function...`` (the kernel and its parallel body, ``<kernel>_compute_``)."""
    lines, inside = [], False
    for line in asm.splitlines():
        if match := FUNCTION.match(line):
            inside = match.group(1).startswith(function)
        if inside:
            lines.append(line)
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := LABEL.match(line))}
    loops = [(labels[m.group(1)], i) for i, line in enumerate(lines)
             if (m := BRANCH.match(line)) and labels.get(m.group(1), i) < i]
    innermost = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    assert innermost, f"no loop in {function}"
    start, end = max(innermost, key=lambda loop: loop[1] - loop[0])
    return "\n".join(lines[start:end + 1])


def count(body: str, mnemonic: str, operands: str = "") -> int:
    return len(re.findall(rf"\t{re.escape(mnemonic)}\t{operands}", body))


def assembly(target_name, mod):
    target, _ = bnn_tvm.targets.resolve(target_name)
    executable = tvm.compile(mod, target=target, relax_pipeline=_pipeline(target))
    return executable.mod.imports[0].inspect_source("asm")


@pytest.mark.parametrize("target", ["rpi4", "aarch64"])
def test_aarch64_bconv_hot_loop_is_eor_cnt_addp_uadalp(target):
    body = hot_loop(assembly(target, bconv_module()), "bnn_bconv2d")
    counts = {op: count(body, op) for op in ("eor", "cnt", "uadalp")}
    byte_addp = count(body, "addp", r"v\d+\.16b")
    assert counts["cnt"] >= 16, counts
    # per 128-bit chunk and channel one eor and cnt; per 4 channels' chunks 3 byte addp and 1 uadalp (LCE's kernel)
    assert counts["eor"] == counts["cnt"], counts
    assert byte_addp * 4 == counts["cnt"] * 3 and counts["uadalp"] * 4 == counts["cnt"], (byte_addp, counts)


def test_x86_avx512_bconv_uses_vpopcnt():
    body = hot_loop(assembly("x86-avx512", bconv_module()), "bnn_bconv2d")
    assert re.search(r"\tvpopcnt[dq]\t[^\n]*%zmm", body), "no AVX-512 VPOPCNTDQ in the bconv kernel's hot loop"


@pytest.mark.parametrize("target", ["x86-avx2", "host"])
def test_x86_without_vector_popcount_accumulates_byte_counts_in_u16_lanes(target):
    """AVX2: nibble-lookup byte counts added pairwise into u16 lanes (VPMADDUBSW), never widened per word
    (VPSADBW, which LLVM's int32 popcount needs); a host with VPOPCNTDQ keeps VPOPCNTD."""
    body = hot_loop(assembly(target, bconv_module()), "bnn_bconv2d")
    if re.search(r"\tvpopcnt[dq]\t", body):
        assert target == "host", "the AVX2 preset used an AVX-512 popcount"
        return
    # 8 columns x 8 channels per step: one VPMADDUBSW per column's YMM of byte counts, two VPSHUFB lookups
    assert count(body, "vpmaddubsw", "[^\n]*%ymm") >= 8 and count(body, "vpshufb", "[^\n]*%ymm") >= 16, body
    assert count(body, "vpshufb") == 2 * count(body, "vpmaddubsw")
    assert "vpsadbw" not in body


def test_armv7_builds():
    body = hot_loop(assembly("rpi3", bconv_module()), "bnn_bconv2d")
    assert count(body, "vcnt.8") >= 16 and count(body, "vpadal.u8") == count(body, "vcnt.8")


@pytest.mark.parametrize("target", ["rpi4", "x86-avx512"])
def test_classifier_matmul_is_vectorized(target):
    """The float dense layer does vector FMAs over a tile of output columns (scalar: one fmadd per MAC)."""
    x = np.zeros((1, 1, 1, 1024), np.float32)  # as TFLite's FULLY_CONNECTED reaches Relax
    w = np.zeros((1024, 1000), np.float32)
    body = hot_loop(assembly(target, single_op_module(lambda v: relax.op.matmul(v, relax.const(w)), x)), "matmul")
    vector_fma = r"\tfmla\tv\d+\.4s" if target == "rpi4" else r"\tvfmadd\d+ps\t[^\n]*%[yz]mm"
    assert re.search(vector_fma, body), "no vector FMA in the matmul's hot loop"


EF_ARM_ABI_FLOAT_HARD = 0x400  # 32-bit ARM's e_flags: floats passed in VFP registers (gnueabihf)


@pytest.mark.parametrize("target", [name for name in bnn_tvm.targets.presets() if name != "android-arm64"])
def test_every_preset_links_a_library(target, tmp_path):
    """Each preset's .so links with its compiler (android-arm64 needs an NDK's clang: test_bundle) for its
    architecture; 32-bit ARM with the hard-float ABI its gnueabihf libraries use."""
    so = bnn_tvm.compile(bconv_module(channels_in=64, channels_out=32, size=4), target).export_library(
        tmp_path / f"{target}.so")
    triple = str(bnn_tvm.targets.resolve(target)[0].attrs.get("mtriple", ""))
    expected = "aarch64" if triple.startswith("aarch64") else "32-bit ARM" if triple.startswith("arm") else "x86-64"
    assert ELF_MACHINES.get(elf_machine(so)) == expected, target
    if expected == "32-bit ARM":
        assert int.from_bytes(so.read_bytes()[36:40], "little") & EF_ARM_ABI_FLOAT_HARD
