"""Convert TensorFlow graphs into Relax: traced Python code, and a SavedModel's saved functions.

Keras ``Lambda`` and ``TFOpLambda`` layers, and quantizers that are not binary (DoReFa's k-bit, say),
are Python code. They are traced with ``tf.function`` at the layer's concrete shapes and the graph's
ops are converted one by one (``convert_traced``). A SavedModel's serving function is read from its
FunctionDef as data, the functions it calls inlined (``convert_function``, used by :mod:`.saved_model`).
Only the ops the outputs depend on are converted. Ops on constants only are evaluated with numpy, so
shape arithmetic, constant folding and a quantizer applied to a saved kernel never reach Relax. Input
shapes are fixed before conversion (the batch too), so the shape of every tensor is known: ``Shape``,
``Size`` and ``Rank`` of a tensor are constants, and a shape a graph computes from them (Keras's
``Reshape`` and ``Flatten`` trace ``Shape`` -> ``StridedSlice`` -> ``Pack``) folds to a constant before
the op that needs it. An argument that must be constant (a reshape's shape, a slice's bounds) but is
computed from the model's input data fails naming the op, the argument and the tensor it comes from.
TF's dilated convolution, SpaceToBatchND -> Conv2D -> BatchToSpaceND, becomes one dilated conv2d again
(``_atrous``). An op not in the table fails with its name and type and the layer's or function's name.
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


class NotConstantError(NotImplementedError):
    """Input ``index`` of an op (its ``what``: a shape, the axes) must be known at compile time, and is computed
    from the model's input data. ``_convert_node`` names the op and the tensor the input comes from."""

    def __init__(self, index: int, what: str):
        super().__init__(index, what)
        self.index, self.what = index, what


def _constant(inputs, index: int, what: str) -> np.ndarray:
    """``inputs[index]``, which must be a constant (it says ``what`` it is when it is not)."""
    if not _is_const(inputs[index]):
        raise NotConstantError(index, what)
    return inputs[index]


def _static_shape(value) -> list[int]:
    """The shape of a constant or of a Relax tensor (static: input shapes are fixed before conversion)."""
    return list(value.shape) if _is_const(value) else [int(d) for d in value.ty.shape]


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


def _axis(inputs, index: int, rank: int) -> int:
    """Constant input ``index``, an axis of a rank-``rank`` tensor, made non-negative."""
    axis = int(_constant(inputs, index, "axis"))
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def _split(inputs, node):
    value = inputs[1]
    axis, parts = _axis(inputs, 0, len(_static_shape(value))), int(node.attr["num_split"].i)
    if _is_const(value):
        return list(np.split(value, parts, axis=axis))
    return relax.op.split(value, parts, axis=axis)


def _split_v(inputs, _node):
    value = inputs[0]
    shape = _static_shape(value)
    axis = _axis(inputs, 2, len(shape))
    sizes = [int(s) for s in _constant(inputs, 1, "sizes")]
    if sizes.count(-1) == 1:  # one size may be left for TF to infer
        sizes[sizes.index(-1)] = shape[axis] - sum(s for s in sizes if s != -1)
    if any(s < 0 for s in sizes) or sum(sizes) != shape[axis]:
        raise ValueError(f"sizes {sizes} do not split axis {axis} of length {shape[axis]}")
    bounds = [int(i) for i in np.cumsum(sizes)[:-1]]
    if _is_const(value):
        return list(np.split(value, bounds, axis=axis))
    return relax.op.split(value, bounds, axis=axis)


def _pad(inputs, _node):
    value, paddings = inputs[0], _constant(inputs, 1, "paddings").astype(int)
    constant = _constant(inputs, 2, "padding value") if len(inputs) > 2 else np.zeros((), np.float32)
    if _is_const(value):
        return np.pad(value, paddings, constant_values=constant.astype(value.dtype))
    return relax.op.nn.pad(value, [int(p) for p in paddings.reshape(-1)], pad_value=float(constant))


def _concat(inputs, _node):
    *values, _ = inputs
    axis = _axis(inputs, len(values), len(_static_shape(values[0])))
    if all(_is_const(v) for v in values):
        return np.concatenate(values, axis=axis)
    return relax.op.concat([_expr(_as_dtype_of(v, values)) for v in values], axis=axis)


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
    shape = _reshaped(_constant(inputs, 1, "shape"), _static_shape(value))
    return value.reshape(shape) if _is_const(value) else relax.op.reshape(value, shape)


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


def _slice_tensor(value: relax.Expr, index: tuple, shape: list[int]) -> relax.Expr:
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
    begin, end = _constant(inputs, 1, "begin"), _constant(inputs, 2, "end")
    index = _slice_index(node, begin, end, _constant(inputs, 3, "strides"))
    shape = _static_shape(value)
    try:
        if _is_const(value):
            return np.array(value[index])
        return _slice_tensor(value, index, shape)
    except IndexError as err:  # an integer index outside its axis (numpy's message names both)
        raise ValueError(f"slicing a tensor of shape {shape} with {index}: {err}") from err


def _slice(inputs, _node):
    """TF's Slice: ``size`` elements from ``begin`` on each axis (a size of -1: to the end)."""
    value = inputs[0]
    shape = _static_shape(value)
    begin, size = _constant(inputs, 1, "begin"), _constant(inputs, 2, "size")
    if not len(begin) == len(size) == len(shape):
        raise ValueError(f"begin {list(begin)} and size {list(size)} do not match a tensor of shape {shape}")
    index = []
    for b, s, n in zip(begin.tolist(), size.tolist(), shape):
        stop = n if s == -1 else b + s
        if not 0 <= b <= stop <= n:
            raise ValueError(f"begin {list(begin)} and size {list(size)} reach outside a tensor of shape {shape}")
        index.append(slice(b, stop))
    return np.array(value[tuple(index)]) if _is_const(value) else _slice_tensor(value, tuple(index), shape)


def _gather(inputs, node):
    value, indices = inputs[0], _constant(inputs, 1, "indices")
    shape = _static_shape(value)
    axis = _axis(inputs, 2, len(shape))
    if int(node.attr["batch_dims"].i):
        raise NotImplementedError(f"batch_dims {int(node.attr['batch_dims'].i)}; only 0")
    if indices.size and not (0 <= indices.min() and indices.max() < shape[axis]):  # TF takes no negative index
        raise ValueError(f"indices {indices.tolist()} reach outside axis {axis} of length {shape[axis]}")
    if _is_const(value):
        return np.take(value, indices, axis=axis)
    return relax.op.take(value, relax.const(indices.astype(np.int64)), axis=axis)


def _fill(inputs, _node):
    dims, value = [int(d) for d in np.atleast_1d(_constant(inputs, 0, "dims"))], inputs[1]
    if _is_const(value):
        return np.full(dims, value, dtype=value.dtype)
    return relax.op.broadcast_to(value, dims)


def _range(inputs, node):
    import tensorflow as tf

    start, limit, delta = (_constant(inputs, i, what) for i, what in enumerate(("start", "limit", "delta")))
    if delta == 0:
        raise ValueError("delta is 0")
    return np.arange(start, limit, delta).astype(tf.as_dtype(node.attr["Tidx"].type).as_numpy_dtype)


def _shape_dtype(node, attr="out_type"):
    return np.int64 if node.attr[attr].type == 9 else np.int32  # 9: DT_INT64


def _size(inputs, node):
    return np.array(int(np.prod(_static_shape(inputs[0]))), dtype=_shape_dtype(node))


def _rank(inputs, _node):
    return np.array(len(_static_shape(inputs[0])), dtype=np.int32)


def _like(fill):
    def convert(inputs, _node):
        value = inputs[0]
        if _is_const(value):
            return np.full(value.shape, fill, dtype=value.dtype)
        # Not a constant of a feature map's size in the module: Relax makes it, and folds it where it can.
        return (relax.op.zeros_like if fill == 0 else relax.op.ones_like)(value)

    return convert


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


def _conv2d(inputs, node, dilations=None, padding=None):
    """Conv2D; ``dilations`` and ``padding`` ([top, left, bottom, right]) given: the dilated convolution
    SpaceToBatchND -> Conv2D -> BatchToSpaceND computes (``_atrous``)."""
    data, weights = inputs[0], _constant(inputs, 1, "filter").astype(np.float32)
    strides, dilations = _window(node, "strides"), dilations or _window(node, "dilations")
    padding = padding or _padding(node, data, weights.shape[:2], strides, dilations)
    groups = int(data.ty.shape[-1]) // weights.shape[2]
    # HWIO as TF stores it, which RecognizeBinaryLayers reads as TFLite's filters.
    return relax.op.nn.conv2d(data, relax.const(weights), strides=strides, padding=padding, dilation=dilations,
                              groups=groups, data_layout="NHWC", kernel_layout="HWIO")


def _depthwise_conv2d(inputs, node, dilations=None, padding=None):
    data, weights = inputs[0], _constant(inputs, 1, "filter").astype(np.float32)
    strides, dilations = _window(node, "strides"), dilations or _window(node, "dilations")
    padding = padding or _padding(node, data, weights.shape[:2], strides, dilations)
    height, width, channels, multiplier = weights.shape
    return relax.op.nn.conv2d(data, relax.const(weights.reshape(height, width, channels * multiplier, 1)),
                              strides=strides, padding=padding, dilation=dilations, groups=channels,
                              data_layout="NHWC", kernel_layout="HWOI")


class _SpaceToBatch:
    """A SpaceToBatchND of a 4-D NHWC tensor over its height and width, not emitted (yet).

    TF computes a dilated convolution as SpaceToBatchND -> Conv2D (VALID, undilated) -> BatchToSpaceND
    (``tf.nn.convolution``; Larq's QuantConv2D with ``dilation_rate``): one convolution per offset within the
    block, interleaved back. That is exactly a dilated VALID convolution of the zero-padded input, cropped,
    which is what is emitted when the three meet, so that the binary layer stays one conv2d of a sign that
    RecognizeBinaryLayers knows. Any other consumer gets the op itself (``_materialize``).
    """

    def __init__(self, value, block: list[int], paddings: np.ndarray):
        self.value, self.block, self.paddings, self.emitted = value, block, paddings, None

    def expr(self, bb):
        (top, bottom), (left, right) = self.paddings.tolist()
        n, h, w, c = _static_shape(self.value)
        bh, bw = self.block
        h, w = h + top + bottom, w + left + right
        x = relax.op.nn.pad(self.value, [0, 0, top, bottom, left, right, 0, 0])
        x = bb.emit(relax.op.reshape(x, [n, h // bh, bh, w // bw, bw, c]))
        x = bb.emit(relax.op.permute_dims(x, [2, 4, 0, 1, 3, 5]))
        return relax.op.reshape(x, [bh * bw * n, h // bh, w // bw, c])


class _BatchedConv:
    """A Conv2D or DepthwiseConv2dNative (``node``, on ``inputs``) of a ``_SpaceToBatch``, not emitted (yet)."""

    def __init__(self, inputs, node):
        self.inputs, self.node, self.emitted = inputs, node, None

    def expr(self, bb):
        return OPS[self.node.op]([_materialize(bb, self.inputs[0]), *self.inputs[1:]], self.node)


def _materialize(bb, value):
    """``value``, emitted if it is a ``_SpaceToBatch`` or ``_BatchedConv`` still held back (once)."""
    if not isinstance(value, (_SpaceToBatch, _BatchedConv)):
        return value
    if value.emitted is None:
        value.emitted = bb.emit(value.expr(bb))
    return value.emitted


def _batch_to_space(bb, value, block: list[int], crops: np.ndarray):
    """TF's BatchToSpaceND of a 4-D NHWC tensor over its height and width."""
    n, h, w, c = _static_shape(value)
    bh, bw = block
    if n % (bh * bw):
        raise ValueError(f"batch {n} is not a multiple of the block {bh}x{bw}")
    x = bb.emit(relax.op.reshape(value, [bh, bw, n // (bh * bw), h, w, c]))
    x = bb.emit(relax.op.permute_dims(x, [2, 3, 0, 4, 1, 5]))
    x = bb.emit(relax.op.reshape(x, [n // (bh * bw), h * bh, w * bw, c]))
    (top, bottom), (left, right) = crops.tolist()
    return _slice_tensor(x, (slice(None), slice(top, h * bh - bottom), slice(left, w * bw - right)),
                         [n // (bh * bw), h * bh, w * bw, c])


def _block_arguments(node, inputs, rank, what):
    """The block shape and paddings (or crops) of a SpaceToBatchND (BatchToSpaceND) over height and width."""
    block, pads = _constant(inputs, 1, "block shape"), _constant(inputs, 2, what)
    if rank != 4 or block.shape != (2,) or pads.shape != (2, 2):
        raise NotImplementedError(f"a block of shape {list(block.shape)} on a rank-{rank} tensor; only 2-D blocks "
                                  "on NHWC tensors")
    if (block < 1).any() or (pads < 0).any():
        raise ValueError(f"block shape {block.tolist()} and {what} {pads.tolist()}: blocks must be positive, "
                         f"{what} non-negative")
    return [int(b) for b in block], pads.astype(np.int64)


def _atrous(bb, node, args):
    """SpaceToBatchND, a convolution of one and BatchToSpaceND of that: held back or fused (``_SpaceToBatch``);
    None for every other op."""
    if node.op == "SpaceToBatchND":
        value = _expr(_materialize(bb, args[0]))
        shape = _static_shape(value)
        block, paddings = _block_arguments(node, args, len(shape), "paddings")
        padded = [size + int(p.sum()) for size, p in zip(shape[1:3], paddings)]
        if any(size % b for size, b in zip(padded, block)):
            raise ValueError(f"the padded height and width {padded} are not multiples of the block shape {block}")
        return _SpaceToBatch(value, block, paddings)
    if node.op in ("Conv2D", "DepthwiseConv2dNative") and isinstance(args[0], _SpaceToBatch):
        if node.attr["padding"].s == b"VALID" and _window(node, "strides") == _window(node, "dilations") == (1, 1):
            return _BatchedConv(args, node)
        return None
    if node.op == "BatchToSpaceND":
        conv = args[0]
        rank = 4 if isinstance(conv, _BatchedConv) else len(_static_shape(_materialize(bb, conv)))
        block, crops = _block_arguments(node, args, rank, "crops")
        if isinstance(conv, _BatchedConv) and conv.emitted is None and conv.inputs[0].block == block:
            batched = conv.inputs[0]
            # Each output row is one window start: cropping it is padding less, as far as there is padding.
            (pt, pb), (pl, pr) = batched.paddings.tolist()
            (ct, cb), (cl, cr) = crops.tolist()
            padding = [max(pt - ct, 0), max(pl - cl, 0), max(pb - cb, 0), max(pr - cr, 0)]
            out = bb.emit(OPS[conv.node.op]([batched.value, *conv.inputs[1:]], conv.node, dilations=tuple(block),
                                             padding=padding))
            rest = [max(ct - pt, 0), max(cb - pb, 0), max(cl - pl, 0), max(cr - pr, 0)]
            if not any(rest):
                return out
            n, h, w, c = _static_shape(out)
            return _slice_tensor(out, (slice(None), slice(rest[0], h - rest[1]), slice(rest[2], w - rest[3])),
                                 [n, h, w, c])
        return _batch_to_space(bb, _materialize(bb, conv), block, crops)
    return None


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
        value = inputs[0]
        keepdims = bool(node.attr["keep_dims"].b)
        rank = len(_static_shape(value))
        axes = [int(a) for a in np.atleast_1d(_constant(inputs, 1, "axes"))]
        if any(not -rank <= a < rank for a in axes):
            raise ValueError(f"axes {axes} are out of range for a tensor of rank {rank}")
        axes = sorted({a % rank for a in axes})
        if _is_const(value):
            # The dtype stays the input's: numpy would sum int32 shapes into int64, TF does not.
            return np.asarray(numpy_fn(value, axis=tuple(axes), keepdims=keepdims)).astype(value.dtype)
        return relax_fn(value, axes, keepdims=keepdims)

    return convert


def _softmax(inputs, _node):
    value = inputs[0]
    if _is_const(value):
        exp = np.exp(value - value.max(axis=-1, keepdims=True))
        return (exp / exp.sum(axis=-1, keepdims=True)).astype(value.dtype)
    return relax.op.nn.softmax(value, axis=-1)


def _squeeze(inputs, node):
    axes = _attr_list(node, "squeeze_dims") or None
    if _is_const(inputs[0]):
        return np.squeeze(inputs[0], axis=None if axes is None else tuple(axes))
    return relax.op.squeeze(inputs[0], axes)


def _expand_dims(inputs, _node):
    value = inputs[0]
    axis = _axis(inputs, 1, len(_static_shape(value)) + 1)
    return np.expand_dims(value, axis) if _is_const(value) else relax.op.expand_dims(value, axis)


def _transpose(inputs, _node):
    value, perm = inputs[0], [int(p) for p in _constant(inputs, 1, "permutation")]
    return value.transpose(perm) if _is_const(value) else relax.op.permute_dims(value, perm)


def _shape(inputs, node):
    return np.array(_static_shape(inputs[0]), dtype=_shape_dtype(node))


def _pack(inputs, node):
    axis = int(node.attr["axis"].i)
    if all(_is_const(v) for v in inputs):
        return np.stack(inputs, axis=axis)
    return relax.op.stack([_expr(_as_dtype_of(v, inputs)) for v in inputs], axis=axis)


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
    "FloorDiv": _elementwise(np.floor_divide, _floor_div),
    "FloorMod": _elementwise(np.mod, relax.op.floor_mod),  # both take the divisor's sign, as TF does
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
    "Slice": _slice,
    "GatherV2": _gather,
    "Mean": _reduce(np.mean, relax.op.mean),
    "Sum": _reduce(np.sum, relax.op.sum),
    "Prod": _reduce(np.prod, relax.op.prod),
    "Max": _reduce(np.max, relax.op.max),
    "Min": _reduce(np.min, relax.op.min),
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
    "Less": _elementwise(np.less, relax.op.less),
    "LessEqual": _elementwise(np.less_equal, relax.op.less_equal),
    "Greater": _elementwise(np.greater, relax.op.greater),
    "GreaterEqual": _elementwise(np.greater_equal, relax.op.greater_equal),
    "Equal": _elementwise(np.equal, relax.op.equal),
    "LeakyRelu": lambda inputs, node: _elementwise(
        lambda x: np.where(x < 0, x * np.float32(node.attr["alpha"].f), x).astype(x.dtype),
        lambda x: relax.op.nn.leakyrelu(x, float(node.attr["alpha"].f)))(inputs, node),
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
    return [_materialize(bb, _output(values, t.op.name, t.value_index)) for t in graph.outputs]


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
    return [_materialize(bb, _output(values, n, i)) for n, i in results]


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
# Converted by ``_atrous`` (which needs the block builder), not by a function of OPS.
_ATROUS = ("SpaceToBatchND", "BatchToSpaceND")
# Ops that hand a held-back SpaceToBatchND or convolution on as it is.
_PASS_THROUGH = ("Identity", "IdentityN", "StopGradient")


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
    if converter is None and node.op not in _ATROUS:
        raise UnsupportedModelError(
            f"{where}: TensorFlow op {node.op} ({node.name}) is not supported by the TensorFlow graph importer; "
            f"supported: {', '.join(sorted([*OPS, *_ATROUS]))}")
    node = _with_defaults(node)
    try:
        held = _atrous(bb, node, args)
        if held is not None:
            return _emit(bb, held)
        if node.op not in _PASS_THROUGH:
            args = [_materialize(bb, a) for a in args]
        return _emit(bb, converter(args, node))
    except NotConstantError as err:
        source = [i for i in node.input if not i.startswith("^")][err.index]
        raise UnsupportedModelError(
            f"{where}: TensorFlow op {node.op} ({node.name}): its {err.what} (input {err.index}, {source}) is "
            f"computed from the model's input data, not from shapes and constants only; only a {err.what} known "
            "at compile time is supported") from err
    except (NotImplementedError, ValueError, TypeError) as err:
        raise UnsupportedModelError(f"{where}: TensorFlow op {node.op} ({node.name}): {err}") from err


def _emit(bb: relax.BlockBuilder, value):
    if isinstance(value, (_SpaceToBatch, _BatchedConv)):
        return value
    if isinstance(value, list):
        return [v if v is None or isinstance(v, relax.Var) else _emit(bb, v) for v in value]
    if isinstance(value, np.generic):  # numpy reduces 0-d arrays to scalars: a constant stays an array
        return np.asarray(value)
    if _is_const(value):
        return value
    value = bb.emit(value)
    if isinstance(value.ty, relax.TupleType):
        return [bb.emit(relax.TupleGetItem(value, i)) for i in range(len(value.ty.fields))]
    return value


def _output(values, name, index):
    value = values[name]
    return value[index] if isinstance(value, list) else value
