"""bnn-tvm: compile binarized neural networks (Larq / LCE models) with Apache TVM.

>>> art = bnn_tvm.compile("model.tflite", target="host")
>>> art.export_library("model.so")
>>> model = bnn_tvm.load("model.so"); y = model(x)

Importing the package loads nothing else: TVM (and with it ``relax.bnn.*``) is imported on the first use of
``compile`` or ``load``, so that ``bnn-tvm --help`` answers at once. Nothing here changes the environment.
"""

import importlib

# name -> the module defining it
_EXPORTS = {"Artifact": "build", "compile": "build", "CompiledModel": "runtime", "load": "runtime"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bnn_tvm' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
