"""Reading a Keras model file without running the code it carries.

The model config is read first, without Keras (a .keras archive's config.json, a .h5 file's model_config, a
SavedModel's Keras metadata): a file whose Lambda layers or serialized lambdas Keras would run, or whose custom
objects name modules Keras would import, is refused naming each such layer unless the caller trusts it
(``trust_model_code``). When Keras cannot rebuild a model, the config says which object it lacks.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from pathlib import Path

from .errors import KerasLoadError, ModelCodeError
from .model_file import checked_model_file

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq needs Keras 2: set before TensorFlow is imported

TRUST_HINT = ("if you trust the file, pass --trust-model-code (command line) or trust_model_code=True (Python), "
              "which run the file's code")
SAVE_HINT = "save it as a SavedModel (model.save(folder)) and compile the folder, or pass the Keras model object"
# Modules a .keras config may name without bringing in code of the file's choosing: Keras imports the module
# a custom object names, which runs that module. __main__ is this process's own script, already running.
SAFE_MODULES = {"keras", "tf_keras", "tensorflow", "larq", "larq_zoo", "builtins", "numpy", "__main__"}


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
