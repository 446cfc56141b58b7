"""``quantize(dequantize(p))`` is ``p``: the +-1 values pack back to the same bits (tail bits are 0)."""

from __future__ import annotations

from tvm import relax

from ._rewrite import Graph, attrs_of, op_name, rewrite_calls


def _rewrite(call: relax.Call, graph: Graph) -> relax.Expr | None:
    if op_name(call) != "relax.bnn.quantize" or attrs_of(call)["zero_point"] != 0:
        return None
    unpacked = graph.producer(call.args[0])
    if unpacked is None or op_name(unpacked) != "relax.bnn.dequantize" or str(unpacked.ty.dtype) != "float32":
        return None
    return unpacked.args[0]


def CancelQuantizePairs():  # noqa: N802 - TVM's pass naming
    """The pass: see the module docstring."""
    return rewrite_calls(_rewrite, "bnn_tvm.CancelQuantizePairs")
