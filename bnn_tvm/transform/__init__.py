"""Graph passes over Relax modules holding ``relax.bnn`` ops, shared by every frontend.

``optimize`` runs them in order; each pass is a ``tvm.transform.Pass`` in its own module, with its
own tests, and the compiled result of an optimized module equals that of the unoptimized one (to
float rounding where a pass refolds float constants).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .binary_maxpool import MaxPoolBeforeQuantize
from .bitpacked_output import BitpackedOutput
from .cancel_quantize import CancelQuantizePairs
from .fold_output_transform import FoldOutputTransform
from .fold_scale_into_weights import FoldScaleIntoWeights
from .recognize_binary_layers import RecognizeBinaryLayers


def passes() -> list[tvm.transform.Pass]:
    """The graph passes in the order ``optimize`` runs them."""
    # Binary layers are recognized on folded constants (TVM's TFLite frontend transposes dense weights
    # with an op); the float binarization they replace is left to DeadCodeElimination.
    # Each rewrite reads use counts, so dead code is removed before the next one looks.
    cleanup = [relax.transform.EliminateCommonSubexpr(), relax.transform.DeadCodeElimination()]
    return [
        relax.transform.FoldConstant(),
        RecognizeBinaryLayers(),
        *cleanup,
        FoldOutputTransform(),
        FoldScaleIntoWeights(),
        *cleanup,
        MaxPoolBeforeQuantize(),
        *cleanup,
        BitpackedOutput(),
        CancelQuantizePairs(),
        *cleanup,
    ]


def optimize(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite ``mod`` towards binary kernels: the passes of ``passes()`` in order."""
    return tvm.transform.Sequential(passes())(mod)
