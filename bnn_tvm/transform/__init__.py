"""Graph passes over Relax modules holding ``relax.bnn`` ops, shared by every frontend.

``optimize`` runs them in order; each pass is a ``tvm.transform.Pass`` in its own module, with its
own tests, and the compiled result of an optimized module equals that of the unoptimized one.
"""

from __future__ import annotations

import tvm
from tvm import relax


def passes() -> list[tvm.transform.Pass]:
    """The graph passes in the order ``optimize`` runs them."""
    return [relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]


def optimize(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite ``mod`` towards binary kernels: the passes of ``passes()`` in order."""
    return tvm.transform.Sequential(passes())(mod)
