"""Import LCE-converted .tflite models into Relax.

LCE's custom ops (LceQuantize, LceDequantize, LceBconv2d, LceBMaxPool2d) become
``relax.bnn.*`` ops; every builtin op goes through TVM's own TFLite converter,
extended by :class:`.tflite_converter.LceOperatorConverter`. The file is verified first
(:mod:`.tflite_check`).

A Larq model converted by the stock TFLite converter has no custom ops: its
binary layers arrive as float ops, which ``bnn_tvm.transform``'s
``RecognizeBinaryLayers`` turns into ``relax.bnn.*`` ops.
"""

from __future__ import annotations

import os

import tvm
from tvm.relax.frontend.tflite import tflite_frontend

from ..signature import with_names
from .block_builder import drop_open_block
from .errors import ModelFileError, UnsupportedModelError, explain
from .model_file import checked_model_file
from .tflite_check import check_tflite
from .tflite_converter import LceOperatorConverter, is_model_error


def from_tflite(model: str | os.PathLike | bytes) -> tvm.IRModule:
    """Import an LCE-converted (or stock-converted) .tflite model, from a path or its bytes, into Relax.

    The file is checked first (``tflite_check.check_tflite``: flatbuffer structure, indices, data
    flow, constant sizes, quantization), so that a malformed file is refused with its first problem
    named rather than converted into something else.

    Raises
    ------
    UnsupportedModelError
        For a malformed model, or an op or option bnn-tvm cannot compile: the message names the operator
        (index and op), tensor (index and name) or field, prefixed with the file's path when given one.
    ModelFileError
        For a path that is missing, unreadable, not a regular file or too large (a ValueError too).

    Any other exception is a bug in bnn-tvm (or TVM), raised as it is with a note naming the model.
    """
    import tflite

    if isinstance(model, (bytes, bytearray, memoryview)):
        data, prefix = bytes(model), ""
    else:
        path = checked_model_file(model)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ModelFileError(f"{model}: cannot be read: {err.strerror}") from None
        prefix = f"{model}: "
    try:
        check_tflite(data)
        graph = tflite.Model.GetRootAsModel(data, 0)
        _refuse_open_sizes(graph)
        return with_names(_convert(graph), *_io_names(graph))
    except UnsupportedModelError as err:
        raise UnsupportedModelError(f"{prefix}{err}") from err
    except Exception as err:
        if not is_model_error(err):
            err.add_note(f"while bnn-tvm converted {model if prefix else 'a .tflite model'}")
            raise
        # Outside any one operator (the graph's inputs and outputs), TVM's frontend checked the model.
        raise UnsupportedModelError(f"{prefix}TVM's TFLite frontend refused the model: {explain(err)}") from err


def _convert(graph) -> tvm.IRModule:
    """TVM's TFLite frontend with LCE's ops; a refused model leaves no open block behind (see block_builder)."""
    converters = []

    def converter(*args):
        converters.append(LceOperatorConverter(*args))
        return converters[-1]

    try:
        return tflite_frontend.from_tflite(graph, op_converter=converter)
    except BaseException:
        for made in converters:
            drop_open_block(made.bb)
        raise


def _refuse_open_sizes(model) -> None:
    """A .tflite converted from a model of open height or width (``Input((None, None, 3))``) declares its
    tensors' shapes for a size of 1 and marks the open ones -1 in their shape signature; TFLite resizes them
    at run time, a compiled model cannot: compiled at the declared shapes, it would answer for a 1x1 image.
    (An open batch is fine: it runs at batch 1, as the declared shapes say.)"""
    graph = model.Subgraphs(0)
    inputs, _ = _io_names(model)
    for i, name in enumerate(inputs):
        tensor = graph.Tensors(graph.Inputs(i))
        signature = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else []
        if any(d < 0 for d in list(signature)[1:]):
            raise UnsupportedModelError(
                f"input {name!r} has an open size (shape signature {list(map(int, signature))}; the file's shapes "
                f"are for {list(map(int, tensor.ShapeAsNumpy()))}): bnn-tvm compiles fixed shapes. Convert the "
                f"model at the size it will run at (e.g. tf.keras.Input((224, 224, 3))), or compile the Keras "
                f"model itself with --input-shapes '{name}:[1,224,224,3]'")


def _io_names(model) -> tuple[list[str], list[str]]:
    """The main subgraph's input and output names: its serving signature's keys (what the Keras model named
    them: ``image``, ``logits``), else the tensors' names (``serving_default_image:0``)."""
    graph = model.Subgraphs(0)
    names = {}
    for s in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(s)
        if signature.SubgraphIndex() == 0:
            for entries, count in ((signature.Inputs, signature.InputsLength()),
                                   (signature.Outputs, signature.OutputsLength())):
                names.update({entries(i).TensorIndex(): (entries(i).Name() or b"").decode(errors="replace")
                              for i in range(count)})
            break

    def name(tensor: int) -> str:
        return names.get(tensor) or (graph.Tensors(tensor).Name() or b"").decode(errors="replace")

    return ([name(graph.Inputs(i)) for i in range(graph.InputsLength())],
            [name(graph.Outputs(i)) for i in range(graph.OutputsLength())])
