"""Whether a Larq layer is binary, decided from what its quantizers compute, not from their names.

The input quantizer is probed on sample values (it must give -1 for x < 0, else +1: quantize's sign); the kernel
quantizer is applied to the kernel, which must come out +-s per output channel.
"""

from __future__ import annotations

import numpy as np

from ..relay_ops.binary_filter import channel_scales
from ..relay_ops.bitpack import quantize_ref


def _probe_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 100.0, -100.0]
    return np.concatenate([special, rng.standard_normal(52) * 3]).astype(np.float32).reshape(1, 8, 8, 1)


def is_sign(quantizer) -> bool:
    """Whether ``quantizer`` computes exactly quantize's sign: -1 for x < 0, +1 otherwise."""
    if quantizer is None:
        return False
    probe = _probe_values()
    try:
        out = np.asarray(quantizer(probe))
    except Exception:  # noqa: BLE001 - a quantizer that cannot take the probe is not a plain sign
        return False
    return out.shape == probe.shape and np.array_equal(out, np.where(probe < 0, -1.0, 1.0))


def binary_scale(kernel: np.ndarray) -> np.ndarray | None:
    """If every output channel (last axis) of ``kernel`` is +-s with s > 0, those s; else None."""
    return channel_scales(np.ascontiguousarray(np.moveaxis(kernel, -1, 0)))


def quantizer_name(quantizer) -> str:
    return getattr(quantizer, "__name__", None) or type(quantizer).__name__


def pack_filter(kernel_hwio: np.ndarray) -> np.ndarray:
    """HWIO float +-s kernel -> OHWI bitpacked (bit 1 where the weight is negative)."""
    return quantize_ref(np.ascontiguousarray(kernel_hwio.transpose(3, 0, 1, 2)))
