"""TensorFlow's neural-network ops: convolutions (with the dilated convolution TF spells SpaceToBatchND ->
Conv2D -> BatchToSpaceND fused back into one), matrix products, batch-norm, pooling, reductions, softmax."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax

from ..relay_ops._common import same_padding
from .tf_array_ops import slice_tensor
from .tf_values import as_expr, attr_list, constant_input, elementwise, is_const, static_shape

def _window(node, name, rank=4) -> tuple[int, int]:
    values = attr_list(node, name)
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
        pads = attr_list(node, "explicit_paddings")
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
    SpaceToBatchND -> Conv2D -> BatchToSpaceND computes (``convert_atrous``)."""
    data, weights = inputs[0], constant_input(inputs, 1, "filter").astype(np.float32)
    strides, dilations = _window(node, "strides"), dilations or _window(node, "dilations")
    padding = padding or _padding(node, data, weights.shape[:2], strides, dilations)
    groups = int(data.ty.shape[-1]) // weights.shape[2]
    # HWIO as TF stores it, which RecognizeBinaryLayers reads as TFLite's filters.
    return relax.op.nn.conv2d(data, relax.const(weights), strides=strides, padding=padding, dilation=dilations,
                              groups=groups, data_layout="NHWC", kernel_layout="HWIO")

def _depthwise_conv2d(inputs, node, dilations=None, padding=None):
    data, weights = inputs[0], constant_input(inputs, 1, "filter").astype(np.float32)
    strides, dilations = _window(node, "strides"), dilations or _window(node, "dilations")
    padding = padding or _padding(node, data, weights.shape[:2], strides, dilations)
    height, width, channels, multiplier = weights.shape
    return relax.op.nn.conv2d(data, relax.const(weights.reshape(height, width, channels * multiplier, 1)),
                              strides=strides, padding=padding, dilation=dilations, groups=channels,
                              data_layout="NHWC", kernel_layout="HWOI")

class HeldSpaceToBatch:
    """A SpaceToBatchND of a 4-D NHWC tensor over its height and width, not emitted (yet).

    TF computes a dilated convolution as SpaceToBatchND -> Conv2D (VALID, undilated) -> BatchToSpaceND
    (``tf.nn.convolution``; Larq's QuantConv2D with ``dilation_rate``): one convolution per offset within the
    block, interleaved back. That is exactly a dilated VALID convolution of the zero-padded input, cropped,
    which is what is emitted when the three meet, so that the binary layer stays one conv2d of a sign that
    RecognizeBinaryLayers knows. Any other consumer gets the op itself (``materialize``).
    """

    def __init__(self, value, block: list[int], paddings: np.ndarray):
        self.value, self.block, self.paddings, self.emitted = value, block, paddings, None

    def expr(self, bb):
        (top, bottom), (left, right) = self.paddings.tolist()
        n, h, w, c = static_shape(self.value)
        bh, bw = self.block
        h, w = h + top + bottom, w + left + right
        x = relax.op.nn.pad(self.value, [0, 0, top, bottom, left, right, 0, 0])
        x = bb.emit(relax.op.reshape(x, [n, h // bh, bh, w // bw, bw, c]))
        x = bb.emit(relax.op.permute_dims(x, [2, 4, 0, 1, 3, 5]))
        return relax.op.reshape(x, [bh * bw * n, h // bh, w // bw, c])

class HeldBatchedConv:
    """A Conv2D or DepthwiseConv2dNative (``node``, on ``inputs``) of a ``HeldSpaceToBatch``, not emitted (yet)."""

    def __init__(self, inputs, node):
        self.inputs, self.node, self.emitted = inputs, node, None

    def expr(self, bb):
        return _CONVOLUTIONS[self.node.op]([materialize(bb, self.inputs[0]), *self.inputs[1:]], self.node)

def materialize(bb, value):
    """``value``, emitted if it is a ``HeldSpaceToBatch`` or ``HeldBatchedConv`` still held back (once)."""
    if not isinstance(value, (HeldSpaceToBatch, HeldBatchedConv)):
        return value
    if value.emitted is None:
        value.emitted = bb.emit(value.expr(bb))
    return value.emitted

def _batch_to_space(bb, value, block: list[int], crops: np.ndarray):
    """TF's BatchToSpaceND of a 4-D NHWC tensor over its height and width."""
    n, h, w, c = static_shape(value)
    bh, bw = block
    if n % (bh * bw):
        raise ValueError(f"batch {n} is not a multiple of the block {bh}x{bw}")
    x = bb.emit(relax.op.reshape(value, [bh, bw, n // (bh * bw), h, w, c]))
    x = bb.emit(relax.op.permute_dims(x, [2, 3, 0, 4, 1, 5]))
    x = bb.emit(relax.op.reshape(x, [n // (bh * bw), h * bh, w * bw, c]))
    (top, bottom), (left, right) = crops.tolist()
    return slice_tensor(x, (slice(None), slice(top, h * bh - bottom), slice(left, w * bw - right)),
                         [n // (bh * bw), h * bh, w * bw, c])

def _block_arguments(node, inputs, rank, what):
    """The block shape and paddings (or crops) of a SpaceToBatchND (BatchToSpaceND) over height and width."""
    block, pads = constant_input(inputs, 1, "block shape"), constant_input(inputs, 2, what)
    if rank != 4 or block.shape != (2,) or pads.shape != (2, 2):
        raise NotImplementedError(f"a block of shape {list(block.shape)} on a rank-{rank} tensor; only 2-D blocks "
                                  "on NHWC tensors")
    if (block < 1).any() or (pads < 0).any():
        raise ValueError(f"block shape {block.tolist()} and {what} {pads.tolist()}: blocks must be positive, "
                         f"{what} non-negative")
    return [int(b) for b in block], pads.astype(np.int64)

def convert_atrous(bb, node, args):
    """SpaceToBatchND, a convolution of one and BatchToSpaceND of that: held back or fused (``HeldSpaceToBatch``);
    None for every other op."""
    if node.op == "SpaceToBatchND":
        value = as_expr(materialize(bb, args[0]))
        shape = static_shape(value)
        block, paddings = _block_arguments(node, args, len(shape), "paddings")
        padded = [size + int(p.sum()) for size, p in zip(shape[1:3], paddings)]
        if any(size % b for size, b in zip(padded, block)):
            raise ValueError(f"the padded height and width {padded} are not multiples of the block shape {block}")
        return HeldSpaceToBatch(value, block, paddings)
    if node.op in ("Conv2D", "DepthwiseConv2dNative") and isinstance(args[0], HeldSpaceToBatch):
        if node.attr["padding"].s == b"VALID" and _window(node, "strides") == _window(node, "dilations") == (1, 1):
            return HeldBatchedConv(args, node)
        return None
    if node.op == "BatchToSpaceND":
        conv = args[0]
        rank = 4 if isinstance(conv, HeldBatchedConv) else len(static_shape(materialize(bb, conv)))
        block, crops = _block_arguments(node, args, rank, "crops")
        if isinstance(conv, HeldBatchedConv) and conv.emitted is None and conv.inputs[0].block == block:
            batched = conv.inputs[0]
            # Each output row is one window start: cropping it is padding less, as far as there is padding.
            (pt, pb), (pl, pr) = batched.paddings.tolist()
            (ct, cb), (cl, cr) = crops.tolist()
            padding = [max(pt - ct, 0), max(pl - cl, 0), max(pb - cb, 0), max(pr - cr, 0)]
            convolution = _CONVOLUTIONS[conv.node.op]
            out = bb.emit(convolution([batched.value, *conv.inputs[1:]], conv.node, dilations=tuple(block),
                                      padding=padding))
            rest = [max(ct - pt, 0), max(cb - pb, 0), max(cl - pl, 0), max(cr - pr, 0)]
            if not any(rest):
                return out
            n, h, w, c = static_shape(out)
            return slice_tensor(out, (slice(None), slice(rest[0], h - rest[1]), slice(rest[2], w - rest[3])),
                                 [n, h, w, c])
        return _batch_to_space(bb, materialize(bb, conv), block, crops)
    return None

def _matmul(inputs, node):
    a, b = inputs
    if node.attr["transpose_a"].b:
        a = relax.op.permute_dims(as_expr(a), [1, 0]) if not is_const(a) else a.T
    if node.attr["transpose_b"].b:
        b = relax.op.permute_dims(as_expr(b), [1, 0]) if not is_const(b) else b.T
    if is_const(a) and is_const(b):
        return a @ b
    # A constant right-hand side stays a constant: RecognizeBinaryLayers reads dense weights from it.
    return relax.op.matmul(as_expr(a), as_expr(b))

def _batch_norm(inputs, node):
    x, gamma, beta, mean, variance = inputs[:5]
    if node.attr["is_training"].b:
        raise NotImplementedError("batch-norm in training mode (the signature was traced with training=True)")
    if node.attr["data_format"].s not in (b"", b"NHWC"):
        raise NotImplementedError(f"data format {node.attr['data_format'].s.decode()}; only NHWC")
    if not all(is_const(v) for v in (gamma, beta, mean, variance)):
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
        rank = len(static_shape(value))
        axes = [int(a) for a in np.atleast_1d(constant_input(inputs, 1, "axes"))]
        if any(not -rank <= a < rank for a in axes):
            raise ValueError(f"axes {axes} are out of range for a tensor of rank {rank}")
        axes = sorted({a % rank for a in axes})
        if is_const(value):
            # The dtype stays the input's: numpy would sum int32 shapes into int64, TF does not.
            return np.asarray(numpy_fn(value, axis=tuple(axes), keepdims=keepdims)).astype(value.dtype)
        return relax_fn(value, axes, keepdims=keepdims)

    return convert

def _softmax(inputs, _node):
    value = inputs[0]
    if is_const(value):
        exp = np.exp(value - value.max(axis=-1, keepdims=True))
        return (exp / exp.sum(axis=-1, keepdims=True)).astype(value.dtype)
    return relax.op.nn.softmax(value, axis=-1)

def _bias_add(inputs, node):
    if node.attr["data_format"].s not in (b"", b"NHWC"):
        raise NotImplementedError(f"data format {node.attr['data_format'].s.decode()}; only NHWC")
    return elementwise(np.add, relax.op.add)(inputs, node)


_CONVOLUTIONS = {"Conv2D": _conv2d, "DepthwiseConv2dNative": _depthwise_conv2d}

NN_OPS: dict[str, Callable] = {
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
}
