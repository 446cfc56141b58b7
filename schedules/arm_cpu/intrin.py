"""NEON tensor intrinsics of the binary convolutions and dense layers.

``popcount_acc_1x8_u32u16_neon`` computes, for the 4 packed words ``x`` and
``w`` of one chunk, ``acc[l] += popcount(halfword l of (x ^ w))`` for the 8
halfwords ``l``: exactly ``eor`` + ``cnt`` (bytes) + ``uadalp`` (pairwise add
of byte counts into the u16 lanes); on armv7 ``veor`` + ``vcnt`` + ``vpadal``.
Its lanes are summed by ``lane_sum_1x8_u16i32_neon`` (or 4 of them,
``lane_sum_1x4_u16i32_neon``: one ``uaddlv``).

``popcount_acc_4x8_u32u16_neon`` (and its one-word-tap form
``popcount_acc_4x8_u32u16_broadcast_neon``) counts one input chunk against 4
output channels' chunks into one register, lane ``2c + h`` holding channel
``c``'s half ``h``; ``quad_sum_1x8_u16i32_neon`` and
``quad_split_2x4_u16i32_neon`` turn such a register into int32 outputs.

Lanes are summed into int32 after the reduction, and the computes bound the
reduction so that they cannot overflow.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

POPCOUNT_ACC_NEON = "popcount_acc_1x8_u32u16_neon"
POPCOUNT_ACC_NEON32 = "popcount_acc_1x8_u32u16_neon32"


def _halfword_desc(broadcast: bool):
    """``acc[l] += popcount(halfword l % 2 of (x ^ w)[l // 2])`` over 8 lanes: the chunk's own 4 words (``x`` of 4
    words), or one input word against 4 channels' words (``broadcast``: ``x`` of 1 word)."""

    @T.prim_func(s_tir=True)
    def desc(
        x: T.Buffer((T.int64(1 if broadcast else 4),), "int32", offset_factor=1),
        w: T.Buffer((T.int64(4),), "int32", offset_factor=1),
        acc: T.Buffer((T.int64(8),), "uint16", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(acc[0:8], x[0:(1 if broadcast else 4)], w[0:4])
            T.writes(acc[0:8])
            for lane in T.serial(T.int64(8)):
                with T.sblock("update"):
                    v_lane = T.axis.remap("S", [lane])
                    acc[v_lane] = acc[v_lane] + T.Cast(
                        "uint16",
                        T.popcount(
                            T.bitwise_and(
                                T.shift_right(
                                    T.Cast("int64", T.bitwise_xor(x[0 if broadcast else v_lane // T.int64(2)],
                                                                  w[v_lane // T.int64(2)])),
                                    v_lane % T.int64(2) * T.int64(16),
                                ),
                                T.int64(65535),
                            )
                        ),
                    )

    return desc


_desc = _halfword_desc(broadcast=False)


def _impl_with(pairwise_add_long: str, accumulates: bool):
    """The implementation with the architecture's pairwise widening add: aarch64's ``uaddlp``, whose sum
    with the accumulator LLVM selects as one ``uadalp``, or armv7's ``vpadal`` (which takes the accumulator)."""

    @T.prim_func(s_tir=True)
    def impl(
        x: T.Buffer((T.int64(4),), "int32", offset_factor=1),
        w: T.Buffer((T.int64(4),), "int32", offset_factor=1),
        acc: T.Buffer((T.int64(8),), "uint16", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(acc[0:8], x[0:4], w[0:4])
            T.writes(acc[0:8])
            bits = T.reinterpret(T.bitwise_xor(x.vload([0], "int32x4"), w.vload([0], "int32x4")), dtype="uint8x16")
            counts = T.call_llvm_pure_intrin("uint8x16", "llvm.ctpop.v16i8", bits)
            lanes = acc[T.ramp(T.int64(0), 1, 8)]
            if accumulates:
                acc[T.ramp(T.int64(0), 1, 8)] = T.call_llvm_pure_intrin("uint16x8", pairwise_add_long, lanes, counts)
            else:
                acc[T.ramp(T.int64(0), 1, 8)] = lanes + T.call_llvm_pure_intrin("uint16x8", pairwise_add_long, counts)

    return impl


def popcount_acc_intrin(target) -> str:
    """The intrinsic's name for ``target`` (aarch64 or 32-bit ARM)."""
    return POPCOUNT_ACC_NEON32 if "armv7" in str(target.attrs.get("mtriple", "")) else POPCOUNT_ACC_NEON


TensorIntrin.register(POPCOUNT_ACC_NEON, _desc, _impl_with("llvm.aarch64.neon.uaddlp.v8i16.v16i8", False), override=True)
TensorIntrin.register(POPCOUNT_ACC_NEON32, _desc, _impl_with("llvm.arm.neon.vpadalu.v8i16.v16i8", True), override=True)


def _lane_sum(lanes_count: int):
    """Description and implementation of the sum of ``lanes_count`` u16 lanes into an int32 (one ``uaddlv``)."""

    @T.prim_func(s_tir=True)
    def desc(
        lanes: T.Buffer((T.int64(lanes_count),), "uint16", offset_factor=1, scope="local"),
        out: T.Buffer((T.int64(1),), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(out[0], lanes[0:lanes_count])
            T.writes(out[0])
            for lane in T.serial(T.int64(lanes_count)):
                with T.sblock("update"):
                    v_lane = T.axis.remap("R", [lane])
                    out[0] = out[0] + T.Cast("int32", lanes[v_lane])

    @T.prim_func(s_tir=True)
    def impl(
        lanes: T.Buffer((T.int64(lanes_count),), "uint16", offset_factor=1, scope="local"),
        out: T.Buffer((T.int64(1),), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(out[0], lanes[0:lanes_count])
            T.writes(out[0])
            out[0] = out[0] + T.call_llvm_pure_intrin(
                "int32", f"llvm.aarch64.neon.uaddlv.i32.v{lanes_count}i16", lanes[T.ramp(T.int64(0), 1, lanes_count)])

    return desc, impl


# The sum of a channel's 8 u16 lanes (or of a pixel's 4, where 2 pixels share a chunk) in one uaddlv: as a
# loop, LLVM transposes the tile through the stack.
LANE_SUMS_NEON = {lanes: f"lane_sum_1x{lanes}_u16i32_neon" for lanes in (8, 4)}
for _lanes, _name in LANE_SUMS_NEON.items():
    TensorIntrin.register(_name, *_lane_sum(_lanes), override=True)


def lane_sum_intrin(target, lanes: int = 8) -> str | None:
    """The intrinsic summing ``lanes`` u16 lanes for ``target``: aarch64 only (armv7 keeps the loop), 8 or 4 lanes."""
    return LANE_SUMS_NEON.get(lanes) if "aarch64" in str(target.attrs.get("mtriple", "")) else None


POPCOUNT_ACC_QUAD_NEON = "popcount_acc_4x8_u32u16_neon"


@T.prim_func(s_tir=True)
def _popcount_acc_quad_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    x = T.match_buffer(a, (T.int64(4),), "int32", offset_factor=1)
    w = T.match_buffer(b, (T.int64(4), T.int64(4)), "int32", offset_factor=1, strides=[T.int64(), 1])
    acc = T.match_buffer(c, (T.int64(8),), "uint16", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(acc[0:8], x[0:4], w[0:4, 0:4])
        T.writes(acc[0:8])
        for lane, u in T.grid(T.int64(8), T.int64(2)):
            with T.sblock("update"):
                v_lane, v_u = T.axis.remap("SR", [lane, u])
                acc[v_lane] = acc[v_lane] + T.Cast("uint16", T.popcount(T.bitwise_xor(
                    x[v_lane % T.int64(2) * T.int64(2) + v_u],
                    w[v_lane // T.int64(2), v_lane % T.int64(2) * T.int64(2) + v_u])))


@T.prim_func(s_tir=True)
def _popcount_acc_quad_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    x = T.match_buffer(a, (T.int64(4),), "int32", offset_factor=1)
    w = T.match_buffer(b, (T.int64(4), T.int64(4)), "int32", offset_factor=1, strides=[T.int64(), 1])
    acc = T.match_buffer(c, (T.int64(8),), "uint16", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(acc[0:8], x[0:4], w[0:4, 0:4])
        T.writes(acc[0:8])
        chunk = x.vload([0], "int32x4")
        counts_0 = T.call_llvm_pure_intrin("uint8x16", "llvm.ctpop.v16i8", T.reinterpret(
            T.bitwise_xor(chunk, w.vload([0, 0], "int32x4")), dtype="uint8x16"))
        counts_1 = T.call_llvm_pure_intrin("uint8x16", "llvm.ctpop.v16i8", T.reinterpret(
            T.bitwise_xor(chunk, w.vload([1, 0], "int32x4")), dtype="uint8x16"))
        counts_2 = T.call_llvm_pure_intrin("uint8x16", "llvm.ctpop.v16i8", T.reinterpret(
            T.bitwise_xor(chunk, w.vload([2, 0], "int32x4")), dtype="uint8x16"))
        counts_3 = T.call_llvm_pure_intrin("uint8x16", "llvm.ctpop.v16i8", T.reinterpret(
            T.bitwise_xor(chunk, w.vload([3, 0], "int32x4")), dtype="uint8x16"))
        # Byte j of the pairwise sums: channels 0-1's, then 2-3's; of their pairwise sums: 4 bytes per channel.
        pairs_01 = T.call_llvm_pure_intrin("uint8x16", "llvm.aarch64.neon.addp.v16i8", counts_0, counts_1)
        pairs_23 = T.call_llvm_pure_intrin("uint8x16", "llvm.aarch64.neon.addp.v16i8", counts_2, counts_3)
        quarters = T.call_llvm_pure_intrin("uint8x16", "llvm.aarch64.neon.addp.v16i8", pairs_01, pairs_23)
        acc[T.ramp(T.int64(0), 1, 8)] = acc[T.ramp(T.int64(0), 1, 8)] + T.call_llvm_pure_intrin(
            "uint16x8", "llvm.aarch64.neon.uaddlp.v8i16.v16i8", quarters)


# 4 output channels' chunk against one input chunk into one register: 4 eor + 4 cnt + 3 addp + 1 uadalp, LCE's
# BinaryKernelNeon8x4 combination (the same 3 NEON instructions per 128 binary MACs as one uadalp per channel),
# with a quarter of the accumulators and of the lane sums.
TensorIntrin.register(POPCOUNT_ACC_QUAD_NEON, _popcount_acc_quad_desc, _popcount_acc_quad_impl, override=True)

QUAD_SUM_NEON = "quad_sum_1x8_u16i32_neon"


@T.prim_func(s_tir=True)
def _quad_sum_desc(
    lanes: T.Buffer((T.int64(8),), "uint16", offset_factor=1, scope="local"),
    out: T.Buffer((T.int64(4),), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(out[0:4], lanes[0:8])
        T.writes(out[0:4])
        for channel, half in T.grid(T.int64(4), T.int64(2)):
            with T.sblock("update"):
                v_channel, v_half = T.axis.remap("SR", [channel, half])
                out[v_channel] = out[v_channel] + T.Cast("int32", lanes[v_channel * T.int64(2) + v_half])


@T.prim_func(s_tir=True)
def _quad_sum_impl(
    lanes: T.Buffer((T.int64(8),), "uint16", offset_factor=1, scope="local"),
    out: T.Buffer((T.int64(4),), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(out[0:4], lanes[0:8])
        T.writes(out[0:4])
        out[T.ramp(T.int64(0), 1, 4)] = out[T.ramp(T.int64(0), 1, 4)] + T.call_llvm_pure_intrin(
            "int32x4", "llvm.aarch64.neon.uaddlp.v4i32.v8i16", lanes[T.ramp(T.int64(0), 1, 8)])


QUAD_SPLIT_NEON = "quad_split_2x4_u16i32_neon"


@T.prim_func(s_tir=True)
def _quad_split_desc(a: T.handle, b: T.handle) -> None:
    lanes = T.match_buffer(a, (T.int64(8),), "uint16", offset_factor=1, scope="local")
    out = T.match_buffer(b, (T.int64(2), T.int64(4)), "int32", offset_factor=1, strides=[T.int64(), 1])
    with T.sblock("root"):
        T.reads(lanes[0:8])
        T.writes(out[0:2, 0:4])
        for pixel, channel in T.grid(T.int64(2), T.int64(4)):
            with T.sblock("update"):
                v_pixel, v_channel = T.axis.remap("SS", [pixel, channel])
                out[v_pixel, v_channel] = T.Cast("int32", lanes[v_channel * T.int64(2) + v_pixel])


@T.prim_func(s_tir=True)
def _quad_split_impl(a: T.handle, b: T.handle) -> None:
    lanes = T.match_buffer(a, (T.int64(8),), "uint16", offset_factor=1, scope="local")
    out = T.match_buffer(b, (T.int64(2), T.int64(4)), "int32", offset_factor=1, strides=[T.int64(), 1])
    with T.sblock("root"):
        T.reads(lanes[0:8])
        T.writes(out[0:2, 0:4])
        counts = lanes[T.ramp(T.int64(0), 1, 8)]
        out[0, T.ramp(T.int64(0), 1, 4)] = T.Cast("int32x4", T.Shuffle([counts], [0, 2, 4, 6]))
        out[1, T.ramp(T.int64(0), 1, 4)] = T.Cast("int32x4", T.Shuffle([counts], [1, 3, 5, 7]))


# A quad register's lanes as int32 outputs: one pixel's 4 channels, each the sum of its two halves (uaddlp);
# or, where 2 pixels share the chunk, the halves are the pixels: unzipped into 2 pixels x 4 channels.
TensorIntrin.register(QUAD_SUM_NEON, _quad_sum_desc, _quad_sum_impl, override=True)
TensorIntrin.register(QUAD_SPLIT_NEON, _quad_split_desc, _quad_split_impl, override=True)


POPCOUNT_ACC_QUAD_WORD_NEON = "popcount_acc_4x8_u32u16_broadcast_neon"


@T.prim_func(s_tir=True)
def _popcount_acc_quad_word_impl(
    x: T.Buffer((T.int64(1),), "int32", offset_factor=1),
    w: T.Buffer((T.int64(4),), "int32", offset_factor=1),
    acc: T.Buffer((T.int64(8),), "uint16", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(acc[0:8], x[0:1], w[0:4])
        T.writes(acc[0:8])
        bits = T.reinterpret(T.bitwise_xor(T.broadcast(x[0], 4), w.vload([0], "int32x4")), dtype="uint8x16")
        counts = T.call_llvm_pure_intrin("uint8x16", "llvm.ctpop.v16i8", bits)
        acc[T.ramp(T.int64(0), 1, 8)] = acc[T.ramp(T.int64(0), 1, 8)] + T.call_llvm_pure_intrin(
            "uint16x8", "llvm.aarch64.neon.uaddlp.v8i16.v16i8", counts)


# One input word (ld1r) against 4 output channels' words of a one-word tap: eor + cnt + uadalp into the lanes
# of a quad register (lane 2c + h: halfword h of channel c), summed by quad_sum like quad_halves'.
TensorIntrin.register(POPCOUNT_ACC_QUAD_WORD_NEON, _halfword_desc(broadcast=True), _popcount_acc_quad_word_impl,
                      override=True)
