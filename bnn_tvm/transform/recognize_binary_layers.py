"""Recognize binary layers in float graphs: what a Larq model becomes through the stock TFLite converter.

Without LCE's converter, a Larq layer reaches TFLite as float ops (checked with TensorFlow 2.16's
converter and larq 0.14):

* the input quantizer ``ste_sign`` (and every larq sign quantizer: they share ``larq.math.sign``)
  becomes ``SIGN(ADD(SIGN(x), 0.1))``: -1 where x < 0, +1 elsewhere, 0 included;
* one-padding (``pad_values=1``) becomes ``PADV2`` with the constant 1.0 before a VALID
  ``CONV_2D``; zero-padding stays the convolution's own SAME padding;
* the quantized kernel is constant-folded to a float filter of +-1, or of +-s per output channel
  when a batch-norm directly follows the layer and the converter folds it into the filter;
* ``QuantDense`` becomes ``FULLY_CONNECTED``, which TVM imports as a ``matmul`` with the
  transposed (constant) weights;
* a dilated convolution becomes ``SPACE_TO_BATCH_ND``, an undilated ``CONV_2D`` over the blocks
  and ``BATCH_TO_SPACE_ND``.

This pass rewrites a ``conv2d`` or ``matmul`` into ``relax.bnn.quantize`` and ``bconv2d`` or
``bdense`` exactly when the result is provably the same: its data is such a binarization (possibly
padded with +-1), and its constant weights are +-s per output channel (s > 0, which becomes the
multiplier). Everything else stays float, in particular a bare ``sign`` (it maps 0 to 0, not +1),
depthwise convolutions (one channel per group cannot be bitpacked into whole words), grouped
convolutions with a per-group channel count that is not a multiple of 32, dilated convolutions
(the blocks space-to-batch makes are padded with zeros, which are not +-1) and zero padding other
than TF's SAME.

It expects folded constants (run it after ``FoldConstant``) and leaves the dead float binarization
to ``DeadCodeElimination``. The layer's bias addition, activation and batch-norm stay the float ops
they were, for the later passes to fold into the binary op.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import relay_ops as ops
from ..relay_ops._common import same_padding
from ..relay_ops.binary_filter import channel_scales
from ._rewrite import Graph, constant, op_name, rewrite_calls

# conv2d kernel layouts TVM's TFLite frontend emits for ordinary and grouped convolutions, as the
# axis order that turns them into OHWI (HWOI, its depthwise layout, is not binarizable).
_TO_OHWI = {"OHWI": (0, 1, 2, 3), "HWIO": (3, 0, 1, 2)}


def _float32_tensor(expr: relax.Expr) -> list[int] | None:
    """The static shape of a float32 tensor, else None."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or str(ty.dtype) != "float32":
        return None
    dims = ty.shape.values
    return [int(d) for d in dims] if all(isinstance(d, tvm.tirx.IntImm) for d in dims) else None


def _producer(graph: Graph, expr: relax.Expr, name: str) -> relax.Call | None:
    call = graph.producer(expr)
    return call if call is not None and op_name(call) == name else None


def _binarized(graph: Graph, expr: relax.Expr) -> relax.Expr | None:
    """``x`` when ``expr`` is ``sign(sign(x) + c)`` with every element of the constant c in (0, 1).

    sign(x) is -1, 0 or +1; adding c keeps -1 + c < 0 and moves 0 to c > 0, so the outer sign is -1
    exactly where x < 0: the rule of ``quantize`` (bit 1 for x < 0), -0.0 and 0 giving +1.
    """
    # Relax expressions refuse `and`/`or` (they would build TIR conditions): test for None.
    outer = _producer(graph, expr, "relax.sign")
    shifted = None if outer is None else _producer(graph, outer.args[0], "relax.add")
    if shifted is None:
        return None
    for signed, offset in (shifted.args, shifted.args[::-1]):
        inner = _producer(graph, signed, "relax.sign")
        c = constant(offset)
        if (inner is not None and c is not None and c.size and np.all((c > 0) & (c < 1))
                and _float32_tensor(inner.args[0]) is not None
                and _float32_tensor(inner.args[0]) == _float32_tensor(expr)):
            return inner.args[0]
    return None


# ---------------------------------------------------------------- conv2d


def _binary_conv2d(call: relax.Call, graph: Graph) -> relax.Expr | None:
    attrs = call.attrs
    weights = constant(call.args[1])
    padding = [int(p) for p in attrs.padding]
    if (attrs.data_layout != "NHWC" or attrs.out_layout != "NHWC" or attrs.kernel_layout not in _TO_OHWI
            or attrs.out_dtype not in (None, "", "float32") or weights is None or len(padding) != 4):
        return None
    filter_ohwi = np.ascontiguousarray(weights.transpose(_TO_OHWI[attrs.kernel_layout]))
    scales = channel_scales(filter_ohwi)
    data = _binary_conv_input(graph, call.args[0], padding, filter_ohwi.shape[1:3], attrs)
    if scales is None or data is None:
        return None
    source, conv_padding, pad_value = data
    channels_in = _float32_tensor(call.args[0])[-1]
    groups = int(attrs.groups)
    if groups > 1 and (channels_in // groups) % ops.BITS_PER_WORD:
        return None  # bconv2d packs each group into whole words
    return ops.bconv2d(
        ops.quantize(source),
        relax.const(ops.quantize_ref(filter_ohwi), ops.PACKED_DTYPE),
        channels_in=channels_in,
        multiplier=relax.const(scales),
        bias=relax.const(np.zeros_like(scales)),
        strides=[int(s) for s in attrs.strides],
        dilations=[int(d) for d in attrs.dilation],
        padding=conv_padding,
        pad_value=pad_value,
    )


def _binary_conv_input(graph: Graph, data, padding, kernel, attrs) -> tuple[relax.Expr, str, int] | None:
    """(the float tensor to quantize, bconv2d's padding, its pad_value), or None if data is not +-1.

    The convolution's own padding pads with zeros: binary only as bconv2d's SAME zero-padding. A
    constant pad of +-1 before it commutes with the binarization (+-1 binarize to themselves): it
    becomes bconv2d's SAME one-padding where it pads as much as SAME, otherwise it stays, on x.
    """
    source = _binarized(graph, data)
    if source is not None:
        if not any(padding):
            return source, "VALID", 1
        if padding == _same_padding(source, kernel, attrs):
            return source, "SAME", 0
        return None
    pad = _producer(graph, data, "relax.nn.pad")
    source = None if pad is None else _binarized(graph, pad.args[0])
    if source is None or any(padding) or pad.attrs.pad_mode != "constant":
        return None
    value = float(pad.attrs.pad_value)
    widths = [int(w) for w in pad.attrs.pad_width]
    if value not in (1.0, -1.0) or len(widths) != 8 or any(widths[:2] + widths[6:]):
        return None
    top, bottom, left, right = widths[2:6]
    if value == 1.0 and [top, left, bottom, right] == _same_padding(source, kernel, attrs):
        return source, "SAME", 1
    return relax.op.nn.pad(source, widths, "constant", value), "VALID", 1


def _same_padding(data: relax.Expr, kernel, attrs) -> list[int]:
    """TF's SAME padding of a conv2d on ``data`` (NHWC) as conv2d's [top, left, bottom, right]."""
    (_, top, bottom), (_, left, right) = (
        same_padding(size, int(k), int(s), int(d))
        for size, k, s, d in zip(_float32_tensor(data)[1:3], kernel, attrs.strides, attrs.dilation, strict=True)
    )
    return [top, left, bottom, right]


# ---------------------------------------------------------------- dense


def _binary_dense(call: relax.Call, graph: Graph) -> relax.Expr | None:
    source = _binarized(graph, call.args[0])
    weights = constant(call.args[1])
    if (source is None or weights is None or weights.ndim != 2 or len(_float32_tensor(source)) != 2
            or call.attrs.out_dtype not in (None, "", "float32")):
        return None
    filter_oi = np.ascontiguousarray(weights.T)
    scales = channel_scales(filter_oi)
    if scales is None:
        return None
    return ops.bdense(
        ops.quantize(source),
        relax.const(ops.quantize_ref(filter_oi), ops.PACKED_DTYPE),
        channels_in=filter_oi.shape[1],
        multiplier=relax.const(scales),
        bias=relax.const(np.zeros_like(scales)),
    )


_REWRITES = {"relax.nn.conv2d": _binary_conv2d, "relax.matmul": _binary_dense}


def _rewrite(call: relax.Call, graph: Graph) -> relax.Expr | None:
    rewrite = _REWRITES.get(op_name(call))
    return None if rewrite is None else rewrite(call, graph)


def RecognizeBinaryLayers() -> tvm.transform.Pass:  # noqa: N802 - TVM's pass naming
    r"""Rewrite float conv2d and matmul layers that are provably binary into ``relax.bnn`` ops.

    A layer is rewritten when its data is Larq's binarization ``sign(sign(x) + c)``, 0 < c < 1
    (optionally padded with +-1), and its weights are constants of +-s per output channel, s > 0:

    .. math::
        \operatorname{conv}(\operatorname{binarize}(x), W)_o
        = s_o \cdot \operatorname{bconv}(\operatorname{quantize}(x), \operatorname{quantize}(W))_o

    becomes ``bconv2d(quantize(x), packed W, multiplier=s, bias=0)`` (``bdense`` for a matmul).
    The binary part is exact: with s = 1 the output equals the float layer's bit for bit.
    """
    return rewrite_calls(_rewrite, "bnn_tvm.RecognizeBinaryLayers")
