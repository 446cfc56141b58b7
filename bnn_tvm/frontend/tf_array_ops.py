"""TensorFlow's array ops (slicing, reshaping, joining, shapes, casts) on constants or Relax tensors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax

from .tf_values import as_dtype_of, as_expr, attr_list, axis_input, constant_input, is_const, static_shape

def _split(inputs, node):
    value = inputs[1]
    axis, parts = axis_input(inputs, 0, len(static_shape(value))), int(node.attr["num_split"].i)
    if is_const(value):
        return list(np.split(value, parts, axis=axis))
    return relax.op.split(value, parts, axis=axis)

def _split_v(inputs, _node):
    value = inputs[0]
    shape = static_shape(value)
    axis = axis_input(inputs, 2, len(shape))
    sizes = [int(s) for s in constant_input(inputs, 1, "sizes")]
    if sizes.count(-1) == 1:  # one size may be left for TF to infer
        sizes[sizes.index(-1)] = shape[axis] - sum(s for s in sizes if s != -1)
    if any(s < 0 for s in sizes) or sum(sizes) != shape[axis]:
        raise ValueError(f"sizes {sizes} do not split axis {axis} of length {shape[axis]}")
    bounds = [int(i) for i in np.cumsum(sizes)[:-1]]
    if is_const(value):
        return list(np.split(value, bounds, axis=axis))
    return relax.op.split(value, bounds, axis=axis)

def _pad(inputs, _node):
    value, paddings = inputs[0], constant_input(inputs, 1, "paddings").astype(int)
    constant = constant_input(inputs, 2, "padding value") if len(inputs) > 2 else np.zeros((), np.float32)
    if is_const(value):
        return np.pad(value, paddings, constant_values=constant.astype(value.dtype))
    return relax.op.nn.pad(value, [int(p) for p in paddings.reshape(-1)], pad_value=float(constant))

def _concat(inputs, _node):
    *values, _ = inputs
    axis = axis_input(inputs, len(values), len(static_shape(values[0])))
    if all(is_const(v) for v in values):
        return np.concatenate(values, axis=axis)
    return relax.op.concat([as_expr(as_dtype_of(v, values)) for v in values], axis=axis)

def _reshaped(shape, old_shape, what="shape") -> list[int]:
    """TF's reshape target ``shape`` (one -1 to infer) for a tensor of ``old_shape``, with the -1 resolved."""
    shape, size = [int(s) for s in np.atleast_1d(shape)], int(np.prod(old_shape))
    known = int(np.prod([s for s in shape if s != -1]))
    if shape.count(-1) > 1 or any(s < -1 for s in shape) or (
            -1 in shape and (known == 0 or size % known)) or (-1 not in shape and known != size):
        raise ValueError(f"{what} {shape} does not fit a tensor of shape {list(old_shape)} ({size} elements)")
    return [size // known if s == -1 else s for s in shape]

def _reshape(inputs, _node):
    value = inputs[0]
    shape = _reshaped(constant_input(inputs, 1, "shape"), static_shape(value))
    return value.reshape(shape) if is_const(value) else relax.op.reshape(value, shape)

def _slice_index(node, begin, end, strides) -> tuple:
    """A StridedSlice's specification as the numpy index it stands for: TF's masks follow numpy's indexing
    (a shrink axis is an integer index, a new axis ``np.newaxis``, the ellipsis ``...``, a masked bound a
    missing one)."""
    masks = {k: int(node.attr[k].i) for k in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask",
                                             "shrink_axis_mask")}
    if not len(begin) == len(end) == len(strides):
        raise ValueError(f"begin, end and strides have lengths {len(begin)}, {len(end)}, {len(strides)}")
    if any(int(s) == 0 for s in strides):
        raise ValueError(f"strides {[int(s) for s in strides]} hold a 0")
    index = []
    for i, (b, e, s) in enumerate(zip(begin, end, strides)):
        if masks["ellipsis_mask"] >> i & 1:  # TF checks the ellipsis before new_axis, and shrink after both
            index.append(Ellipsis)
        elif masks["new_axis_mask"] >> i & 1:
            index.append(np.newaxis)
        elif masks["shrink_axis_mask"] >> i & 1:
            index.append(int(b))
        else:
            index.append(slice(None if masks["begin_mask"] >> i & 1 else int(b),
                               None if masks["end_mask"] >> i & 1 else int(e), int(s)))
    if index.count(Ellipsis) > 1:
        raise ValueError("more than one ellipsis")
    return tuple(index)

def slice_tensor(value: relax.Expr, index: tuple, shape: list[int]) -> relax.Expr:
    """``value[index]`` for a numpy-style ``index`` of slices, integers, ``np.newaxis`` and one ellipsis."""
    # The result's shape, from a zero-strided view of ``shape``: numpy checks the index and allocates nothing.
    result = list(np.broadcast_to(np.empty((), np.int8), shape)[index].shape)
    items = [i for i in index if i is not np.newaxis]
    rest = len(shape) - sum(i is not Ellipsis for i in items)
    at = items.index(Ellipsis) if Ellipsis in items else len(items)
    items = items[:at] + [slice(None)] * rest + items[at + 1:]  # an implicit ellipsis ends the index
    axes, begins, ends, steps, reversed_, sliced = [], [], [], [], [], []
    for axis, (item, size) in enumerate(zip(items, shape, strict=True)):
        if isinstance(item, int):  # in range: numpy checked it above
            item = slice(item % size, item % size + 1)
        start, stop, step = item.indices(size)
        sliced.append(len(range(start, stop, step)))
        if step < 0:  # taken by index: a negative stride's end cannot say "before element 0" as a bound
            reversed_.append((axis, np.arange(start, stop, step)))
        elif (start, stop, step) != (0, size, 1):
            axes.append(axis), begins.append(start), ends.append(stop), steps.append(step)
    out = value
    if axes:
        out = relax.op.strided_slice(out, axes, begins, ends, steps, assume_inbound=True)
    for axis, positions in reversed_:
        out = relax.op.take(out, relax.const(positions.astype(np.int64)), axis=axis)
    # Integer indices drop their axis and new axes insert one: both only reshape what was sliced.
    return relax.op.reshape(out, result) if result != sliced else out

def _strided_slice(inputs, node):
    value = inputs[0]
    begin, end = constant_input(inputs, 1, "begin"), constant_input(inputs, 2, "end")
    index = _slice_index(node, begin, end, constant_input(inputs, 3, "strides"))
    shape = static_shape(value)
    try:
        if is_const(value):
            return np.array(value[index])
        return slice_tensor(value, index, shape)
    except IndexError as err:  # an integer index outside its axis (numpy's message names both)
        raise ValueError(f"slicing a tensor of shape {shape} with {index}: {err}") from err

def _slice(inputs, _node):
    """TF's Slice: ``size`` elements from ``begin`` on each axis (a size of -1: to the end)."""
    value = inputs[0]
    shape = static_shape(value)
    begin, size = constant_input(inputs, 1, "begin"), constant_input(inputs, 2, "size")
    if not len(begin) == len(size) == len(shape):
        raise ValueError(f"begin {list(begin)} and size {list(size)} do not match a tensor of shape {shape}")
    index = []
    for b, s, n in zip(begin.tolist(), size.tolist(), shape):
        stop = n if s == -1 else b + s
        if not 0 <= b <= stop <= n:
            raise ValueError(f"begin {list(begin)} and size {list(size)} reach outside a tensor of shape {shape}")
        index.append(slice(b, stop))
    return np.array(value[tuple(index)]) if is_const(value) else slice_tensor(value, tuple(index), shape)

def _gather(inputs, node):
    value, indices = inputs[0], constant_input(inputs, 1, "indices")
    shape = static_shape(value)
    axis = axis_input(inputs, 2, len(shape))
    if int(node.attr["batch_dims"].i):
        raise NotImplementedError(f"batch_dims {int(node.attr['batch_dims'].i)}; only 0")
    if indices.size and not (0 <= indices.min() and indices.max() < shape[axis]):  # TF takes no negative index
        raise ValueError(f"indices {indices.tolist()} reach outside axis {axis} of length {shape[axis]}")
    if is_const(value):
        return np.take(value, indices, axis=axis)
    return relax.op.take(value, relax.const(indices.astype(np.int64)), axis=axis)

def _fill(inputs, _node):
    dims, value = [int(d) for d in np.atleast_1d(constant_input(inputs, 0, "dims"))], inputs[1]
    if is_const(value):
        return np.full(dims, value, dtype=value.dtype)
    return relax.op.broadcast_to(value, dims)

def _range(inputs, node):
    import tensorflow as tf

    start, limit, delta = (constant_input(inputs, i, what) for i, what in enumerate(("start", "limit", "delta")))
    if delta == 0:
        raise ValueError("delta is 0")
    return np.arange(start, limit, delta).astype(tf.as_dtype(node.attr["Tidx"].type).as_numpy_dtype)

def _shape_dtype(node, attr="out_type"):
    return np.int64 if node.attr[attr].type == 9 else np.int32  # 9: DT_INT64

def _size(inputs, node):
    return np.array(int(np.prod(static_shape(inputs[0]))), dtype=_shape_dtype(node))

def _rank(inputs, _node):
    return np.array(len(static_shape(inputs[0])), dtype=np.int32)

def _like(fill):
    def convert(inputs, _node):
        value = inputs[0]
        if is_const(value):
            return np.full(value.shape, fill, dtype=value.dtype)
        # Not a constant of a feature map's size in the module: Relax makes it, and folds it where it can.
        return (relax.op.zeros_like if fill == 0 else relax.op.ones_like)(value)

    return convert

def _identity(inputs, _node):
    return inputs[0] if len(inputs) == 1 else list(inputs)

def _squeeze(inputs, node):
    axes = attr_list(node, "squeeze_dims") or None
    if is_const(inputs[0]):
        return np.squeeze(inputs[0], axis=None if axes is None else tuple(axes))
    return relax.op.squeeze(inputs[0], axes)

def _expand_dims(inputs, _node):
    value = inputs[0]
    axis = axis_input(inputs, 1, len(static_shape(value)) + 1)
    return np.expand_dims(value, axis) if is_const(value) else relax.op.expand_dims(value, axis)

def _transpose(inputs, _node):
    value, perm = inputs[0], [int(p) for p in constant_input(inputs, 1, "permutation")]
    return value.transpose(perm) if is_const(value) else relax.op.permute_dims(value, perm)

def _shape(inputs, node):
    return np.array(static_shape(inputs[0]), dtype=_shape_dtype(node))

def _pack(inputs, node):
    axis = int(node.attr["axis"].i)
    if all(is_const(v) for v in inputs):
        return np.stack(inputs, axis=axis)
    return relax.op.stack([as_expr(as_dtype_of(v, inputs)) for v in inputs], axis=axis)

def _select(inputs, _node):
    condition, a, b = inputs
    if all(is_const(v) for v in inputs):
        return np.where(condition, a, b)
    return relax.op.where(as_expr(condition), as_expr(as_dtype_of(a, [a, b])), as_expr(as_dtype_of(b, [a, b])))

def _cast(inputs, node):
    import tensorflow as tf

    dtype = tf.as_dtype(node.attr["DstT"].type).name
    value = inputs[0]
    return value.astype(dtype) if is_const(value) else relax.op.astype(value, dtype)

def _read_variable(inputs, _node):
    if not is_const(inputs[0]):
        raise NotImplementedError("a variable not bound to a saved value")
    return inputs[0]


ARRAY_OPS: dict[str, Callable] = {
    "Identity": _identity,
    "IdentityN": _identity,
    "StopGradient": _identity,
    "Pad": _pad,
    "PadV2": _pad,
    "Split": _split,
    "SplitV": _split_v,
    "ConcatV2": _concat,
    "Reshape": _reshape,
    "StridedSlice": _strided_slice,
    "Slice": _slice,
    "GatherV2": _gather,
    "Squeeze": _squeeze,
    "ExpandDims": _expand_dims,
    "Transpose": _transpose,
    "Shape": _shape,
    "Size": _size,
    "Rank": _rank,
    "ZerosLike": _like(0),
    "OnesLike": _like(1),
    "Fill": _fill,
    "Range": _range,
    "Pack": _pack,
    "Select": _select,
    "SelectV2": _select,
    "Cast": _cast,
    "ReadVariableOp": _read_variable,
}
