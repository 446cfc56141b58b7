"""Convert TensorFlow graphs into Relax: traced Python code, and a SavedModel's saved functions.

Keras ``Lambda`` and ``TFOpLambda`` layers, and quantizers that are not binary (DoReFa's k-bit, say),
are Python code. They are traced with ``tf.function`` at the layer's concrete shapes and the graph's
ops are converted one by one (``convert_traced``). A SavedModel's serving function is read from its
FunctionDef as data, the functions it calls inlined (``convert_function``, used by :mod:`.saved_model`).
Only the ops the outputs depend on are converted. Ops on constants only are evaluated with numpy, so
shape arithmetic, constant folding and a quantizer applied to a saved kernel never reach Relax. An op
not in the table fails with its name and type and the layer's or function's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tvm import relax

from ..relay_ops._common import same_padding
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


def _window(node, name, rank=4) -> tuple[int, int]:
    values = _attr_list(node, name)
    if node.attr["data_format"].s not in (b"", b"NHWC") or len(values) != rank or values[0] != 1 or values[-1] != 1:
        raise NotImplementedError(f"{name} {values} with data format {node.attr['data_format'].s.decode()}; "
                                  "only NHWC, batch and channel steps of 1")
    return values[1], values[2]


def _padding(node, data, window, strides, dilations) -> list[int]:
    """[top, left, bottom, right] of the op's SAME, VALID or EXPLICIT padding on NHWC ``data``."""
    mode = node.attr["padding"].s.decode()
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode == "EXPLICIT":
        pads = _attr_list(node, "explicit_paddings")
        if any(pads[:2] + pads[6:]):
            raise NotImplementedError(f"explicit padding {pads} of the batch or channel axis")
        return [pads[2], pads[4], pads[3], pads[5]]
    if mode != "SAME":
        raise NotImplementedError(f"padding {mode}")
    (_, top, bottom), (_, left, right) = (
        same_padding(int(size), k, s, d)
        for size, k, s, d in zip(data.ty.shape.values[1:3], window, strides, dilations, strict=True))
    return [top, left, bottom, right]


def _constant_filter(value, what: str) -> np.ndarray:
    if not _is_const(value):
        raise NotImplementedError(f"its {what} is computed from the inputs; only constant {what}s are supported")
    return value.astype(np.float32)


def _conv2d(inputs, node):
    data, weights = inputs[0], _constant_filter(inputs[1], "filter")
    strides, dilations = _window(node, "strides"), _window(node, "dilations")
    padding = _padding(node, data, weights.shape[:2], strides, dilations)
    groups = int(data.ty.shape[-1]) // weights.shape[2]
    # HWIO as TF stores it, which RecognizeBinaryLayers reads as TFLite's filters.
    return relax.op.nn.conv2d(data, relax.const(weights), strides=strides, padding=padding, dilation=dilations,
                              groups=groups, data_layout="NHWC", kernel_layout="HWIO")


def _depthwise_conv2d(inputs, node):
    data, weights = inputs[0], _constant_filter(inputs[1], "filter")
    strides, dilations = _window(node, "strides"), _window(node, "dilations")
    padding = _padding(node, data, weights.shape[:2], strides, dilations)
    height, width, channels, multiplier = weights.shape
    return relax.op.nn.conv2d(data, relax.const(weights.reshape(height, width, channels * multiplier, 1)),
                              strides=strides, padding=padding, dilation=dilations, groups=channels,
                              data_layout="NHWC", kernel_layout="HWOI")


def _matmul(inputs, node):
    a, b = inputs
    if node.attr["transpose_a"].b:
        a = relax.op.permute_dims(_expr(a), [1, 0]) if not _is_const(a) else a.T
    if node.attr["transpose_b"].b:
        b = relax.op.permute_dims(_expr(b), [1, 0]) if not _is_const(b) else b.T
    if _is_const(a) and _is_const(b):
        return a @ b
    # A constant right-hand side stays a constant: RecognizeBinaryLayers reads dense weights from it.
    return relax.op.matmul(_expr(a), _expr(b))


def _batch_norm(inputs, node):
    x, gamma, beta, mean, variance = inputs[:5]
    if node.attr["is_training"].b:
        raise NotImplementedError("batch-norm in training mode (the signature was traced with training=True)")
    if node.attr["data_format"].s not in (b"", b"NHWC"):
        raise NotImplementedError(f"data format {node.attr['data_format'].s.decode()}; only NHWC")
    if not all(_is_const(v) for v in (gamma, beta, mean, variance)):
        raise NotImplementedError("statistics computed from the inputs; only constant ones are supported")
    # As keras.py and tf.nn.batch_normalization compute it: x * (gamma * rsqrt(var + eps)) + (beta - mean * that).
    inv = (gamma / np.sqrt(variance + np.float32(node.attr["epsilon"].f))).astype(np.float32)
    shift = (beta - mean * inv).astype(np.float32)
    y = relax.op.add(relax.op.multiply(x, relax.const(inv)), relax.const(shift))
    return [y] + [None] * 5  # the saved statistics feed only training


def _pool(kind):
    def convert(inputs, node):
        data = inputs[0]
        window, strides = _window(node, "ksize"), _window(node, "strides")
        pads = _padding(node, data, window, strides, (1, 1))
        if kind == "max":
            return relax.op.nn.max_pool2d(data, window, strides, pads, layout="NHWC")
        # TF averages over the window's inside only.
        return relax.op.nn.avg_pool2d(data, window, strides, pads, layout="NHWC", count_include_pad=False)

    return convert


def _reduce(numpy_fn, relax_fn):
    def convert(inputs, node):
        value, axes = inputs
        keepdims = bool(node.attr["keep_dims"].b)
        axes = [int(a) for a in np.atleast_1d(axes)]
        if _is_const(value):
            return numpy_fn(value, axis=tuple(axes), keepdims=keepdims)
        return relax_fn(value, axes, keepdims=keepdims)

    return convert


def _softmax(inputs, _node):
    return relax.op.nn.softmax(inputs[0], axis=-1)


def _squeeze(inputs, node):
    axes = _attr_list(node, "squeeze_dims") or None
    if _is_const(inputs[0]):
        return np.squeeze(inputs[0], axis=None if axes is None else tuple(axes))
    return relax.op.squeeze(inputs[0], axes)


def _expand_dims(inputs, _node):
    value, axis = inputs[0], int(inputs[1])
    return np.expand_dims(value, axis) if _is_const(value) else relax.op.expand_dims(value, axis)


def _transpose(inputs, _node):
    value, perm = inputs[0], [int(p) for p in inputs[1]]
    return value.transpose(perm) if _is_const(value) else relax.op.permute_dims(value, perm)


def _shape(inputs, node):
    value = inputs[0]
    shape = value.shape if _is_const(value) else [int(d) for d in value.ty.shape]
    return np.array(shape, dtype=np.int64 if node.attr["out_type"].type == 9 else np.int32)  # 9: DT_INT64


def _pack(inputs, node):
    axis = int(node.attr["axis"].i)
    if all(_is_const(v) for v in inputs):
        return np.stack(inputs, axis=axis)
    return relax.op.stack([_expr(v) for v in inputs], axis=axis)


def _select(inputs, _node):
    condition, a, b = inputs
    if all(_is_const(v) for v in inputs):
        return np.where(condition, a, b)
    return relax.op.where(_expr(condition), _expr(_as_dtype_of(a, [a, b])), _expr(_as_dtype_of(b, [a, b])))


def _cast(inputs, node):
    import tensorflow as tf

    dtype = tf.as_dtype(node.attr["DstT"].type).name
    value = inputs[0]
    return value.astype(dtype) if _is_const(value) else relax.op.astype(value, dtype)


def _bias_add(inputs, node):
    if node.attr["data_format"].s not in (b"", b"NHWC"):
        raise NotImplementedError(f"data format {node.attr['data_format'].s.decode()}; only NHWC")
    return _elementwise(np.add, relax.op.add)(inputs, node)


def _read_variable(inputs, _node):
    if not _is_const(inputs[0]):
        raise NotImplementedError("a variable not bound to a saved value")
    return inputs[0]


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
    "Sum": _reduce(np.sum, relax.op.sum),
    "Max": _reduce(np.max, relax.op.max),
    "Conv2D": _conv2d,
    "DepthwiseConv2dNative": _depthwise_conv2d,
    "MatMul": _matmul,
    "BiasAdd": _bias_add,
    "FusedBatchNorm": _batch_norm,
    "FusedBatchNormV3": _batch_norm,
    "MaxPool": _pool("max"),
    "AvgPool": _pool("avg"),
    "Softmax": _softmax,
    "Squeeze": _squeeze,
    "ExpandDims": _expand_dims,
    "Transpose": _transpose,
    "Shape": _shape,
    "Pack": _pack,
    "Select": _select,
    "SelectV2": _select,
    "Cast": _cast,
    "Less": _elementwise(np.less, relax.op.less),
    "LessEqual": _elementwise(np.less_equal, relax.op.less_equal),
    "Greater": _elementwise(np.greater, relax.op.greater),
    "GreaterEqual": _elementwise(np.greater_equal, relax.op.greater_equal),
    "Equal": _elementwise(np.equal, relax.op.equal),
    "LeakyRelu": lambda inputs, node: relax.op.nn.leakyrelu(inputs[0], float(node.attr["alpha"].f)),
    "ReadVariableOp": _read_variable,
}


def convert_traced(bb: relax.BlockBuilder, function: Callable, inputs: Sequence[relax.Expr],
                   where: str) -> list[relax.Expr]:
    """Trace ``function`` on tensors shaped like ``inputs``; emit its ops into ``bb``; return its outputs.

    ``where`` names the layer for error messages.
    """
    import tensorflow as tf

    specs = [tf.TensorSpec([int(d) for d in x.ty.shape], x.ty.dtype) for x in inputs]
    graph = tf.function(function).get_concrete_function(*specs).graph
    return [_expr(v) for v in convert_graph(bb, graph, inputs, where)]


def convert_graph(bb: relax.BlockBuilder, graph, inputs: Sequence, where: str) -> list:
    """Emit the ops of a TensorFlow ``graph`` (a FuncGraph fed from ``inputs``, in order) into ``bb``;
    return its outputs (Relax expressions, or numpy arrays for outputs that are constants)."""
    needed = _needed_ops(graph)
    values: dict[str, object] = {}
    arguments = {t.op.name: x for t, x in zip(graph.inputs, inputs)}
    for op in graph.get_operations():
        if op.name not in needed:
            continue
        if op.type == "Placeholder":
            if op.name not in arguments:
                raise UnsupportedModelError(f"{where}: TensorFlow graph input {op.name} is not fed (a captured "
                                            "tensor or variable); only the function's own inputs are")
            values[op.name] = arguments[op.name]
            continue
        args = [_output(values, t.op.name, t.value_index) for t in op.inputs]
        values[op.name] = _convert_node(bb, op.node_def, args, where, {})
    return [_output(values, t.op.name, t.value_index) for t in graph.outputs]


def _needed_ops(graph) -> set[str]:
    """The ops the graph's outputs depend on through data (not control) edges: the rest (the batch-norm's
    saved statistics, NoOps, ops on the gradient's side) is never converted."""
    needed, stack = set(), [t.op for t in graph.outputs]
    while stack:
        op = stack.pop()
        if op.name not in needed:
            needed.add(op.name)
            stack.extend(t.op for t in op.inputs)
    return needed


def convert_function(bb: relax.BlockBuilder, function, inputs: Sequence, where: str,
                     functions: Mapping) -> list:
    """Emit a TensorFlow FunctionDef's ops into ``bb``, read as data (no TensorFlow graph is built).

    Parameters
    ----------
    bb : relax.BlockBuilder
        Inside a dataflow block.
    function : FunctionDef
        Its arguments are fed, in order, from ``inputs``: Relax tensors, or numpy arrays for constants
        and for resource (variable) arguments, whose value ``ReadVariableOp`` then reads.
    where : str
        Starts error messages (the file and signature, say).
    functions : mapping
        FunctionDefs by name, for the functions it calls (``PartitionedCall``, ``StatefulPartitionedCall``,
        or a function name as op type): they are converted in place, as if inlined.

    Returns
    -------
    list
        The function's results, Relax expressions or numpy arrays (results that are constants). Only the
        ops they depend on through data edges are converted.

    Raises
    ------
    UnsupportedModelError
        Naming the op (type, name and function) that cannot be converted.
    """
    where = f"{where}, function {function.signature.name}"
    args = function.signature.input_arg
    if len(args) != len(inputs):
        raise UnsupportedModelError(f"{where}: takes {len(args)} arguments, called with {len(inputs)}")
    values: dict[str, list] = {arg.name: [x] for arg, x in zip(args, inputs)}
    nodes = {n.name: n for n in function.node_def}

    def ref(name: str) -> tuple[str, int]:
        # A FunctionDef names its arguments bare and node outputs as node:output_arg:index.
        node_name, _, rest = name.partition(":")
        if not rest:
            if node_name not in values and node_name not in nodes:
                raise UnsupportedModelError(f"{where}: reference to {name}, which is neither an argument nor a node")
            return node_name, 0
        if node_name not in nodes:
            raise UnsupportedModelError(f"{where}: reference to {name}, a node the function does not have")
        out_arg, _, index = rest.partition(":")
        return node_name, _output_offset(nodes[node_name], out_arg, functions, where) + int(index or 0)

    def data_inputs(node):
        return [ref(i) for i in node.input if not i.startswith("^")]

    results = [ref(function.ret[arg.name]) for arg in function.signature.output_arg]
    # Depth-first post-order from the results (iterative: a deep network's chain outgrows Python's stack).
    order, state, stack = [], {}, [(name, False) for name, _ in reversed(results)]
    while stack:
        name, expanded = stack.pop()
        if name in values or state.get(name) == 2:
            continue
        if expanded:
            state[name] = 2
            order.append(name)
            continue
        if state.get(name) == 1:
            raise UnsupportedModelError(f"{where}: node {name} depends on itself")
        state[name] = 1
        stack.append((name, True))
        stack.extend((n, False) for n, _ in reversed(data_inputs(nodes[name])))
    for name in order:
        node = nodes[name]
        inputs_ = [_output(values, n, i) for n, i in data_inputs(node)]
        value = _convert_node(bb, node, inputs_, where, functions)
        values[name] = value if isinstance(value, list) else [value]
    return [_output(values, n, i) for n, i in results]


def _output_offset(node, out_arg: str, functions: Mapping, where: str) -> int:
    """Where ``node``'s output argument ``out_arg`` starts among its flat outputs (an argument may hold a list)."""
    from tensorflow.python.framework import op_def_registry

    signature = functions[node.op].signature if node.op in functions else op_def_registry.get(node.op)
    if signature is None:
        raise UnsupportedModelError(f"{where}: TensorFlow op {node.op} ({node.name}) is not a TensorFlow op "
                                    "nor a function of the model")
    offset = 0
    for arg in signature.output_arg:
        if arg.name == out_arg:
            return offset
        offset += (int(node.attr[arg.number_attr].i) if arg.number_attr
                   else len(node.attr[arg.type_list_attr].list.type) if arg.type_list_attr else 1)
    raise UnsupportedModelError(f"{where}: TensorFlow op {node.op} ({node.name}) has no output {out_arg}")


_CALLS = ("PartitionedCall", "StatefulPartitionedCall")


def _with_defaults(node):
    """``node`` with the attributes its op defines defaults for filled in: saved FunctionDefs leave them out."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node.op)
    missing = [] if op_def is None else [
        a for a in op_def.attr if a.name not in node.attr and a.HasField("default_value")]
    if not missing:
        return node
    node = type(node).FromString(node.SerializeToString())
    for attr in missing:
        node.attr[attr.name].CopyFrom(attr.default_value)
    return node


def _convert_node(bb, node, args, where, functions):
    """The value (or list of values) of one op on ``args``."""
    import tensorflow as tf

    if node.op == "Const":
        return tf.make_ndarray(node.attr["value"].tensor)
    if node.op in _CALLS or node.op in functions:
        name = node.attr["f"].func.name if node.op in _CALLS else node.op
        if name not in functions:
            raise UnsupportedModelError(f"{where}: TensorFlow op {node.op} ({node.name}) calls function {name}, "
                                        "which the model does not hold")
        return convert_function(bb, functions[name], args, where, functions)
    converter = OPS.get(node.op)
    if converter is None:
        raise UnsupportedModelError(
            f"{where}: TensorFlow op {node.op} ({node.name}) is not supported by the TensorFlow graph importer; "
            f"supported: {', '.join(sorted(OPS))}")
    try:
        return _emit(bb, converter(args, _with_defaults(node)))
    except (NotImplementedError, ValueError, TypeError) as err:
        raise UnsupportedModelError(f"{where}: TensorFlow op {node.op} ({node.name}): {err}") from err


def _emit(bb: relax.BlockBuilder, value):
    if isinstance(value, list):
        return [v if v is None or _is_const(v) or isinstance(v, relax.Var) else _emit(bb, v) for v in value]
    if _is_const(value):
        return value
    value = bb.emit(value)
    if isinstance(value.ty, relax.TupleType):
        return [bb.emit(relax.TupleGetItem(value, i)) for i in range(len(value.ty.fields))]
    return value


def _output(values, name, index):
    value = values[name]
    return value[index] if isinstance(value, list) else value
