"""bnn-tvm: compile binarized neural networks (Larq / LCE models) with Apache TVM.

>>> art = bnn_tvm.compile("model.tflite", target="host")
>>> art.export_library("model.so")
>>> model = bnn_tvm.load("model.so"); y = model(x)
"""

from . import relay_ops  # noqa: F401  (registers relax.bnn.*)
from .build import Artifact, compile
from .runtime import CompiledModel, load

__all__ = ["Artifact", "CompiledModel", "compile", "load"]
