"""Float filters that are binary: +-s per output channel, which bconv2d / bdense compute as packed signs
times the multiplier s. Read by every frontend and pass that turns a float layer into a binary one."""

from __future__ import annotations

import numpy as np


def channel_scales(filter_oxx: np.ndarray) -> np.ndarray | None:
    """Per output channel (first axis) the magnitude ``s`` when every weight of it is +-s with s > 0.

    Returns
    -------
    numpy.ndarray or None
        float32 ``[Cout]``, or None when some channel is not of that form (the layer is not binary).
    """
    if filter_oxx.dtype != np.float32 or filter_oxx.size == 0:
        return None
    magnitudes = np.abs(filter_oxx.reshape(filter_oxx.shape[0], -1))
    scales = magnitudes[:, 0]
    if not (np.all(magnitudes == scales[:, None]) and np.all(np.isfinite(scales)) and np.all(scales > 0)):
        return None
    return scales
