"""Fold a per-channel constant scale into the float convolution or matmul before it.

``conv2d(x, W) * c`` is ``conv2d(x, W * c)`` with ``c`` scaling W's output-channel axis (the same
for a matmul's output columns): a batch-norm after a float layer keeps only its shift, as the
TFLite converter leaves it, and the kernel's epilogue does one add instead of a multiply and an add.
Float results change by rounding only (each product is scaled before it is summed).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ._rewrite import Graph, constant, op_name, per_channel, rewrite_calls

# Where the output channels sit in each kernel layout the frontends emit.
_OUTPUT_AXIS = {"HWIO": 3, "HWOI": 2, "OHWI": 0, "OIHW": 0}


def _scaled(call: relax.Call, graph: Graph) -> relax.Call | None:
    if op_name(call) != "relax.multiply":
        return None
    for layer_expr, other in (call.args, call.args[::-1]):
        layer = graph.sole_producer(layer_expr, "relax.nn.conv2d", "relax.matmul")
        if layer is None or list(call.ty.shape) != list(layer.ty.shape) or str(layer.ty.dtype) != "float32":
            continue
        weight = constant(layer.args[1])
        if weight is None or weight.dtype != np.float32:
            continue
        if op_name(layer) == "relax.matmul":
            axis = weight.ndim - 1
        else:
            attrs = layer.attrs
            if attrs.out_layout != "NHWC" or attrs.kernel_layout not in _OUTPUT_AXIS:
                continue
            axis = _OUTPUT_AXIS[attrs.kernel_layout]
        scale = per_channel(constant(other), weight.shape[axis])
        if scale is None:
            continue
        shape = [1] * weight.ndim
        shape[axis] = -1
        new_weight = relax.const((weight * scale.reshape(shape)).astype(np.float32))
        return relax.Call(layer.op, [layer.args[0], new_weight], layer.attrs)
    return None


def FoldScaleIntoWeights():  # noqa: N802 - TVM's pass naming
    """The pass: see the module docstring."""
    return rewrite_calls(_scaled, "bnn_tvm.FoldScaleIntoWeights")
