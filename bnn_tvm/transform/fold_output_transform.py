"""Fold what follows a binary conv/dense (bias, batch-norm, activation) into its output transform.

``bconv2d`` / ``bdense`` with float output compute ``act(dot) * m + b``. A constant per-channel (or
scalar) multiply, divide, add or subtract of that output, with nothing else reading it, becomes new
``m`` and ``b``; a ReLU / ReLU6 / clip(-1, 1) right after the op becomes its fused activation where
that is the same function (``b = 0`` and ``m > 0`` for ReLU, ``m = 1`` for the clipped ones) and the
op accepts fused activations (LCE's formula does not with zero-padding).

Float results change by rounding only: with the ``"dot"`` output formula at the scale of the output,
with LCE's at the scale of ``K * |m|`` (see ``relay_ops/_output_transform.py``).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ._rewrite import BINARY_MAC_OPS, Graph, attrs_of, constant, op_name, per_channel, remake, rewrite_calls

_ARITHMETIC = ("relax.multiply", "relax.divide", "relax.add", "relax.subtract")


def _float_mac(expr: relax.Expr, graph: Graph) -> relax.Call | None:
    mac = graph.sole_producer(expr, *BINARY_MAC_OPS)
    if mac is None or attrs_of(mac)["out_dtype"] != "float32":
        return None
    return mac


def _fold_arithmetic(call: relax.Call, graph: Graph) -> relax.Call | None:
    name = op_name(call)
    lhs, rhs = call.args
    mac, other = _float_mac(lhs, graph), rhs
    if mac is None and name in ("relax.multiply", "relax.add"):
        mac, other = _float_mac(rhs, graph), lhs
    if mac is None:
        return None
    multiplier, bias = constant(mac.args[2]), constant(mac.args[3])
    value = per_channel(constant(other), multiplier.shape[0] if multiplier is not None else 0)
    if value is None or multiplier is None or bias is None:
        return None
    if list(call.ty.shape) != list(mac.ty.shape):  # the constant must not broadcast the output
        return None
    if name == "relax.multiply":
        multiplier, bias = multiplier * value, bias * value
    elif name == "relax.divide":
        multiplier, bias = multiplier / value, bias / value
    elif name == "relax.add":
        bias = bias + value
    else:
        bias = bias - value
    return remake(mac, [mac.args[0], mac.args[1], relax.const(multiplier.astype(np.float32)),
                        relax.const(bias.astype(np.float32))])


def _clip_bounds(call: relax.Call) -> tuple[float, float] | None:
    if op_name(call) == "relax.nn.relu":
        return 0.0, float("inf")
    if op_name(call) == "relax.clip":
        low, high = (_number(v) for v in call.args[1:3])
        return low, high
    return None


def _number(value) -> float:
    while hasattr(value, "value"):  # a PrimValue around an IntImm / FloatImm
        value = value.value
    return float(value)


_FUSED_ACTIVATIONS = {(0.0, float("inf")): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}


def _fold_activation(call: relax.Call, graph: Graph) -> relax.Call | None:
    bounds = _clip_bounds(call)
    activation = _FUSED_ACTIVATIONS.get(bounds)
    mac = _float_mac(call.args[0], graph) if activation else None
    if mac is None:
        return None
    attrs = attrs_of(mac)
    lce_zero_padding = attrs.get("padding") == "SAME" and attrs.get("pad_value") == 0 and attrs["output_formula"] == "lce"
    if attrs["activation"] != "NONE" or lce_zero_padding:
        return None
    multiplier, bias = constant(mac.args[2]), constant(mac.args[3])
    if multiplier is None or bias is None or np.any(bias != 0):
        return None
    # act(dot * m) = act(dot) * m needs m > 0 for ReLU and m = 1 for the clipped activations.
    if not (np.all(multiplier > 0) if activation == "RELU" else np.all(multiplier == 1)):
        return None
    return remake(mac, list(mac.args), activation=activation)


def _fold(call: relax.Call, graph: Graph) -> relax.Call | None:
    if op_name(call) in _ARITHMETIC:
        return _fold_arithmetic(call, graph)
    return _fold_activation(call, graph)


def FoldOutputTransform():  # noqa: N802 - TVM's pass naming
    """The pass: see the module docstring."""
    return rewrite_calls(_fold, "bnn_tvm.FoldOutputTransform")
