"""AVX2 tensor intrinsic: XOR-popcount-accumulate of one input word against 8 output channels' words, into the
two u16 lanes (the word's halves) of each channel: ``popcount_acc_8x2_u32u16_avx2``.

For the packed input word ``x`` and the filter words ``w[0:8]``, ``acc[o, h] += popcount(halfword h of
(x ^ w[o]))``: one ``vpbroadcastd`` + ``vpxor``, LLVM's byte popcount (two ``vpshufb`` nibble lookups and a
``vpaddb``) and one ``vpmaddubsw`` adding the byte counts pairwise into the u16 lanes, then ``vpaddw``. Without a
vector popcount instruction (AVX2, AVX-512 before VPOPCNTDQ), LLVM's int32 popcount instead widens every byte
count to int32 (two ``vpsadbw``, two unpacks, a pack) on every word. The compute bounds the reduction so that
the lanes cannot overflow.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

POPCOUNT_ACC_AVX2 = "popcount_acc_8x2_u32u16_avx2"
CHANNELS = 8


@T.prim_func(s_tir=True)
def _desc(
    x: T.Buffer((T.int64(1),), "int32", offset_factor=1),
    w: T.Buffer((T.int64(8),), "int32", offset_factor=1),
    acc: T.Buffer((T.int64(8), T.int64(2)), "uint16", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(acc[0:8, 0:2], x[0:1], w[0:8])
        T.writes(acc[0:8, 0:2])
        for o, half in T.grid(T.int64(8), T.int64(2)):
            with T.sblock("update"):
                v_o, v_half = T.axis.remap("SS", [o, half])
                acc[v_o, v_half] = acc[v_o, v_half] + T.Cast(
                    "uint16",
                    T.popcount(
                        T.bitwise_and(
                            T.shift_right(
                                T.Cast("int64", T.bitwise_xor(x[0], w[v_o])),
                                v_half % T.int64(2) * T.int64(16),
                            ),
                            T.int64(65535),
                        )
                    ),
                )


@T.prim_func(s_tir=True)
def _impl(
    x: T.Buffer((T.int64(1),), "int32", offset_factor=1),
    w: T.Buffer((T.int64(8),), "int32", offset_factor=1),
    acc: T.Buffer((T.int64(8), T.int64(2)), "uint16", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(acc[0:8, 0:2], x[0:1], w[0:8])
        T.writes(acc[0:8, 0:2])
        bits = T.reinterpret(T.bitwise_xor(T.broadcast(x[0], 8), w.vload([0], "int32x8")), dtype="uint8x32")
        counts = T.call_llvm_pure_intrin("uint8x32", "llvm.ctpop.v32i8", bits)
        pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", counts, T.broadcast(T.int8(1), 32))
        lanes = acc.vload([0, 0], "uint16x16")
        acc.vstore([0, 0], lanes + T.reinterpret(pairs, dtype="uint16x16"))


TensorIntrin.register(POPCOUNT_ACC_AVX2, _desc, _impl, override=True)
