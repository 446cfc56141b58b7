"""The values a TensorFlow graph is converted into, and the elementwise ops, which take either kind.

A value is a numpy array (a constant: ops on constants only are evaluated with numpy, so shape arithmetic
and constant folding never reach Relax) or a Relax expression (computed from the model's inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax

Value = "relax.Expr | np.ndarray"

def is_const(value) -> bool:
    return isinstance(value, np.ndarray)

class NotConstantError(NotImplementedError):
    """Input ``index`` of an op (its ``what``: a shape, the axes) must be known at compile time, and is computed
    from the model's input data. ``_convert_node`` names the op and the tensor the input comes from."""

    def __init__(self, index: int, what: str):
        super().__init__(index, what)
        self.index, self.what = index, what

def constant_input(inputs, index: int, what: str) -> np.ndarray:
    """``inputs[index]``, which must be a constant (it says ``what`` it is when it is not)."""
    if not is_const(inputs[index]):
        raise NotConstantError(index, what)
    return inputs[index]

def static_shape(value) -> list[int]:
    """The shape of a constant or of a Relax tensor (static: input shapes are fixed before conversion)."""
    return list(value.shape) if is_const(value) else [int(d) for d in value.ty.shape]

def as_expr(value) -> relax.Expr:
    return relax.const(value) if is_const(value) else value

def elementwise(numpy_fn, relax_fn):
    def convert(inputs, _node):
        if all(is_const(v) for v in inputs):
            return numpy_fn(*inputs)
        return relax_fn(*(as_expr(as_dtype_of(v, inputs)) for v in inputs))

    return convert

def as_dtype_of(value, inputs):
    """Constants take the dtype of the tensor they combine with (TF graphs keep them float32 already)."""
    if not is_const(value):
        return value
    tensors = [v for v in inputs if not is_const(v)]
    return value.astype(tensors[0].ty.dtype) if tensors else value

def attr_list(node, name) -> list[int]:
    return list(node.attr[name].list.i)

def axis_input(inputs, index: int, rank: int) -> int:
    """Constant input ``index``, an axis of a rank-``rank`` tensor, made non-negative."""
    axis = int(constant_input(inputs, index, "axis"))
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank

def _floor_div(x, y):
    """TF's FloorDiv: an integer floor division, or the floor of a float division."""
    if x.ty.dtype.startswith("float"):
        return relax.op.floor(relax.op.divide(x, y))
    return relax.op.floor_divide(x, y)

def _round_half_to_even(x):
    # tf.round rounds half to even; Relax's round is half away from zero, so ties are made explicit.
    floor = relax.op.floor(x)
    diff = relax.op.subtract(x, floor)
    half = relax.const(0.5, "float32")
    is_even = relax.op.equal(relax.op.floor_mod(floor, relax.const(2.0, "float32")), relax.const(0.0, "float32"))
    up = relax.op.add(floor, relax.const(1.0, "float32"))
    return relax.op.where(relax.op.less(diff, half), floor,
                          relax.op.where(relax.op.greater(diff, half), up,
                                         relax.op.where(is_even, floor, up)))


ELEMENTWISE_OPS: dict[str, Callable] = {
    "AddV2": elementwise(np.add, relax.op.add),
    "Add": elementwise(np.add, relax.op.add),
    "Sub": elementwise(np.subtract, relax.op.subtract),
    "Mul": elementwise(np.multiply, relax.op.multiply),
    "RealDiv": elementwise(np.divide, relax.op.divide),
    "FloorDiv": elementwise(np.floor_divide, _floor_div),
    "FloorMod": elementwise(np.mod, relax.op.floor_mod),  # both take the divisor's sign, as TF does
    "Maximum": elementwise(np.maximum, relax.op.maximum),
    "Minimum": elementwise(np.minimum, relax.op.minimum),
    "Neg": elementwise(np.negative, relax.op.negative),
    "Abs": elementwise(np.abs, relax.op.abs),
    "Sign": elementwise(np.sign, relax.op.sign),
    "Floor": elementwise(np.floor, relax.op.floor),
    "Round": elementwise(np.round, _round_half_to_even),  # numpy also rounds half to even
    "Sqrt": elementwise(np.sqrt, relax.op.sqrt),
    "Rsqrt": elementwise(lambda x: 1 / np.sqrt(x), relax.op.rsqrt),
    "Square": elementwise(np.square, relax.op.square),
    "Relu": elementwise(lambda x: np.maximum(x, 0), relax.op.nn.relu),
    "Relu6": elementwise(lambda x: np.clip(x, 0, 6), lambda x: relax.op.clip(x, 0, 6)),
    "Sigmoid": elementwise(lambda x: 1 / (1 + np.exp(-x)), relax.op.sigmoid),
    "Tanh": elementwise(np.tanh, relax.op.tanh),
    "Less": elementwise(np.less, relax.op.less),
    "LessEqual": elementwise(np.less_equal, relax.op.less_equal),
    "Greater": elementwise(np.greater, relax.op.greater),
    "GreaterEqual": elementwise(np.greater_equal, relax.op.greater_equal),
    "Equal": elementwise(np.equal, relax.op.equal),
    "LeakyRelu": lambda inputs, node: elementwise(
        lambda x: np.where(x < 0, x * np.float32(node.attr["alpha"].f), x).astype(x.dtype),
        lambda x: relax.op.nn.leakyrelu(x, float(node.attr["alpha"].f)))(inputs, node),
}
