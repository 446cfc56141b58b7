"""Bitpacked output: ``quantize(bconv2d(...))`` becomes a bconv2d writing bits through thresholds.

When the only reader of a float binary conv/dense is ``quantize``, the op can write the sign bits
directly: bit ``accum > threshold[o]``, as LCE does between binary layers. The float output
``y(accum)`` is monotone in ``accum`` (non-increasing for ``m > 0``), so the bits ``y < 0`` are an
upper set of ``accum``. Channels with ``m < 0`` have their filter bits flipped, which maps ``accum``
to ``K - accum`` and makes them non-increasing too. The thresholds come from evaluating the op's own
float formula at every ``accum`` in ``0..K``, so the packed bits equal what quantize would have
read, bit for bit, rounding included.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..relay_ops import PACKED_DTYPE
from ..relay_ops._output_transform import scaled_output_ref
from ..relay_ops.bconv2d import Conv2dGeometry
from ..relay_ops.bitpack import quantize_ref, unpack_bits
from ._rewrite import BINARY_MAC_OPS, Graph, attrs_of, constant, op_name, remake, rewrite_calls


def _depth_and_bits(mac: relax.Call, attrs: dict) -> tuple[int, int]:
    """``K`` (bits per output) and the number of valid bits per filter row (per tap for bconv2d)."""
    w_shape = [int(d) for d in mac.args[1].ty.shape]
    if op_name(mac) == "relax.bnn.bdense":
        return attrs["channels_in"], attrs["channels_in"]
    geometry = Conv2dGeometry([int(d) for d in mac.args[0].ty.shape], w_shape, attrs)
    return geometry.depth, geometry.channels_in_per_group


def _flip_channels(packed_filter: np.ndarray, channels: np.ndarray, bits: int) -> np.ndarray:
    """The filter with the valid bits of output channels ``channels`` inverted (+-1 negated)."""
    words = packed_filter.shape[-1]
    unpacked = unpack_bits(packed_filter, words * 32)[..., :bits]
    unpacked[channels] = ~unpacked[channels]
    return quantize_ref(np.where(unpacked, -1.0, 1.0).astype(np.float32))


def thresholds_for(attrs: dict, depth: int, multiplier: np.ndarray, bias: np.ndarray,
                   flipped: np.ndarray) -> np.ndarray | None:
    """Per channel, the ``t`` with ``y < 0  <=>  accum > t`` over ``accum`` in ``0..K``, or None if no such ``t``.

    ``y`` is the op's float output as it stands (its own rounding); for the ``flipped`` channels the
    new op's ``accum`` is ``K - accum``.
    """
    accum = np.arange(depth + 1, dtype=np.int64)[:, None].repeat(multiplier.shape[0], axis=1)
    negative = scaled_output_ref(accum, {**attrs, "out_dtype": "float32"}, depth, multiplier, bias) < 0
    negative[:, flipped] = negative[::-1, flipped]
    thresholds = depth - negative.sum(axis=0)
    if not np.array_equal(negative, accum > thresholds[None, :]):
        return None
    return thresholds.astype(np.int32)


def _rewrite(call: relax.Call, graph: Graph) -> relax.Call | None:
    if op_name(call) != "relax.bnn.quantize" or attrs_of(call)["zero_point"] != 0:
        return None
    mac = graph.sole_producer(call.args[0], *BINARY_MAC_OPS)
    if mac is None:
        return None
    attrs = attrs_of(mac)
    if attrs["out_dtype"] != "float32" or attrs.get("padding") == "SAME" and attrs.get("pad_value") == 0:
        return None  # zero-padding's correction varies per pixel: no per-channel threshold exists (nor in LCE)
    packed_filter, multiplier, bias = (constant(a) for a in mac.args[1:4])
    if packed_filter is None or multiplier is None or bias is None:
        return None
    depth, bits = _depth_and_bits(mac, attrs)
    flipped = np.flatnonzero(multiplier < 0)
    thresholds = thresholds_for(attrs, depth, multiplier, bias, flipped)
    if thresholds is None:
        return None
    if flipped.size:
        packed_filter = _flip_channels(packed_filter, flipped, bits)
    return remake(mac, [mac.args[0], relax.const(packed_filter), relax.const(thresholds)], out_dtype=PACKED_DTYPE)


def BitpackedOutput():  # noqa: N802 - TVM's pass naming
    """The pass: see the module docstring."""
    return rewrite_calls(_rewrite, "bnn_tvm.BitpackedOutput")
