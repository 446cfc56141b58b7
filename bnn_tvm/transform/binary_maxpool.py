"""Max-pool before bitpacking: ``quantize(max_pool2d(x))`` becomes ``bmaxpool2d(quantize(x))``.

Exact: the sign bit of a max is the AND of the sign bits (the max is negative only if every value
is), and max_pool2d's padding never wins a max, as bmaxpool2d's padding never clears a bit. The
binary pool reads 32x fewer bytes; the float pool stays only if something else reads it.
"""

from __future__ import annotations

from tvm import relax

from .. import relay_ops as ops
from ..relay_ops._common import same_padding
from ._rewrite import Graph, attrs_of, op_name, rewrite_calls


def _window_padding(pool, x_shape, attrs) -> str | None:
    """``VALID`` or ``SAME`` if max_pool2d's explicit padding is one of them, else None."""
    pads = [int(p) for p in attrs.padding]
    if not any(pads):
        return "VALID"
    same = []
    for axis in (0, 1):
        _, before, after = same_padding(x_shape[1 + axis], int(attrs.pool_size[axis]), int(attrs.strides[axis]), 1)
        same.append((before, after))
    return "SAME" if pads == [same[0][0], same[1][0], same[0][1], same[1][1]] else None


def _rewrite(call: relax.Call, graph: Graph) -> relax.Call | None:
    if op_name(call) != "relax.bnn.quantize" or attrs_of(call)["zero_point"] != 0:
        return None
    pool = graph.producer(call.args[0])
    if pool is None or op_name(pool) != "relax.nn.max_pool2d":
        return None
    attrs, x = pool.attrs, pool.args[0]
    x_shape = [int(d) for d in x.ty.shape]
    if (attrs.layout != "NHWC" or bool(attrs.ceil_mode) or any(int(d) != 1 for d in attrs.dilation)
            or str(x.ty.dtype) != "float32"):
        return None
    padding = _window_padding(pool, x_shape, attrs)
    if padding is None:
        return None
    return ops.bmaxpool2d(ops.quantize(x), pool_size=[int(p) for p in attrs.pool_size],
                          strides=[int(s) for s in attrs.strides], padding=padding)


def MaxPoolBeforeQuantize():  # noqa: N802 - TVM's pass naming
    """The pass: see the module docstring."""
    return rewrite_calls(_rewrite, "bnn_tvm.MaxPoolBeforeQuantize")
