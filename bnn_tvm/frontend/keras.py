"""Import Keras / Larq models into Relax, binary layers as ``relax.bnn`` ops.

A layer whose input quantizer is a sign (x < 0 -> -1, else +1: ste_sign, approx_sign, swish_sign) and
whose quantized kernel is +-s per output channel (ste_sign, magnitude_aware_sign, XNOR-Net's scaled
sign, ...) becomes ``quantize`` + ``bconv2d`` / ``bdense`` with ``s`` as the multiplier. Both are
decided from what the quantizers compute, not from their names: the input quantizer is probed on
sample values, the kernel quantizer is applied to the kernel. Any other quantizer is computed in
float, with a warning naming the layer.

The importer emits the plain form (bconv2d with float output, then bias, activation, batch-norm as
separate ops); ``bnn_tvm.transform`` folds them into the binary ops' output transform.
Lambda and TFOpLambda layers are traced and converted op by op (:mod:`.tf_graph`).

Reading a model file runs no code from it unless the caller trusts it (``trust_model_code``): the config
is read first, without Keras, and a file whose Lambda layers or serialized lambdas Keras would run (or
whose custom objects name modules Keras would import) is refused, naming each such layer. A SavedModel
folder is treated alike (its Keras metadata holds the same layer configs); its traced serving graph needs
no Python code, which is the safe route for such models.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .. import relay_ops as ops
from ..relay_ops._common import same_padding
from ..relay_ops.bitpack import quantize_ref
from ..transform.recognize_binary_layers import channel_scales
from ..signature import with_names
from .block_builder import main_function
from .input_shapes import resolve_input_shapes
from .model_file import checked_model_file
from .tf_graph import convert_traced
from .tflite import UnsupportedModelError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq needs Keras 2


class FloatFallbackWarning(UserWarning):
    """A quantized layer is computed in float because one of its quantizers is not binary."""


TRUST_HINT = ("if you trust the file, pass --trust-model-code (command line) or trust_model_code=True (Python), "
              "which run the file's code")
SAVE_HINT = "save it as a SavedModel (model.save(folder)) and compile the folder, or pass the Keras model object"
# Modules a .keras config may name without bringing in code of the file's choosing: Keras imports the module
# a custom object names, which runs that module. __main__ is this process's own script, already running.
SAFE_MODULES = {"keras", "tf_keras", "tensorflow", "larq", "larq_zoo", "builtins", "numpy", "__main__"}


class KerasLoadError(UnsupportedModelError):
    """Keras cannot rebuild the model file (or, for ``ModelCodeError``, may not); the message names the file
    and what is missing. A SavedModel folder's traced graph may still be importable."""


class ModelCodeError(KerasLoadError):
    """The model file carries Python code that rebuilding it would run, and ``trust_model_code`` is off."""


def load_keras_model(source, trust_model_code: bool = False):
    """A tf.keras model from a model object or a .h5, .keras or SavedModel path.

    Parameters
    ----------
    source : tf.keras.Model or path
        A model object is returned as it is.
    trust_model_code : bool
        Run the Python code a model file carries (Lambda layers, serialized lambdas, modules a .keras file
        names). Off, such a file is refused before Keras reads it, naming each layer that carries code, and
        Keras itself loads in safe mode.

    Raises
    ------
    ModelCodeError
        The file carries code and ``trust_model_code`` is off.
    KerasLoadError
        The file is not what its name says, or Keras cannot rebuild the model from it.
    """
    import tensorflow as tf

    if isinstance(source, tf.keras.Model):
        return source
    path = Path(source)
    config = _model_config(path)
    code = model_code(config, imports_modules=path.suffix == ".keras")
    if code and not trust_model_code:
        raise ModelCodeError(f"{path}: loading this model would run Python code it carries: {'; '.join(code)}. "
                             f"bnn-tvm runs none unless told to: {TRUST_HINT}")
    import larq  # noqa: F401 - registers larq's layers and quantizers for deserialization
    import larq_zoo  # noqa: F401 - and larq-zoo's custom objects
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    kwargs = {"safe_mode": not trust_model_code} if path.suffix == ".keras" else {}
    try:
        with SafeModeScope(not trust_model_code):  # .h5 and SavedModel Lambdas too, should one escape the scan
            model = tf.keras.models.load_model(path, compile=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - Keras fails on files it cannot rebuild with any exception type
        hint = "pass the Keras model object instead" if path.is_dir() else SAVE_HINT
        raise KerasLoadError(f"{path}: Keras cannot rebuild the model from this file: {_missing(config, err)}; "
                             f"{hint}") from err
    if not isinstance(model, tf.keras.Model):
        raise KerasLoadError(f"{path}: a SavedModel without Keras metadata, which Keras revives as "
                             f"{type(model).__name__}, not a model; pass the Keras model object instead")
    return model


def from_keras(model, input_shapes=None, trust_model_code: bool = False) -> tvm.IRModule:
    """Import a Keras/Larq model (object or .h5 / .keras / SavedModel path) into Relax.

    Parameters
    ----------
    model : tf.keras.Model or path
        See ``load_keras_model``.
    input_shapes : dict, list or str, optional
        Static shapes of the inputs, ``{name: shape}`` (or one shape for a single-input model, or tvmc's
        ``--input-shapes`` text): they fill the dimensions the model leaves open (variable height and width,
        the batch, 1 by default) and must agree with the rest.
    trust_model_code : bool
        Run Python code the model file carries; see ``load_keras_model``.

    Raises
    ------
    UnsupportedModelError
        Naming the layer (name and class) that cannot be converted, or the input whose shape is unknown.
    """
    where = str(model) if isinstance(model, (str, os.PathLike)) else None
    keras_model = load_keras_model(model, trust_model_code)
    return _KerasImporter(keras_model, input_shapes, where or f"model {keras_model.name}").run()


def _model_config(path: Path):
    """The model config Keras would rebuild from, read without Keras: JSON of a .keras archive's config.json
    or a .h5 file's model_config attribute, or for a SavedModel the list of its Keras metadata nodes (None
    without any)."""
    if path.is_dir():
        checked_model_file(path, folder=True)
        if not (path / "saved_model.pb").is_file():
            raise KerasLoadError(f"{path}: a folder without saved_model.pb, not a SavedModel")
        metadata = path / "keras_metadata.pb"
        if not metadata.is_file():
            return None
        from tf_keras.protobuf import saved_metadata_pb2

        nodes = saved_metadata_pb2.SavedMetadata()
        try:
            nodes.ParseFromString(checked_model_file(metadata).read_bytes())
            return {"layers": [json.loads(node.metadata) for node in nodes.nodes]}
        except Exception as err:  # noqa: BLE001 - protobuf and json raise assorted errors on garbage
            raise KerasLoadError(f"{metadata}: unreadable Keras metadata ({err}); {SAVE_HINT}") from err
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise KerasLoadError(f"{path}: not a Keras model file (.keras, .h5, .hdf5) nor a SavedModel folder")
    checked_model_file(path)
    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise KerasLoadError(f"{path}: not a .keras archive (a zip holding config.json); {SAVE_HINT}")
        try:
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        except (KeyError, ValueError, EOFError, NotImplementedError, RuntimeError, zipfile.BadZipFile, zlib.error,
                OSError) as err:  # a damaged archive: zipfile's errors, and the decompressor's mid-stream
            raise KerasLoadError(f"{path}: a .keras archive without a readable config.json ({err})") from err
    import h5py

    if not h5py.is_hdf5(path):
        raise KerasLoadError(f"{path}: not an HDF5 file, which a .h5 Keras model is; {SAVE_HINT}")
    try:
        with h5py.File(path, "r") as h5:
            text = h5.attrs.get("model_config")
    except OSError as err:
        raise KerasLoadError(f"{path}: a damaged HDF5 file (truncated?), which h5py cannot open: {err}") from err
    if text is None:
        raise KerasLoadError(f"{path}: an HDF5 file without a model_config attribute (weights only, saved with "
                             "save_weights?); save the whole model with model.save")
    try:
        return json.loads(text.decode() if isinstance(text, bytes) else text)
    except ValueError as err:
        raise KerasLoadError(f"{path}: the HDF5 file's model_config attribute is not JSON ({err})") from err


def _walk(node, layer="the model", layer_list=False):
    """Every dict in a model config, with the innermost layer holding it ("layer NAME (CLASS)")."""
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, layer, layer_list)
    elif isinstance(node, dict):
        if layer_list and isinstance(node.get("class_name"), str):
            inner = node.get("config") if isinstance(node.get("config"), dict) else {}
            layer = f"layer {node.get('name', inner.get('name', '?'))} ({node['class_name']})"
        yield layer, node
        for key, value in node.items():
            yield from _walk(value, layer, key == "layers")


def model_code(config, imports_modules: bool) -> list[str]:
    """What in a Keras model config would run Python code from the file when Keras rebuilds it: Lambda layers,
    serialized lambdas and, with ``imports_modules`` (the .keras format imports the module a custom object
    names), modules outside Keras, TensorFlow, larq and larq-zoo that Python would find; one line per layer."""
    import importlib.util

    found: dict[str, str] = {}
    for layer, node in _walk(config):
        class_name, module = node.get("class_name"), node.get("module")
        if class_name == "Lambda":
            found.setdefault(layer, f"{layer}: its function is Python code")
        elif class_name == "__lambda__" or any(key.endswith("type") and value == "lambda"
                                               for key, value in node.items()):
            found.setdefault(layer, f"{layer} holds a serialized Python lambda")
        elif imports_modules and isinstance(class_name, str) and isinstance(module, str) and module:
            root = module.split(".")[0]
            try:
                importable = root not in SAFE_MODULES and importlib.util.find_spec(root) is not None
            except (ImportError, ValueError):
                importable = False
            if importable:
                found.setdefault(layer, f"{layer} names {class_name} from module {module}, which Keras would "
                                        "import (running its code)")
    return list(found.values())


def _missing(config, err: Exception) -> str:
    """The object Keras could not rebuild: the one its message names, found in ``config``, else the first
    custom object of ``config`` that nothing defines, else Keras's message."""
    text = " ".join(str(err).split())
    found = _named_in_message(config, text) or _undefined(config) or _dangling_reference(config)
    if not found and isinstance(err, KeyError) and err.args and isinstance(err.args[0], str):  # a bare KeyError
        found = f"the model's config refers to {err.args[0]!r} (a layer or field) but does not define it"
    return found or text[:400] or type(err).__name__


def _dangling_reference(config) -> str | None:
    """The first layer a functional model's config connects to (an inbound node, a model input or output: a
    ``[name, node, tensor, ...]`` list) that the config does not define: Keras fails on it with a bare
    ``AssertionError`` or ``KeyError``."""
    for _, node in _walk(config):
        if not isinstance(node.get("layers"), list) or "output_layers" not in node:
            continue
        layers = [layer for layer in node["layers"] if isinstance(layer, dict)]
        defined = {layer.get("name") for layer in layers} | {
            layer["config"].get("name") for layer in layers if isinstance(layer.get("config"), dict)}
        connections = [(f"layer {layer.get('name')}", "inbound_nodes", layer.get("inbound_nodes")) for layer in layers]
        connections += [("the model", key, node.get(key)) for key in ("input_layers", "output_layers")]
        for referrer, key, value in connections:
            for name in _references(value):
                if name not in defined:
                    return f"{referrer}'s {key} name layer {name!r}, which the file does not define"
    return None


def _references(value):
    """Layer names in a config's connection lists: every ``[str, int, int, ...]`` list, at any depth."""
    if isinstance(value, list):
        if len(value) >= 3 and isinstance(value[0], str) and all(isinstance(v, int) for v in value[1:3]):
            yield value[0]
        else:
            for item in value:
                yield from _references(item)


def _named_in_message(config, text: str) -> str | None:
    unknown = re.search(r"Unknown ([\w ]+?): '?([\w.]+)'?[.\s]", text)
    if unknown is None:
        return None
    kind, name = unknown.groups()
    # The legacy .h5 reader meets a function saved in the newer format ({"class_name": "function", "config":
    # NAME}) and calls it 'function': the name is in the config, in the layer Keras names.
    failing = re.search(r"deserializing class '(\w+)' using config=\{'name': '([^']+)'", text)
    failing = f"layer {failing[2]} ({failing[1]})" if failing else None
    for layer, node in _walk(config):
        if failing not in (None, layer):
            continue
        if name == "function" and node.get("class_name") == "function" and isinstance(node.get("config"), str):
            return (f"{layer} uses the function {node['config']}, which Keras's .h5 reader cannot look up (unknown "
                    f"{kind}: a function saved in the newer Keras format)")
        if node.get("class_name") == name:
            return f"{layer} uses {name}, an unknown {kind} (a custom object Keras has no definition of)"
    for layer, node in _walk(config):  # named by a string attribute (a quantizer, an activation)
        attribute = next((key for key, value in node.items() if value == name), None)
        if attribute is not None and layer != "the model":
            return f"{layer}: {attribute} {name!r} is an unknown {kind}"
    return f"unknown {kind} {name!r}"


def _undefined(config) -> str | None:
    """The first object of a config in the newer format (which names each object's module) that Keras, larq and
    larq-zoo do not define, without importing any module outside ``SAFE_MODULES``."""
    import importlib
    import importlib.util

    import tensorflow as tf

    for layer, node in _walk(config):
        class_name, module = node.get("class_name"), node.get("module")
        if not isinstance(class_name, str) or not isinstance(module, str) or class_name.startswith("__"):
            continue
        function = class_name == "function"
        name = node.get("config") if function else class_name
        what = f"the function {name}" if function else name
        if not isinstance(name, str) or tf.keras.utils.get_registered_object(
                name if function else node.get("registered_name") or name) is not None:
            continue
        root = module.split(".")[0]
        if root in ("keras", "tf_keras"):
            continue
        if module == "builtins":
            if function and any(hasattr(getattr(tf.keras, kind), name) for kind in (
                    "activations", "constraints", "initializers", "losses", "metrics", "regularizers")):
                continue
            return f"{layer} uses {what}, which Keras does not define (a custom object, not registered)"
        if root not in SAFE_MODULES:
            try:
                installed = importlib.util.find_spec(root) is not None
            except (ImportError, ValueError):
                installed = False
            if not installed:
                return f"{layer} uses {what} from module {module}, which is not installed"
            continue
        try:
            defined = hasattr(importlib.import_module(module), name.split(".")[0])
        except ImportError:
            defined = False
        if not defined:
            return f"{layer} uses {what}, which module {module} does not define"
    return None


# ---------------------------------------------------------------- quantizers


def _probe_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 100.0, -100.0]
    return np.concatenate([special, rng.standard_normal(52) * 3]).astype(np.float32).reshape(1, 8, 8, 1)


def _is_sign(quantizer) -> bool:
    """Whether ``quantizer`` computes exactly quantize's sign: -1 for x < 0, +1 otherwise."""
    if quantizer is None:
        return False
    probe = _probe_values()
    try:
        out = np.asarray(quantizer(probe))
    except Exception:  # noqa: BLE001 - a quantizer that cannot take the probe is not a plain sign
        return False
    return out.shape == probe.shape and np.array_equal(out, np.where(probe < 0, -1.0, 1.0))


def _binary_scale(kernel: np.ndarray) -> np.ndarray | None:
    """If every output channel (last axis) of ``kernel`` is +-s with s > 0, those s; else None."""
    return channel_scales(np.ascontiguousarray(np.moveaxis(kernel, -1, 0)))


def _quantizer_name(quantizer) -> str:
    return getattr(quantizer, "__name__", None) or type(quantizer).__name__


def _pack_filter(kernel_hwio: np.ndarray) -> np.ndarray:
    """HWIO float +-s kernel -> OHWI bitpacked (bit 1 where the weight is negative)."""
    return quantize_ref(np.ascontiguousarray(kernel_hwio.transpose(3, 0, 1, 2)))


# ---------------------------------------------------------------- the importer


def _pair(value) -> tuple[int, int]:
    value = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    return int(value[0]), int(value[1])


def _shape(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


class _KerasImporter:
    def __init__(self, model, input_shapes, where: str):
        import tensorflow as tf

        self.tf = tf
        self.model = model
        self.input_shapes, self.where = input_shapes, where
        self.bb = relax.BlockBuilder()
        self.converters = {
            "InputLayer": None,
            "QuantConv2D": self._conv2d,
            "Conv2D": self._conv2d,
            "QuantDepthwiseConv2D": self._conv2d,
            "DepthwiseConv2D": self._conv2d,
            "QuantDense": self._dense,
            "Dense": self._dense,
            "BatchNormalization": self._batch_norm,
            "Activation": lambda layer, x: self._activation(layer, layer.activation, x),
            "ReLU": self._relu,
            "PReLU": self._prelu,
            "LeakyReLU": lambda layer, x: relax.op.nn.leakyrelu(x, float(layer.alpha)),
            "Softmax": lambda layer, x: relax.op.nn.softmax(x, axis=int(layer.axis)),
            "MaxPooling2D": self._pool,
            "AveragePooling2D": self._pool,
            "GlobalAveragePooling2D": self._global_pool,
            "GlobalMaxPooling2D": self._global_pool,
            "Add": lambda layer, xs: self._fold(relax.op.add, xs),
            "Subtract": lambda layer, xs: relax.op.subtract(*xs),
            "Multiply": lambda layer, xs: self._fold(relax.op.multiply, xs),
            "Maximum": lambda layer, xs: self._fold(relax.op.maximum, xs),
            "Minimum": lambda layer, xs: self._fold(relax.op.minimum, xs),
            "Average": lambda layer, xs: relax.op.divide(
                self._fold(relax.op.add, xs), relax.const(float(len(xs)), "float32")),
            "Concatenate": lambda layer, xs: relax.op.concat(list(xs), axis=int(layer.axis)),
            "ZeroPadding2D": self._zero_padding,
            "Flatten": lambda layer, x: relax.op.reshape(x, [_shape(x)[0], -1]),
            "Reshape": lambda layer, x: relax.op.reshape(x, [_shape(x)[0], *layer.target_shape]),
            "Permute": lambda layer, x: relax.op.permute_dims(x, [0, *layer.dims]),
            "Dropout": lambda layer, x: x,
            "SpatialDropout2D": lambda layer, x: x,
            "GaussianNoise": lambda layer, x: x,
            "Lambda": None,  # traced: see _traced
            "TFOpLambda": None,
        }

    # ------------------------------------------------------------ graph walk

    def run(self) -> tvm.IRModule:
        model = self.model
        names = [tensor.name.split(":")[0] for tensor in model.inputs]
        declared = [[None if d is None else int(d) for d in tensor.shape] for tensor in model.inputs]
        shapes = resolve_input_shapes(list(zip(names, declared, strict=True)), self.input_shapes, self.where)
        params = [relax.Var(name.replace("/", "_"), relax.TensorType(list(shape), tensor.dtype.name))
                  for name, shape, tensor in zip(names, shapes, model.inputs, strict=True)]
        with main_function(self.bb, params):
            with self.bb.dataflow():
                outputs = self._convert_model(model, params)
                result = outputs[0] if len(outputs) == 1 else relax.Tuple(outputs)
                out = self.bb.emit_output(result)
            self.bb.emit_func_output(out)
        return with_names(self.bb.get(), names, model.output_names)

    def _convert_model(self, model, inputs: list[relax.Expr]) -> list[relax.Expr]:
        """Convert a functional (or Sequential) model's graph, node by node in Keras's own order."""
        tf = self.tf
        if not getattr(model, "_is_graph_network", False):
            raise UnsupportedModelError(
                f"model {model.name}: subclassed Keras models have no graph to import; "
                "build it with the functional API or Sequential (with an input shape)")
        values = {id(t): x for t, x in zip(model.inputs, inputs, strict=True)}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input:
                    continue
                layer = node.layer

                def lookup(t):
                    return values[id(t)] if hasattr(t, "_keras_history") else t

                args = tf.nest.map_structure(lookup, node.call_args)
                kwargs = tf.nest.map_structure(lookup, node.call_kwargs)
                outputs = self._convert_layer(layer, args, kwargs)
                for tensor, value in zip(tf.nest.flatten(node.outputs), outputs, strict=True):
                    values[id(tensor)] = value
        return [values[id(t)] for t in model.outputs]

    def _convert_layer(self, layer, args, kwargs) -> list[relax.Expr]:
        kind = type(layer).__name__
        where = f"layer {layer.name} ({kind})"
        if isinstance(layer, self.tf.keras.Model):
            flat = [a for a in self.tf.nest.flatten(args) if isinstance(a, relax.Expr)]
            return self._convert_model(layer, flat)
        if kind in ("Lambda", "TFOpLambda"):
            return self._traced(layer, args, kwargs, where)
        if kind not in self.converters:
            raise UnsupportedModelError(
                f"{where}: unsupported layer; the Keras importer knows {', '.join(sorted(self.converters))} "
                "(and Lambda layers built from TensorFlow ops)")
        data_format = getattr(layer, "data_format", "channels_last")
        if data_format != "channels_last":
            raise UnsupportedModelError(f"{where}: data_format {data_format!r}; only channels_last is supported")
        try:
            out = self.converters[kind](layer, args[0])
            return [self.bb.emit(out) if not isinstance(out, relax.Var) else out]  # emitting infers shapes: may fail
        except UnsupportedModelError:
            raise
        # What TVM 0.27 raises on ops it cannot build (shape inference raises ValueError; there is no tvm.TVMError).
        except (ValueError, TypeError, IndexError, tvm.error.InternalError, tvm.error.OpError,
                tvm.error.DiagnosticError) as err:
            raise UnsupportedModelError(f"{where}: {err}") from err

    def _traced(self, layer, args, kwargs, where) -> list[relax.Expr]:
        tf = self.tf
        flat = tf.nest.flatten((args, kwargs))
        positions = [i for i, a in enumerate(flat) if isinstance(a, relax.Expr)]

        def call(*tensors):
            filled = list(flat)
            for i, t in zip(positions, tensors, strict=True):
                filled[i] = t
            call_args, call_kwargs = tf.nest.pack_sequence_as((args, kwargs), filled)
            return layer(*call_args, **call_kwargs)

        return convert_traced(self.bb, call, [flat[i] for i in positions], where)

    # ------------------------------------------------------------ layers

    def _conv2d(self, layer, x):
        depthwise = "Depthwise" in type(layer).__name__
        kernel = (layer.depthwise_kernel if depthwise else layer.kernel).numpy()
        kernel_quantizer = getattr(layer, "depthwise_quantizer" if depthwise else "kernel_quantizer", None)
        input_quantizer = getattr(layer, "input_quantizer", None)
        if kernel_quantizer is not None:
            kernel = np.asarray(kernel_quantizer(kernel), dtype=np.float32)
        strides, dilation = _pair(layer.strides), _pair(layer.dilation_rate)
        kernel_size = kernel.shape[:2]
        pad_value = float(getattr(layer, "pad_values", 0.0))
        binary_input, scale = _is_sign(input_quantizer), _binary_scale(kernel)
        groups = 1 if depthwise else _shape(x)[-1] // kernel.shape[2]
        # bconv2d packs each group into whole words; other groupings compute the same +-1 products in float.
        packable = not depthwise and (groups == 1 or kernel.shape[2] % 32 == 0)
        if binary_input and scale is not None and packable and pad_value in (0.0, 1.0):
            y = self._bconv2d(layer, x, kernel, scale, strides, dilation, pad_value)
        else:
            self._warn_float(layer, input_quantizer, binary_input, kernel_quantizer, scale)
            x = self._quantize_float(layer, input_quantizer, binary_input, x)
            pads = self._padding(layer.padding, _shape(x), kernel_size, strides, dilation)
            if pad_value != 0.0 and any(pads):
                x = self.bb.emit(relax.op.nn.pad(x, [0, 0, pads[0], pads[2], pads[1], pads[3], 0, 0],
                                                 pad_value=pad_value))
                pads = [0, 0, 0, 0]
            if depthwise:
                weight, layout, groups = kernel.reshape(*kernel_size, -1, 1), "HWOI", _shape(x)[-1]
            else:
                weight, layout = kernel, "HWIO"
            y = relax.op.nn.conv2d(x, relax.const(weight.astype(np.float32)), strides=strides, padding=pads,
                                   dilation=dilation, groups=groups, data_layout="NHWC", kernel_layout=layout)
        return self._bias_and_activation(layer, y)

    def _bconv2d(self, layer, x, kernel, scale, strides, dilation, pad_value):
        channels_in = _shape(x)[-1]
        channels_out = kernel.shape[-1]
        packed = self.bb.emit(ops.quantize(x))
        # SAME that pads nothing (1x1 kernels) is VALID, which keeps fused activations and bitpacked output open.
        pads = self._padding(layer.padding, _shape(x), kernel.shape[:2], strides, dilation)
        padding = "SAME" if any(pads) else "VALID"
        return ops.bconv2d(
            packed, relax.const(_pack_filter(kernel)), channels_in=channels_in,
            multiplier=relax.const(scale), bias=relax.const(np.zeros(channels_out, np.float32)),
            strides=strides, dilations=dilation, padding=padding, pad_value=int(pad_value) if any(pads) else 1)

    def _dense(self, layer, x):
        kernel = layer.kernel.numpy()
        kernel_quantizer = getattr(layer, "kernel_quantizer", None)
        input_quantizer = getattr(layer, "input_quantizer", None)
        if kernel_quantizer is not None:
            kernel = np.asarray(kernel_quantizer(kernel), dtype=np.float32)
        binary_input, scale = _is_sign(input_quantizer), _binary_scale(kernel)
        leading = _shape(x)[:-1]
        if len(leading) > 1:
            x = self.bb.emit(relax.op.reshape(x, [-1, _shape(x)[-1]]))
        if binary_input and scale is not None:
            packed = self.bb.emit(ops.quantize(x))
            y = ops.bdense(packed, relax.const(quantize_ref(np.ascontiguousarray(kernel.T))),
                           channels_in=kernel.shape[0], multiplier=relax.const(scale),
                           bias=relax.const(np.zeros(kernel.shape[1], np.float32)))
        else:
            self._warn_float(layer, input_quantizer, binary_input, kernel_quantizer, scale)
            x = self._quantize_float(layer, input_quantizer, binary_input, x)
            y = relax.op.matmul(x, relax.const(kernel.astype(np.float32)))
        if len(leading) > 1:
            y = relax.op.reshape(self.bb.emit(y), [*leading, kernel.shape[1]])
        return self._bias_and_activation(layer, y)

    def _warn_float(self, layer, input_quantizer, binary_input, kernel_quantizer, scale) -> None:
        reasons = []
        if input_quantizer is not None and not binary_input:
            reasons.append(f"input quantizer {_quantizer_name(input_quantizer)} is not a binary sign")
        if kernel_quantizer is not None and scale is None:
            reasons.append(f"kernel quantizer {_quantizer_name(kernel_quantizer)} is not binary")
        if reasons:
            warnings.warn(f"layer {layer.name} ({type(layer).__name__}) is computed in float: "
                          + "; ".join(reasons), FloatFallbackWarning, stacklevel=2)

    def _quantize_float(self, layer, quantizer, binary_input, x):
        if quantizer is None:
            return x
        if binary_input:
            one = relax.const(1.0, "float32")
            return self.bb.emit(relax.op.where(relax.op.less(x, relax.const(0.0, "float32")),
                                               relax.op.negative(one), one))
        where = f"layer {layer.name} ({type(layer).__name__}), input quantizer {_quantizer_name(quantizer)}"
        return convert_traced(self.bb, quantizer, [x], where)[0]

    def _bias_and_activation(self, layer, y):
        if getattr(layer, "use_bias", False):
            y = relax.op.add(self.bb.emit(y), relax.const(layer.bias.numpy().astype(np.float32)))
        return self._activation(layer, layer.activation, y)

    def _activation(self, layer, activation, x):
        name = getattr(activation, "__name__", str(activation))
        if name == "linear":
            return x
        x = self.bb.emit(x) if not isinstance(x, relax.Var) else x
        simple = {
            "relu": relax.op.nn.relu,
            "sigmoid": relax.op.sigmoid,
            "tanh": relax.op.tanh,
            "softmax": lambda t: relax.op.nn.softmax(t, axis=-1),
            "relu6": lambda t: relax.op.clip(t, 0, 6),
            "hard_tanh": lambda t: relax.op.clip(t, -1, 1),
            "swish": relax.op.nn.silu,
            "silu": relax.op.nn.silu,
        }
        if name in simple:
            return simple[name](x)
        where = f"layer {layer.name} ({type(layer).__name__}), activation {name}"
        return convert_traced(self.bb, activation, [x], where)[0]

    def _relu(self, layer, x):
        max_value = None if layer.max_value is None else float(layer.max_value)
        slope, threshold = float(layer.negative_slope), float(layer.threshold)
        if slope == 0.0 and threshold == 0.0:
            return relax.op.nn.relu(x) if max_value is None else relax.op.clip(x, 0, max_value)
        return convert_traced(self.bb, layer, [x], f"layer {layer.name} (ReLU)")[0]

    def _prelu(self, layer, x):
        alpha = relax.const(layer.alpha.numpy().astype(np.float32))
        negative = relax.op.multiply(alpha, relax.op.minimum(x, relax.const(0.0, "float32")))
        return relax.op.add(relax.op.nn.relu(x), negative)

    def _batch_norm(self, layer, x):
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        rank = len(_shape(x))
        if [a % rank for a in axes] != [rank - 1]:
            raise UnsupportedModelError(f"layer {layer.name} (BatchNormalization): axis {layer.axis}; "
                                        "only the channel axis (last) is supported")
        channels = _shape(x)[-1]
        gamma = layer.gamma.numpy() if layer.scale else np.ones(channels, np.float32)
        beta = layer.beta.numpy() if layer.center else np.zeros(channels, np.float32)
        # As tf.nn.batch_normalization computes it: x * (gamma * rsqrt(var + eps)) + (beta - mean * that).
        inv = (gamma / np.sqrt(layer.moving_variance.numpy() + np.float32(layer.epsilon))).astype(np.float32)
        shift = (beta - layer.moving_mean.numpy() * inv).astype(np.float32)
        return relax.op.add(self.bb.emit(relax.op.multiply(x, relax.const(inv))), relax.const(shift))

    def _pool(self, layer, x):
        pool, strides = _pair(layer.pool_size), _pair(layer.strides)
        pads = self._padding(layer.padding, _shape(x), pool, strides, (1, 1))
        if type(layer).__name__ == "MaxPooling2D":
            return relax.op.nn.max_pool2d(x, pool, strides, pads, layout="NHWC")
        # Keras averages over the window's inside only.
        return relax.op.nn.avg_pool2d(x, pool, strides, pads, layout="NHWC", count_include_pad=False)

    def _global_pool(self, layer, x):
        reduce = relax.op.mean if "Average" in type(layer).__name__ else relax.op.max
        return reduce(x, [1, 2], keepdims=bool(getattr(layer, "keepdims", False)))

    def _zero_padding(self, layer, x):
        (top, bottom), (left, right) = layer.padding
        return relax.op.nn.pad(x, [0, 0, int(top), int(bottom), int(left), int(right), 0, 0])

    @staticmethod
    def _padding(padding: str, shape, kernel, strides, dilation) -> list[int]:
        """[top, left, bottom, right] of Keras's ``same`` / ``valid``."""
        if padding == "valid":
            return [0, 0, 0, 0]
        _, top, bottom = same_padding(shape[1], kernel[0], strides[0], dilation[0])
        _, left, right = same_padding(shape[2], kernel[1], strides[1], dilation[1])
        return [top, left, bottom, right]

    @staticmethod
    def _fold(op, xs):
        out = xs[0]
        for x in xs[1:]:
            out = op(out, x)
        return out
