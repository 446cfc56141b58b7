"""Import a SavedModel through its traced serving graph: no Keras, and no Python code from the folder.

A SavedModel holds, beside the Keras metadata Keras revives a model from, the TensorFlow graph its
serving signature was traced to (``saved_model.pb``) and the variables' values (``variables/``). This
importer reads both as data: the signature's function and the functions it calls are converted op by op
(:mod:`.tf_graph`), with every variable it reads bound to its saved value as a constant. Nothing is run:
not a Lambda layer's bytecode, not a custom object's module, not even TensorFlow's own loader (which
restores every function of the object graph, a minute for MeliusNet22, to use one).

The graph holds no Larq layers, only what they compute, as the stock TFLite converter sees it: larq's
sign is ``sign(sign(x) + 0.1)``, one-padding a ``PadV2`` with 1.0, the quantized kernel a ``sign`` of a
variable that constant-folds to +-1, a dilated convolution ``SpaceToBatchND`` -> ``Conv2D`` ->
``BatchToSpaceND`` (fused back into one dilated conv2d). ``bnn_tvm.transform``'s ``RecognizeBinaryLayers``
turns those back into binary layers, as it does for stock .tflite files.

The input shapes are fixed first (the batch from ``input_shapes``, 1 by default), so every shape the graph
computes from ``Shape`` (Keras's ``Reshape`` and ``Flatten`` do) is a constant by the time an op needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from ..signature import with_names
from .block_builder import main_function
from .errors import KerasLoadError, UnsupportedModelError
from .input_shapes import resolve_input_shapes
from .model_file import checked_model_file
from .tf_graph import convert_function

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

_CALLS = ("StatefulPartitionedCall", "PartitionedCall")


def from_saved_model_folder(path, input_shapes=None, trust_model_code: bool = False) -> tvm.IRModule:
    """Import a SavedModel folder: with Keras when Keras can and may rebuild it, else through its graph.

    Keras goes first when the folder carries Keras metadata: its importer knows each layer and says which
    quantized layers stay float and why, where the graph route can only recognize patterns. The graph
    (``from_saved_model``) is used when there is no Keras metadata, and when Keras cannot rebuild the model
    (MeliusNet22's Lambda closures fail in Keras's revival) or may not: a model whose Lambda layers would
    run Python code, refused without ``trust_model_code`` (larq-zoo's MeliusNet22 and RealToBinaryNet),
    imports from its graph, which runs none.
    Errors converting a model Keras did rebuild are raised as they are.

    Parameters
    ----------
    path : str or os.PathLike
        The SavedModel folder.
    input_shapes : dict, list or str, optional
        As for ``bnn_tvm.load_model``.
    trust_model_code : bool
        Let Keras run the Python code the folder's Keras metadata carries.

    Raises
    ------
    UnsupportedModelError
        From the graph route, naming the op and function it cannot convert (and why Keras could not
        rebuild the model, when it was tried).
    """
    keras_error = None
    if (Path(path) / "keras_metadata.pb").is_file():
        from .keras import from_keras

        try:
            return from_keras(path, input_shapes, trust_model_code)
        except KerasLoadError as err:
            keras_error = err
    try:
        return from_saved_model(path, input_shapes)
    except UnsupportedModelError as err:
        if keras_error is None:
            raise
        raise UnsupportedModelError(f"{err} (tried because Keras did not rebuild the model: {keras_error})") from err


def from_saved_model(path, input_shapes=None, signature: str = "serving_default") -> tvm.IRModule:
    """Import a SavedModel's ``signature`` from its traced graph and saved variables, without Keras.

    Parameters
    ----------
    path : str or os.PathLike
        The SavedModel folder (``saved_model.pb`` and ``variables/``).
    input_shapes : dict, list or str, optional
        As for ``bnn_tvm.load_model``: the dimensions the signature leaves open (the batch, 1 by default).
    signature : str
        The signature to import.

    Returns
    -------
    tvm.IRModule
        ``main`` takes the signature's inputs (named by their keys) and returns its outputs in the order
        of the traced function's results (one output: a tensor, several: a tuple).

    Raises
    ------
    UnsupportedModelError
        Naming the file and what is missing or malformed (signature, function, variable), or the op
        (type, name and function) the graph importer cannot convert.
    """
    import tensorflow as tf

    path = checked_model_file(path, folder=True)
    meta_graph = _meta_graph(path)
    signatures = meta_graph.signature_def
    if signature not in signatures:
        names = sorted(k for k in signatures if not k.startswith("__"))  # __saved_model_init_op is no model
        raise UnsupportedModelError(f"{path}: no signature {signature!r}; the SavedModel has "
                                    f"{', '.join(names) or 'none'}")
    spec = signatures[signature]
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    outputs = sorted(((*_tensor(spec.outputs[key].name), key) for key in spec.outputs), key=lambda o: o[1])
    callers = {name for name, _, _ in outputs}
    call = nodes.get(next(iter(callers))) if len(callers) == 1 else None
    if call is None or call.op not in _CALLS:
        raise UnsupportedModelError(f"{path}: signature {signature!r}: its outputs do not come from one function "
                                    f"call ({', '.join(spec.outputs[k].name for k in sorted(spec.outputs))})")
    function = call.attr["f"].func.name
    library = meta_graph.functions
    if function not in library:
        raise UnsupportedModelError(f"{path}: signature {signature!r} calls function {function}, which "
                                    "saved_model.pb does not hold")
    where = f"{path}: signature {signature!r}"
    arguments = [name.split(":")[0] for name in call.input if not name.startswith("^")]
    by_node = {_tensor(spec.inputs[key].name)[0]: key for key in spec.inputs}
    inputs = [a for a in arguments if a in by_node]
    if arguments[:len(inputs)] != inputs or len(inputs) != len(spec.inputs):
        raise UnsupportedModelError(f"{where}: the call of {function} does not take the signature's inputs "
                                    f"({', '.join(sorted(spec.inputs))}) first")
    variables = _variables(path, meta_graph, function, len(arguments) - len(inputs), where)

    declared = [(by_node[a], _declared_shape(spec.inputs[by_node[a]])) for a in inputs]
    shapes = resolve_input_shapes(declared, input_shapes, str(path))
    params = [relax.Var(name, relax.TensorType(list(shape), tf.as_dtype(spec.inputs[name].dtype).name))
              for (name, _), shape in zip(declared, shapes, strict=True)]
    bb = relax.BlockBuilder()
    with main_function(bb, params):
        with bb.dataflow():
            results = convert_function(bb, library[function], [*params, *variables], where, library)
            missing = [key for _, index, key in outputs if index >= len(results)]
            if missing:
                raise UnsupportedModelError(f"{where}: output {missing[0]} is result {outputs[-1][1]} of {function}, "
                                            f"which returns {len(results)}")
            picked = [results[index] for _, index, _ in outputs]
            picked = [relax.const(v) if isinstance(v, np.ndarray) else v for v in picked]
            out = bb.emit_output(picked[0] if len(picked) == 1 else relax.Tuple(picked))
        bb.emit_func_output(out)
    return with_names(bb.get(), outputs=[key for _, _, key in outputs])


class _MetaGraph:
    """The parts of a SavedModel's MetaGraphDef this importer reads, each parsed when first asked for.

    protobuf here is its pure-Python implementation, which parses MeliusNet22's 3 MB saved_model.pb in
    40 s; the signature needs a tenth of it (its functions and the variables' object graph nodes), so
    fields are split from the wire format and only those are parsed.
    """

    def __init__(self, raw: dict[int, list[bytes]], source: Path):
        from tensorflow.core.framework import function_pb2, graph_pb2
        from tensorflow.core.protobuf import meta_graph_pb2, saved_object_graph_pb2

        self.source = source
        small = meta_graph_pb2.MetaGraphDef()
        for number in (1, 5):  # meta_info_def, signature_def
            for field in raw.get(number, []):
                small.MergeFromString(field)
        self.tags, self.signature_def = list(small.meta_info_def.tags), small.signature_def
        graph = _split(b"".join(_payloads(raw.get(2, []))), source)  # graph_def
        top = graph_pb2.GraphDef()
        for field in graph.get(1, []):  # its nodes, without the library
            top.MergeFromString(field)
        self.graph_def = top
        library = _split(b"".join(_payloads(graph.get(2, []))), source)
        self.functions = _LazyMap(function_pb2.FunctionDef, source, {
            _string(b"".join(_payloads(_split(f, source).get(1, [])[:1])), 1): f  # signature.name
            for f in _payloads(library.get(1, []))})
        objects = _split(b"".join(_payloads(raw.get(7, []))), source)  # object_graph_def
        self.object_nodes = _LazyList(saved_object_graph_pb2.SavedObject, source, list(_payloads(objects.get(1, []))))
        self.concrete_functions = _LazyMap(saved_object_graph_pb2.SavedConcreteFunction, source, {
            _string(entry, 1): b"".join(_payloads(_split(entry, source).get(2, [])[:1]))
            for entry in _payloads(objects.get(2, []))})


def _meta_graph(path: Path) -> _MetaGraph:
    """The MetaGraph tagged ``serve`` (or the only one) of ``path``'s saved_model.pb."""
    file = checked_model_file(path / "saved_model.pb")
    graphs = [_MetaGraph(_split(payload, file), file)
              for payload in _payloads(_split(file.read_bytes(), file).get(2, []))]
    serving = [g for g in graphs if "serve" in g.tags]
    if not serving and len(graphs) != 1:
        raise UnsupportedModelError(f"{file}: {len(graphs)} meta graphs, none tagged 'serve'")
    return (serving or graphs)[0]


def _varint(data: bytes, i: int, source) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data) or shift > 63:
            raise UnsupportedModelError(f"{source}: not a SavedModel protocol buffer (a truncated or overlong varint)")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def _split(data: bytes, source) -> dict[int, list[bytes]]:
    """The fields of one protobuf message by number, each as its own encoded bytes (tag included), in order:
    parsing one with the message's class reads that field alone."""
    fields: dict[int, list[bytes]] = {}
    i, size = 0, len(data)
    while i < size:
        start = i
        key, i = _varint(data, i, source)
        kind = key & 7
        if kind == 0:
            _, i = _varint(data, i, source)
        elif kind in (1, 5):
            i += 8 if kind == 1 else 4
        elif kind == 2:
            length, i = _varint(data, i, source)
            i += length
        else:
            raise UnsupportedModelError(f"{source}: not a SavedModel protocol buffer (wire type {kind} at byte "
                                        f"{start})")
        if i > size:
            raise UnsupportedModelError(f"{source}: not a SavedModel protocol buffer (a field runs past the end)")
        fields.setdefault(key >> 3, []).append(data[start:i])
    return fields


def _payloads(fields: list[bytes]):
    """The contents of length-delimited fields (their tag and length dropped)."""
    for field in fields:
        _, i = _varint(field, 0, None)
        _, i = _varint(field, i, None)
        yield field[i:]


def _string(message: bytes, number: int) -> str:
    """The first string field ``number`` of an encoded message."""
    fields = _split(message, None).get(number, [])
    return next(_payloads(fields[:1]), b"").decode() if fields else ""


class _LazyMap(dict):
    """Encoded messages by key, parsed (once) when looked up."""

    def __init__(self, message_class, source, encoded: dict):
        super().__init__(encoded)
        self._class, self._source, self._parsed = message_class, source, {}

    def __getitem__(self, key):
        if key not in self._parsed:
            self._parsed[key] = _parse(self._class, super().__getitem__(key), self._source)
        return self._parsed[key]


class _LazyList(list):
    def __init__(self, message_class, source, encoded: list):
        super().__init__(encoded)
        self._class, self._source = message_class, source

    def __getitem__(self, index):
        return _parse(self._class, super().__getitem__(index), self._source)


def _parse(message_class, data: bytes, source):
    from google.protobuf.message import DecodeError

    try:
        return message_class.FromString(data)
    except DecodeError as err:
        raise UnsupportedModelError(f"{source}: not a SavedModel protocol buffer ({message_class.__name__}: "
                                    f"{err})") from err


def _tensor(name: str) -> tuple[str, int]:
    node, _, index = name.partition(":")
    return node, int(index or 0)


def _declared_shape(tensor_info) -> list[int | None]:
    return [None if d.size < 0 else int(d.size) for d in tensor_info.tensor_shape.dim]


def _variables(path: Path, meta_graph, function: str, count: int, where: str) -> list[np.ndarray]:
    """The saved values of the variables ``function`` captures, in the order of its extra arguments.

    The object graph names them (``bound_inputs``, node ids); the checkpoint's own object graph has the
    same node ids and gives each variable's checkpoint key.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    functions, nodes = meta_graph.concrete_functions, meta_graph.object_nodes
    bound = list(functions[function].bound_inputs) if function in functions else []
    if len(bound) != count:
        raise UnsupportedModelError(f"{where}: function {function} captures {count} tensors, the object graph "
                                    f"binds {len(bound)}")
    if not bound:
        return []
    prefix = path / "variables" / "variables"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        checkpoint_graph = trackable_object_graph_pb2.TrackableObjectGraph()
        checkpoint_graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    except Exception as err:  # noqa: BLE001 - TF reports a bad checkpoint with several exception types
        raise UnsupportedModelError(f"{prefix}: the saved variables cannot be read ({err})") from err
    values = []
    for node_id in bound:
        node = nodes[node_id] if node_id < len(nodes) else None
        if node is None or node.WhichOneof("kind") != "variable":
            raise UnsupportedModelError(f"{where}: function {function} captures object {node_id}, which is not a "
                                        "variable; only variables are supported")
        name = node.variable.name
        keys = [a.checkpoint_key for a in checkpoint_graph.nodes[node_id].attributes
                if a.name == "VARIABLE_VALUE"] if node_id < len(checkpoint_graph.nodes) else []
        if not keys or not reader.has_tensor(keys[0]):
            raise UnsupportedModelError(f"{prefix}: no saved value for variable {name} (object {node_id})")
        value = np.asarray(reader.get_tensor(keys[0]))
        shape = [int(d.size) for d in node.variable.shape.dim]
        if list(value.shape) != shape or value.dtype != tf.as_dtype(node.variable.dtype).as_numpy_dtype:
            raise UnsupportedModelError(f"{prefix}: variable {name} is saved as {value.dtype}{list(value.shape)}, "
                                        f"the graph expects {tf.as_dtype(node.variable.dtype).name}{shape}")
        values.append(value)
    return values
