"""The lane layouts binary MAC ops accumulate their popcounts in, and the pieces of TE they share.

Output channels are computed in blocks of one packed word (``CHANNEL_BLOCK``); the accumulators are padded to
whole blocks so that schedules vectorize without remainder loops. The halfword accumulations count the set bits
of each 16-bit half of a word into a uint16 lane: a 128-bit chunk of ``WORDS_PER_CHUNK`` words fills
``HALFWORD_LANES`` lanes, as NEON's cnt + uadalp do. A lane takes at most 16 per word it counts, so a reduction
stays exact while its lanes count at most ``UINT16_MAX``: which accumulation a layer may use is decided from
that bound (``strategies.accumulation``).
"""

from __future__ import annotations

from tvm import te, tirx

CHANNEL_BLOCK = 32
WORDS_PER_CHUNK = 4
HALFWORD_LANES = 8
UINT16_MAX = 2**16 - 1
BITS_PER_HALFWORD = 16
# The quad accumulations: 4 output channels share a register of 8 u16 lanes, lane 2c + h counting the set bits
# of half h (2 words, 64 bits) of the chunk for channel c.
QUAD_CHANNELS = 4
QUAD_HALF_BITS = 64


def halfword_popcount(xv, wv, lane):
    """The set bits of halfword ``lane % 2`` of ``xv ^ wv``, as uint16: one u16 lane of NEON's cnt + uadalp."""
    # In int64 because relax makes every index int64 and the lane index takes part in the shift.
    bits = tirx.bitwise_xor(xv, wv).astype("int64")
    half = tirx.bitwise_and(tirx.shift_right(bits, lane % 2 * 16), tirx.const(UINT16_MAX, "int64"))
    return tirx.popcount(half).astype("uint16")


def sum_lanes(lanes: te.Tensor, name: str) -> te.Tensor:
    """The int32 sum of the u16 lanes (the last axis) of each output: ``out[..., o] = sum_l lanes[..., o, l]``."""
    lane = te.reduce_axis((0, int(lanes.shape[-1])), name="lane")
    return te.compute(lanes.shape[:-1], lambda *index: te.sum(lanes[(*index, lane)].astype("int32"), axis=lane),
                      name=name)
