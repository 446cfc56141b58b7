"""How a binary MAC layer accumulates its popcounts on a target: a function of the target and the geometry.

The kinds are the TE computes of ``relay_ops.bconv2d_accumulations`` (bconv2d) and ``relay_ops.bdense``; each
target family's schedules tile the kinds chosen for it here, and the tuning databases hold those kernels, so
the choice is made once, here, from the target passed in (never from the target in scope).

The halfword kinds count into u16 lanes: a lane sees 16 bits of each word (or 128-bit chunk) the reduction
steps over, so it adds at most 16 per step and a kind is taken only while ``steps * 16 <= UINT16_MAX`` (64 per
step for the quads' half chunks); deeper layers accumulate ``words`` in int32.
"""

from __future__ import annotations

import tvm
from tvm.target.codegen import target_has_features

from ..relay_ops._common import round_up
from ..relay_ops._lanes import BITS_PER_HALFWORD, QUAD_HALF_BITS, UINT16_MAX, WORDS_PER_CHUNK
from ..relay_ops.bconv2d_geometry import Conv2dGeometry
from ..relay_ops.bdense import DenseGeometry


def lanes_fit(steps: int, bits_per_step: int = BITS_PER_HALFWORD) -> bool:
    """Whether a u16 lane adding at most ``bits_per_step`` per step, ``steps`` times, cannot overflow."""
    return steps * bits_per_step <= UINT16_MAX


def _is_arm(target: tvm.target.Target) -> bool:
    return "arm_cpu" in list(target.keys)


def _is_aarch64(target: tvm.target.Target) -> bool:
    return "aarch64" in str(target.attrs.get("mtriple", ""))


def _check(target) -> None:
    if target is None:
        raise ValueError("choosing an accumulation needs the target (got None)")


def bconv2d_accumulation(target: tvm.target.Target, g: Conv2dGeometry) -> str:
    """How ``target`` accumulates the popcounts of the bconv2d ``g``.

    On aarch64 (NEON popcount into u16 lanes of 128-bit chunks, 4 output channels per register): ``quad_words``
    for taps of one word; else, where a lane (64 bits per chunk) cannot overflow, ``quad_halves``, or
    ``pixel_quad_halves`` for taps of 2 words, whose 2 pixels share each chunk; all three for one group only.
    Otherwise on ARM (armv7, and aarch64 where those do not apply) one register per channel:
    ``pixel_halfwords`` where a tap has 1 or 2 words (one group), 4 or 2 pixels sharing each chunk, else
    ``halfwords``, a pixel's words padded to whole chunks. On x86 with AVX2 but without a vector popcount
    instruction, for one group (the channels of a register share the input word): ``channel_halfwords``, the
    byte counts of each output channel's word added pairwise into its two u16 lanes (VPSHUFB + VPMADDUBSW),
    summed once after the reduction instead of widened to int32 every word. Else ``words`` (int32 per word),
    and so wherever the u16 lanes could overflow.
    """
    _check(target)
    if target.kind.name != "llvm":
        return "words"
    taps = g.kernel_h * g.kernel_w
    one_group = g.groups == 1  # a quad's 4 channels read one input chunk, and 2 pixels' chunks one group's words
    if not _is_arm(target):
        avx2_only = target_has_features("avx2", target) and not target_has_features("avx512vpopcntdq", target)
        if lanes_fit(taps * g.filter_words) and one_group and avx2_only:
            return "channel_halfwords"
        return "words"
    chunks = round_up(g.filter_words, WORDS_PER_CHUNK) // WORDS_PER_CHUNK
    if not lanes_fit(taps * chunks):
        return "words"
    if one_group and _is_aarch64(target):
        if g.filter_words == 1:
            return "quad_words"
        if lanes_fit(taps * chunks, QUAD_HALF_BITS):
            return "pixel_quad_halves" if g.filter_words == 2 else "quad_halves"
    return "pixel_halfwords" if g.filter_words in (1, 2) and one_group else "halfwords"


def bdense_accumulation(target: tvm.target.Target, g: DenseGeometry) -> str:
    """``halfwords`` (NEON popcount into u16 lanes of 128-bit chunks) on ARM while the lanes cannot overflow
    (C up to 2^19), else ``words``."""
    _check(target)
    if not _is_arm(target):
        return "words"
    return "halfwords" if lanes_fit(round_up(g.words, WORDS_PER_CHUNK) // WORDS_PER_CHUNK) else "words"
