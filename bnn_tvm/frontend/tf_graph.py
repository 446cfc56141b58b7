"""Convert a traced TensorFlow function into Relax: the Keras importer's route for code it cannot read.

Keras ``Lambda`` and ``TFOpLambda`` layers, and quantizers that are not binary (DoReFa's k-bit, say),
are Python code. They are traced with ``tf.function`` at the layer's concrete shapes and the graph's
ops are converted one by one. Ops on constants only are evaluated with numpy, so shape arithmetic and
constant folding never reach Relax. An op not in the table fails with its name and the layer's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tvm import relax

from .tflite import UnsupportedModelError

Value = "relax.Expr | np.ndarray"


def _is_const(value) -> bool:
    return isinstance(value, np.ndarray)


def _expr(value) -> relax.Expr:
    return relax.const(value) if _is_const(value) else value


def _elementwise(numpy_fn, relax_fn):
    def convert(inputs, _node):
        if all(_is_const(v) for v in inputs):
            return numpy_fn(*inputs)
        return relax_fn(*(_expr(_as_dtype_of(v, inputs)) for v in inputs))

    return convert


def _as_dtype_of(value, inputs):
    """Constants take the dtype of the tensor they combine with (TF graphs keep them float32 already)."""
    if not _is_const(value):
        return value
    tensors = [v for v in inputs if not _is_const(v)]
    return value.astype(tensors[0].ty.dtype) if tensors else value


def _attr_list(node, name) -> list[int]:
    return list(node.attr[name].list.i)


def _split(inputs, node):
    axis, value = int(inputs[0]), inputs[1]
    return relax.op.split(value, int(node.attr["num_split"].i), axis=axis)


def _split_v(inputs, node):
    value, sizes, axis = inputs[0], [int(s) for s in inputs[1]], int(inputs[2])
    return relax.op.split(value, [int(i) for i in np.cumsum(sizes)[:-1]], axis=axis)


def _pad(inputs, _node):
    value, paddings = inputs[0], inputs[1].astype(int)
    constant = float(inputs[2]) if len(inputs) > 2 else 0.0
    return relax.op.nn.pad(value, [int(p) for p in paddings.reshape(-1)], pad_value=constant)


def _concat(inputs, _node):
    *values, axis = inputs
    if all(_is_const(v) for v in values):
        return np.concatenate(values, axis=int(axis))
    return relax.op.concat([_expr(v) for v in values], axis=int(axis))


def _reshape(inputs, _node):
    value, shape = inputs
    if _is_const(value):
        return value.reshape(shape)
    return relax.op.reshape(value, [int(s) for s in shape])


def _strided_slice(inputs, node):
    value, begin, end, strides = inputs
    masks = {k: int(node.attr[k].i) for k in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask",
                                             "shrink_axis_mask")}
    if masks["ellipsis_mask"] or masks["new_axis_mask"]:
        raise NotImplementedError("StridedSlice with ellipsis or new axes")
    shape = value.shape if _is_const(value) else [int(d) for d in value.ty.shape]
    starts, stops = [], []
    for axis, (b, e, s) in enumerate(zip(begin, end, strides, strict=True)):
        if masks["shrink_axis_mask"] >> axis & 1:
            starts.append(int(b) % shape[axis])
            stops.append(int(b) % shape[axis] + 1)
            continue
        starts.append(0 if masks["begin_mask"] >> axis & 1 else int(b))
        stops.append(shape[axis] if masks["end_mask"] >> axis & 1 else int(e))
    axes = list(range(len(starts)))
    out = relax.op.strided_slice(_expr(value), axes, starts, stops, [int(s) for s in strides])
    shrink = [a for a in axes if masks["shrink_axis_mask"] >> a & 1]
    return relax.op.squeeze(out, shrink) if shrink else out


def _mean(inputs, node):
    value, axes = inputs
    return relax.op.mean(value, [int(a) for a in np.atleast_1d(axes)], keepdims=bool(node.attr["keep_dims"].b))


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


def _identity(inputs, _node):
    return inputs[0] if len(inputs) == 1 else list(inputs)


OPS: dict[str, Callable] = {
    "Identity": _identity,
    "IdentityN": _identity,
    "StopGradient": _identity,
    "AddV2": _elementwise(np.add, relax.op.add),
    "Add": _elementwise(np.add, relax.op.add),
    "Sub": _elementwise(np.subtract, relax.op.subtract),
    "Mul": _elementwise(np.multiply, relax.op.multiply),
    "RealDiv": _elementwise(np.divide, relax.op.divide),
    "Maximum": _elementwise(np.maximum, relax.op.maximum),
    "Minimum": _elementwise(np.minimum, relax.op.minimum),
    "Neg": _elementwise(np.negative, relax.op.negative),
    "Abs": _elementwise(np.abs, relax.op.abs),
    "Sign": _elementwise(np.sign, relax.op.sign),
    "Floor": _elementwise(np.floor, relax.op.floor),
    "Round": _elementwise(np.round, _round_half_to_even),  # numpy also rounds half to even
    "Sqrt": _elementwise(np.sqrt, relax.op.sqrt),
    "Rsqrt": _elementwise(lambda x: 1 / np.sqrt(x), relax.op.rsqrt),
    "Square": _elementwise(np.square, relax.op.square),
    "Relu": _elementwise(lambda x: np.maximum(x, 0), relax.op.nn.relu),
    "Relu6": _elementwise(lambda x: np.clip(x, 0, 6), lambda x: relax.op.clip(x, 0, 6)),
    "Sigmoid": _elementwise(lambda x: 1 / (1 + np.exp(-x)), relax.op.sigmoid),
    "Tanh": _elementwise(np.tanh, relax.op.tanh),
    "Pad": _pad,
    "PadV2": _pad,
    "Split": _split,
    "SplitV": _split_v,
    "ConcatV2": _concat,
    "Reshape": _reshape,
    "StridedSlice": _strided_slice,
    "Mean": _mean,
}


def convert_traced(bb: relax.BlockBuilder, function: Callable, inputs: Sequence[relax.Expr],
                   where: str) -> list[relax.Expr]:
    """Trace ``function`` on tensors shaped like ``inputs``; emit its ops into ``bb``; return its outputs.

    ``where`` names the layer for error messages.
    """
    import tensorflow as tf

    specs = [tf.TensorSpec([int(d) for d in x.ty.shape], x.ty.dtype) for x in inputs]
    graph = tf.function(function).get_concrete_function(*specs).graph
    values: dict[str, object] = {}
    placeholders = iter(inputs)
    for op in graph.get_operations():
        node = op.node_def
        if op.type == "Placeholder":
            values[op.name] = next(placeholders)
            continue
        if op.type == "Const":
            values[op.name] = tf.make_ndarray(node.attr["value"].tensor)
            continue
        if op.type == "NoOp":
            continue
        converter = OPS.get(op.type)
        if converter is None:
            raise UnsupportedModelError(
                f"{where}: TensorFlow op {op.type} ({op.name}) is not supported by the Keras importer; "
                f"supported: {', '.join(sorted(OPS))}")
        args = [_output(values, t.op.name, t.value_index) for t in op.inputs]
        try:
            values[op.name] = _emit(bb, converter(args, node))
        except NotImplementedError as err:
            raise UnsupportedModelError(f"{where}: TensorFlow op {op.type} ({op.name}): {err}") from err
    return [_expr(_output(values, t.op.name, t.value_index)) for t in graph.outputs]


def _emit(bb: relax.BlockBuilder, value):
    if _is_const(value) or isinstance(value, list):
        return value
    value = bb.emit(value)
    if isinstance(value.ty, relax.TupleType):
        return [bb.emit(relax.TupleGetItem(value, i)) for i in range(len(value.ty.fields))]
    return value


def _output(values, name, index):
    value = values[name]
    return value[index] if isinstance(value, list) else value
