"""``relax.bnn.bmaxpool2d``: max-pooling on bitpacked NHWC input (LCE's LceBMaxPool2d).

The max of +-1 values is +1 unless every value is -1; with bit 1 meaning -1 that
is the AND of the words under the window. SAME padding ignores the padded
positions (as TFLite's max-pool does), so the padding is all-ones words, the
identity of AND.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from ._common import (
    PACKED_DTYPE,
    BnnOpError,
    attr,
    check_choice,
    check_positive_pair,
    expect_dtype,
    make_call,
    register_op,
    static_shape,
    window_output,
)

OP = "relax.bnn.bmaxpool2d"
RULE = "bnn_bmaxpool2d"


def bmaxpool2d(x: relax.Expr, pool_size=(2, 2), strides=(2, 2), padding: str = "VALID") -> relax.Call:
    """Binary max-pool over a packed NHWC tensor."""
    return make_call(
        OP, [x], pool_size=[int(v) for v in pool_size], strides=[int(v) for v in strides], padding=padding
    )


def _geometry(shape, attrs):
    if len(shape) != 4:
        raise BnnOpError(OP, "input", f"expected packed NHWC (4 axes), got shape {shape}")
    pool_h, pool_w = check_positive_pair(OP, "filter_size", attrs["pool_size"])
    stride_h, stride_w = check_positive_pair(OP, "strides", attrs["strides"])
    check_choice(OP, "padding", attrs["padding"], ("SAME", "VALID"))
    out_h, pad_top, _ = window_output(OP, shape[1], pool_h, stride_h, 1, attrs["padding"], "height")
    out_w, pad_left, _ = window_output(OP, shape[2], pool_w, stride_w, 1, attrs["padding"], "width")
    return pool_h, pool_w, stride_h, stride_w, out_h, out_w, pad_top, pad_left


def _attrs(call):
    return {k: attr(call, k) for k in ("pool_size", "strides", "padding")}


def _infer_type(call: relax.Call) -> relax.TensorType:
    shape, dtype = static_shape(OP, "input", call.args[0])
    expect_dtype(OP, "input", dtype, (PACKED_DTYPE,))
    *_, out_h, out_w, _, _ = _geometry(shape, _attrs(call))
    return relax.TensorType([shape[0], out_h, out_w, shape[3]], PACKED_DTYPE)


def bmaxpool2d_ref(x: np.ndarray, attrs: dict) -> np.ndarray:
    """Reference: AND of the words under each window, padding ignored."""
    pool_h, pool_w, stride_h, stride_w, out_h, out_w, pad_top, pad_left = _geometry(list(x.shape), attrs)
    out = np.full((x.shape[0], out_h, out_w, x.shape[3]), -1, dtype=np.int32)
    for i in range(out_h):
        for j in range(out_w):
            rows = slice(max(i * stride_h - pad_top, 0), max(i * stride_h - pad_top + pool_h, 0))
            cols = slice(max(j * stride_w - pad_left, 0), max(j * stride_w - pad_left + pool_w, 0))
            window = x[:, rows, cols, :]
            out[:, i, j, :] = np.bitwise_and.reduce(window.reshape(x.shape[0], -1, x.shape[3]), axis=1)
    return out


def bmaxpool2d_compute(x: te.Tensor, attrs: dict) -> te.Tensor:
    r"""Binary max-pool: :math:`y[n,i,j,c] = \bigwedge_{p,q} x[n, i s_h + p - t, j s_w + q - l, c]` over the window."""
    in_h, in_w = int(x.shape[1]), int(x.shape[2])
    pool_h, pool_w, stride_h, stride_w, out_h, out_w, pad_top, pad_left = _geometry(
        [int(d) for d in x.shape], attrs
    )
    p = te.reduce_axis((0, pool_h), name="p")
    q = te.reduce_axis((0, pool_w), name="q")
    bitwise_and = te.comm_reducer(lambda a, b: a & b, lambda t: tirx.const(-1, t), name="bitwise_and")
    all_ones = tirx.const(-1, PACKED_DTYPE)

    def pooled(n, i, j, c):
        ih, iw = i * stride_h + p - pad_top, j * stride_w + q - pad_left
        if not (pad_top or pad_left) and attrs["padding"] == "VALID":
            return bitwise_and(x[n, ih, iw, c], axis=[p, q])
        inside = tirx.all(ih >= 0, ih < in_h, iw >= 0, iw < in_w)
        value = tirx.if_then_else(
            inside, x[n, tirx.max(tirx.min(ih, in_h - 1), 0), tirx.max(tirx.min(iw, in_w - 1), 0), c], all_ones
        )
        return bitwise_and(value, axis=[p, q])

    return te.compute(
        (int(x.shape[0]), out_h, out_w, int(x.shape[3])), pooled, name="bmaxpool2d", attrs={"schedule_rule": RULE}
    )


def _legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return bb.call_te(bmaxpool2d_compute, call.args[0], attrs=_attrs(call), primfunc_name_hint="bnn_bmaxpool2d")


register_op(OP, "Binary max-pool on bitpacked NHWC input (LceBMaxPool2d).", _infer_type, _legalize)
