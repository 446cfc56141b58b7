"""``relax.bnn.bconv2d``: binary 2-D convolution with LCE's LceBconv2d semantics.

Inputs are bitpacked (see :mod:`bitpack`): ``x`` is NHWC with packed channels,
``w`` is OHWI with packed input channels. With ``accum`` the XOR-popcount over
the ``K = kh * kw * channels_in / groups`` bits under the window, the true dot
product of the +-1 values is ``K - 2 * accum``.

Outputs are LCE's (see :mod:`._output_transform`, shared with bdense): float32
``act(K - 2 * accum) * m + b`` in LCE's folded formula, int8 (the same rescaled
to the output scale and zero point), or bitpacked ``accum > threshold[c]``.

``pad_value`` 1 pads with +1 (bit 0: free). ``pad_value`` 0 pads with 0 for
SAME padding; the padded taps' +1 contributions are then subtracted, times
``-m``, as LCE's zero-padding correction does (exactly, also where LCE's own
correction assumes the window is smaller than the image).

This module holds the op, its shape inference, numpy reference and legalization; what a call is (attributes,
validation, shapes) is :mod:`.bconv2d_geometry`, the computes of each accumulation kind
:mod:`.bconv2d_accumulations`, and which kind a target takes ``strategies.accumulation``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax, te, tirx

from ._common import (
    BITS_PER_WORD,
    PACKED_DTYPE,
    make_call,
    packed_words,
    legalize_without_target,
    register_op,
    static_shape,
)
from ._output_transform import (
    DEFAULT_OUTPUT_FORMULA,
    infer_binary_mac_type,
    legalize_folded_constants,
    packed_output_compute,
    packed_output_ref,
    scaled_output_compute,
    scaled_output_ref,
    transform_args,
    transform_attrs,
)
from .bconv2d_accumulations import accumulate, blocked_filter_compute
from .bconv2d_geometry import OP, Conv2dGeometry, conv_attrs
from .bitpack import unpack_bits


def bconv2d(
    x: relax.Expr,
    w: relax.Expr,
    *,
    channels_in: int,
    multiplier: relax.Expr | None = None,
    bias: relax.Expr | None = None,
    thresholds: relax.Expr | None = None,
    strides=(1, 1),
    dilations=(1, 1),
    padding: str = "VALID",
    pad_value: int = 1,
    activation: str = "NONE",
    out_dtype: str = "float32",
    out_scale: float = 1.0,
    out_zero_point: int = 0,
    output_formula: str = DEFAULT_OUTPUT_FORMULA,
) -> relax.Call:
    """Binary conv2d. Float/int8 output takes ``multiplier`` and ``bias``; packed output takes ``thresholds``."""
    return make_call(
        OP,
        [x, w, *transform_args(OP, out_dtype, multiplier, bias, thresholds)],
        channels_in=int(channels_in),
        strides=[int(s) for s in strides],
        dilations=[int(d) for d in dilations],
        padding=padding,
        pad_value=int(pad_value),
        **transform_attrs(activation, out_dtype, out_scale, out_zero_point, output_formula),
    )




def _infer_type(call: relax.Call) -> relax.TensorType:
    return infer_binary_mac_type(OP, call, conv_attrs(call), Conv2dGeometry)


# ---------------------------------------------------------------- numpy reference


def bconv2d_ref(x, w, attrs: dict, multiplier=None, bias=None, thresholds=None) -> np.ndarray:
    """Reference bconv2d on packed numpy arrays, written for clarity, not speed."""
    g = Conv2dGeometry(list(x.shape), list(w.shape), attrs)
    xb = unpack_bits(x, g.in_words * BITS_PER_WORD).astype(np.int64)  # 1 where the value is -1
    wb = unpack_bits(w, g.filter_words * BITS_PER_WORD).astype(np.int64)
    per_group_words = g.filter_words * BITS_PER_WORD
    xpad = np.zeros((g.batch, g.in_h + g.pad_top + g.pad_bottom, g.in_w + g.pad_left + g.pad_right, xb.shape[-1]),
                    np.int64)
    xpad[:, g.pad_top:g.pad_top + g.in_h, g.pad_left:g.pad_left + g.in_w] = xb
    inside = np.zeros(xpad.shape[1:3], np.int64)
    inside[g.pad_top:g.pad_top + g.in_h, g.pad_left:g.pad_left + g.in_w] = 1
    accum = np.zeros((g.batch, g.out_h, g.out_w, g.channels_out), np.int64)
    padded_dot = np.zeros_like(accum)  # +1 padding's contribution to the dot product
    out_per_group = g.channels_out // g.groups
    for kh in range(g.kernel_h):
        for kw in range(g.kernel_w):
            rows = slice(kh * g.dilation_h, kh * g.dilation_h + (g.out_h - 1) * g.stride_h + 1, g.stride_h)
            cols = slice(kw * g.dilation_w, kw * g.dilation_w + (g.out_w - 1) * g.stride_w + 1, g.stride_w)
            for group in range(g.groups):
                channels = slice(group * out_per_group, (group + 1) * out_per_group)
                xs = xpad[:, rows, cols, group * per_group_words:(group + 1) * per_group_words]
                ws = wb[channels, kh, kw]  # [out_per_group, bits]
                accum[..., channels] += np.einsum("nhwc,oc->nhwo", xs, 1 - ws) + np.einsum(
                    "nhwc,oc->nhwo", 1 - xs, ws)
                tap_sum = g.channels_in_per_group - 2 * ws.sum(axis=1)  # dot of +1s with the filter tap
                outside = 1 - inside[rows, cols]
                padded_dot[..., channels] += outside[None, :, :, None] * tap_sum[None, None, None, :]
    if attrs["out_dtype"] == PACKED_DTYPE:
        return packed_output_ref(accum, thresholds)
    correction = None
    if g.zero_padding:  # the dot product the +1 padding added: subtracted exactly ("dot"), or LCE's float term
        lce = attrs.get("output_formula", DEFAULT_OUTPUT_FORMULA) == "lce"
        correction = (-multiplier.astype(np.float32)) * padded_dot.astype(np.float32) if lce else padded_dot
    return scaled_output_ref(accum, attrs, g.depth, multiplier, bias, correction)


# ---------------------------------------------------------------- TE computes
#
# Legalization emits the weight-only stages (filter blocking, folded output
# constants, zero-padding correction) as functions of their own: their inputs
# are constants, so FoldConstant evaluates them at compile time and the kernel
# reads ready-made tables. Only padding, accumulation and the output transform
# run per inference.


def zero_padding_correction_compute(w: te.Tensor, multiplier: te.Tensor, attrs: dict, in_h: int, in_w: int):
    """Per output pixel and channel, the dot product the +1 padding wrongly added: as such (``"dot"``, subtracted
    from the dot product), or times ``-m`` (``"lce"``, LCE's correction term)."""
    g = Conv2dGeometry([1, in_h, in_w, packed_words(attrs["channels_in"])], [int(d) for d in w.shape], attrs)
    c = te.reduce_axis((0, g.filter_words), name="c")
    tap_popcount = te.compute(
        (g.channels_out, g.kernel_h, g.kernel_w),
        lambda o, p, q: te.sum(tirx.popcount(w[o, p, q, c]), axis=c),
        name="bconv2d_filter_tap_popcount",
    )
    p = te.reduce_axis((0, g.kernel_h), name="p")
    q = te.reduce_axis((0, g.kernel_w), name="q")

    def padded_taps(i, j, o):
        ih = i * g.stride_h - g.pad_top + p * g.dilation_h
        iw = j * g.stride_w - g.pad_left + q * g.dilation_w
        outside = tirx.any(ih < 0, ih >= g.in_h, iw < 0, iw >= g.in_w)
        tap_sum = g.channels_in_per_group - 2 * tap_popcount[o, p, q]  # the tap's dot product with +1s
        return te.sum(tirx.Select(outside, tap_sum, 0), axis=[p, q])

    count = te.compute((g.out_h, g.out_w, g.channels_out), padded_taps, name="bconv2d_padding_count")
    if attrs["output_formula"] == "dot":
        return count
    return te.compute(
        count.shape, lambda i, j, o: (-multiplier[o]) * count[i, j, o].astype("float32"),
        name="bconv2d_padding_correction",
    )


def bconv2d_compute(x, w_blocked, *params, attrs: dict, filter_shape, accumulation: str = "words"):
    r"""Binary convolution on a blocked filter (see :func:`blocked_filter_compute`).

    .. math::
        a[n, i, j, o] = \sum_{p, q, c} \mathrm{popcount}\big(
            \hat x[n, i s_h + p d_h, j s_w + q d_w, g(o) W_g + c] \oplus w[o, p, q, c]\big)

    with :math:`\hat x` the input padded with zero words (+1), :math:`g(o)` the
    group of output channel :math:`o` and :math:`W_g` the packed words per group;
    then the output transform of the module docstring. ``params`` are the
    thresholds (packed output) or the folded multiplier, bias and, for zero
    padding, the correction table. ``accumulation`` says how the popcounts are
    summed: per word into int32 (``words``), per halfword of each channel's
    word into two uint16 lanes summed afterwards (``channel_halfwords``), or
    per 16-bit lane of 128-bit chunks into uint16 lanes summed afterwards
    (``halfwords``, NEON's uadalp), the chunks possibly shared by consecutive
    pixels (``pixel_halfwords``), or per half chunk of 4 channels at a time
    (``quad_halves``, ``pixel_quad_halves``: see ``bconv2d_accumulations``), or per halfword of 4
    channels' one-word taps (``quad_words``: ditto).
    """
    g = Conv2dGeometry([int(d) for d in x.shape], list(filter_shape), attrs)
    accum = accumulate(x, w_blocked, g, accumulation)
    leading = [g.batch, g.out_h, g.out_w]  # pixel_halfwords' accum has whole chunks of pixels
    if attrs["out_dtype"] == PACKED_DTYPE:
        return packed_output_compute(accum, params[0], g.channels_out, name="bconv2d_output", leading=leading)
    multiplier, bias, *padding_correction = params

    def correction(index):  # the table is [out_h, out_w, Cout]
        return padding_correction[0][index[1:]]

    return scaled_output_compute(accum, multiplier, bias, depth=g.depth, activation=attrs["activation"],
                                 out_dtype=attrs["out_dtype"], formula=attrs["output_formula"], channels_out=g.channels_out, name="bconv2d_output",
                                 correction=correction if padding_correction else None, leading=leading)


AccumulationChoice = Callable[[Conv2dGeometry], str]


def legalize(bb: relax.BlockBuilder, call: relax.Call, choose_accumulation: AccumulationChoice) -> relax.Expr:
    """The TE computes of ``call``, accumulating as ``choose_accumulation(geometry)`` says.

    The choice depends on the target (``strategies.binary_legalizations(target)`` binds it); the tuning
    databases hold kernels of the accumulation each target's choice gives.
    """
    attrs = conv_attrs(call)
    x, w = call.args[:2]
    x_shape, _ = static_shape(OP, "input", x)
    w_shape, _ = static_shape(OP, "filter", w)
    g = Conv2dGeometry(x_shape, w_shape, attrs)
    accumulation = choose_accumulation(g)
    w_blocked = bb.emit(bb.call_te(blocked_filter_compute, w, accumulation,
                                   primfunc_name_hint="bnn_bconv2d_block_filter"))
    if attrs["out_dtype"] == PACKED_DTYPE:
        params = [call.args[2]]
    else:
        params = legalize_folded_constants(bb, call, attrs, g.depth, "bconv2d")
        if g.zero_padding:
            multiplier = call.args[2]
            params.append(bb.emit(bb.call_te(zero_padding_correction_compute, w, multiplier, attrs, g.in_h, g.in_w,
                                             primfunc_name_hint="bnn_bconv2d_padding_correction")))
    return bb.call_te(bconv2d_compute, x, w_blocked, *params, attrs=attrs, filter_shape=w_shape,
                      accumulation=accumulation, primfunc_name_hint="bnn_bconv2d")


register_op(OP, "Binary 2-D convolution on bitpacked NHWC input (LceBconv2d).", _infer_type,
            legalize_without_target(legalize, "words"))
