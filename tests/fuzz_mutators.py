"""The fuzzer's mutators (tests/fuzzing.py runs them): seeded edits of real model files.

Byte flips, truncations, insertions and zeroed ranges of real LCE files; structure-aware edits through TFLite's
flatbuffer object API (operator inputs/outputs, opcode indices, tensor shapes, dtypes, buffers and quantization,
subgraph inputs/outputs, builtin options, LCE custom options decoded and re-encoded as flexbuffers); Keras:
corrupted .h5/.keras bytes and edited .keras configs.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import zipfile
from pathlib import Path

import numpy as np


def tflite_schema():
    """TFLite's generated schema with the object API (ModelT), loaded without importing TensorFlow."""
    origin = importlib.util.find_spec("tensorflow").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("_tflite_schema", Path(origin) / "lite/python/schema_py_generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def byte_mutants(data: bytes, rng: random.Random):
    """(mutation name, bytes) pairs: flips, truncations, insertions, zeroed ranges."""
    n = len(data)
    kind = rng.choice(["flip", "flip", "truncate", "insert", "zero", "flip-header"])
    out = bytearray(data)
    if kind in ("flip", "flip-header"):
        count = rng.choice([1, 1, 2, 4, 16])
        limit = min(n, 256) if kind == "flip-header" else n
        for _ in range(count):
            at = rng.randrange(limit)
            out[at] ^= rng.randrange(1, 256)
        return f"{kind} x{count}", bytes(out)
    if kind == "truncate":
        at = rng.choice([rng.randrange(n), rng.randrange(min(n, 64)), n - rng.randrange(1, 64)])
        return f"truncate at {at}", bytes(out[:at])
    if kind == "insert":
        at, size = rng.randrange(n), rng.choice([1, 4, 64])
        return f"insert {size} at {at}", bytes(out[:at]) + rng.randbytes(size) + bytes(out[at:])
    at, size = rng.randrange(n), rng.choice([4, 16, 256])
    out[at:at + size] = bytes(len(out[at:at + size]))
    return f"zero {size} at {at}", bytes(out)


def _flex_edit(raw: bytes, rng: random.Random):
    from flatbuffers import flexbuffers

    options = flexbuffers.Loads(bytes(raw))
    if not isinstance(options, dict) or not options:
        return "custom options replaced by garbage", rng.randbytes(rng.randrange(1, 12))
    key = rng.choice(sorted(options))
    how = rng.choice(["float", "negative", "huge", "remove", "string", "unknown-key", "zero", "garbage"])
    if how == "remove":
        del options[key]
    elif how == "unknown-key":
        options["fuzz_" + key] = 3
    elif how == "garbage":
        return "custom options replaced by garbage", rng.randbytes(len(raw))
    else:
        options[key] = {"float": 0.5, "negative": -3, "huge": 2**31 - 1, "string": "same", "zero": 0}[how]
    return f"custom option {key}: {how}", flexbuffers.Dumps(options)


def flatbuffer_mutants(data: bytes, rng: random.Random, schema):
    """(mutation name, bytes): one structure-aware edit made through the object API and re-packed."""
    import flatbuffers

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    ops, tensors = graph.operators, graph.tensors
    index = rng.choice([-1, len(tensors), len(tensors) + 1000, 2**31 - 1, rng.randrange(len(tensors))])
    edit = rng.choice(["op-input", "op-output", "opcode-index", "shape", "dtype", "buffer", "graph-inputs",
                       "graph-outputs", "no-subgraphs", "no-operators", "custom-options", "custom-options",
                       "custom-options", "builtin-options", "quantization", "output-dtype", "builtin-code",
                       "custom-code", "drop-op", "shape-rank"])
    op = rng.choice(ops)
    n = ops.index(op)
    if edit == "op-input" and op.inputs is not None and len(op.inputs):
        i = rng.randrange(len(op.inputs))
        op.inputs[i] = index
        name = f"operator {n} input {i} -> {index}"
    elif edit == "op-output":
        op.outputs[0] = index
        name = f"operator {n} output 0 -> {index}"
    elif edit == "opcode-index":
        op.opcodeIndex = rng.choice([len(model.operatorCodes), 2**32 - 1, rng.randrange(len(model.operatorCodes))])
        name = f"operator {n} opcode index -> {op.opcodeIndex}"
    elif edit in ("shape", "shape-rank"):
        t = rng.randrange(len(tensors))
        shape = list(tensors[t].shape) if tensors[t].shape is not None else []
        if edit == "shape" and shape:
            shape[rng.randrange(len(shape))] = rng.choice([0, -1, 2, 3, 10**6, 2**31 - 1])
        else:
            shape = shape[:-1] if shape and rng.random() < 0.5 else shape + [2]
        tensors[t].shape = np.array(shape, dtype=np.int32)
        name = f"tensor {t} shape -> {shape}"
    elif edit in ("dtype", "output-dtype"):
        t = graph.outputs[0] if edit == "output-dtype" else rng.randrange(len(tensors))
        tensors[t].type = rng.choice([1, 2, 3, 4, 6, 7, 9, 10, 16, 17, 100])
        name = f"tensor {t} type -> {tensors[t].type}"
    elif edit == "buffer":
        t = rng.randrange(len(tensors))
        tensors[t].buffer = rng.choice([len(model.buffers), 2**32 - 1, 0, rng.randrange(len(model.buffers))])
        name = f"tensor {t} buffer -> {tensors[t].buffer}"
    elif edit == "graph-inputs":
        graph.inputs = np.array(rng.choice([[], [index], [0, 0]]), dtype=np.int32)
        name = f"subgraph inputs -> {list(graph.inputs)}"
    elif edit == "graph-outputs":
        graph.outputs = np.array(rng.choice([[], [index], list(graph.outputs) * 2]), dtype=np.int32)
        name = f"subgraph outputs -> {list(graph.outputs)}"
    elif edit == "no-subgraphs":
        model.subgraphs = []
        name = "no subgraphs"
    elif edit == "no-operators":
        graph.operators = []
        name = "no operators"
    elif edit == "drop-op":
        del ops[n]
        name = f"operator {n} removed"
    elif edit == "custom-options":
        custom = [o for o in ops if o.customOptions is not None and len(o.customOptions)]
        if not custom:
            return flatbuffer_mutants(data, rng, schema)
        op = rng.choice(custom)
        name, raw = _flex_edit(bytes(bytearray(op.customOptions)), rng)
        op.customOptions = np.frombuffer(raw, dtype=np.uint8).copy()
        name = f"operator {ops.index(op)} {name}"
    elif edit == "builtin-options":
        builtin = [o for o in ops if o.builtinOptions is not None]
        if not builtin:
            return flatbuffer_mutants(data, rng, schema)
        op = rng.choice(builtin)
        fields = [k for k, v in vars(op.builtinOptions).items() if isinstance(v, (int, float))]
        if not fields:
            return flatbuffer_mutants(data, rng, schema)
        field = rng.choice(fields)
        setattr(op.builtinOptions, field, rng.choice([0, -1, 7, 100, 2**31 - 1]))
        name = f"operator {ops.index(op)} option {field} -> {getattr(op.builtinOptions, field)}"
    elif edit == "quantization":
        t = rng.randrange(len(tensors))
        tensors[t].quantization = None if rng.random() < 0.5 else schema.QuantizationParametersT()
        name = f"tensor {t} quantization removed"
    elif edit == "builtin-code":
        code = rng.choice(model.operatorCodes)
        code.builtinCode = rng.choice([0, 3, 32, 127, 200, 10000])
        code.deprecatedBuiltinCode = min(code.builtinCode, 127)
        name = f"opcode {model.operatorCodes.index(code)} builtin code -> {code.builtinCode}"
    else:
        custom = [c for c in model.operatorCodes if c.customCode]
        if not custom:
            return flatbuffer_mutants(data, rng, schema)
        code = rng.choice(custom)
        code.customCode = rng.choice([b"LceBconv2d", b"LceQuantize", b"LceDequantize", b"LceBMaxPool2d",
                                      b"LceFuzz", b""])
        name = f"opcode {model.operatorCodes.index(code)} custom code -> {code.customCode.decode()}"
    builder = flatbuffers.Builder(1024)
    try:
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    except TypeError:  # a value the field's type cannot hold (the schema's writer refuses it): another edit
        return flatbuffer_mutants(data, rng, schema)
    return name, bytes(builder.Output())


def keras_files(folder: Path) -> dict[str, Path]:
    """A small Larq model saved as .h5 and .keras (the mutators' seeds)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import larq as lq
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    x = tf.keras.Input((8, 8, 16))
    y = lq.layers.QuantConv2D(16, 3, padding="same", input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                              kernel_constraint="weight_clip", use_bias=False)(x)
    y = tf.keras.layers.BatchNormalization()(y)
    y = tf.keras.layers.GlobalAveragePooling2D()(y)
    y = tf.keras.layers.Dense(4)(y)
    model = tf.keras.Model(x, y)
    paths = {suffix: folder / f"seed{suffix}" for suffix in (".h5", ".keras")}
    for path in paths.values():
        model.save(path)
    return paths


def keras_mutants(paths: dict[str, Path], rng: random.Random):
    """(mutation name, suffix, bytes): corrupted bytes of either file, or an edited .keras config."""
    suffix = rng.choice([".h5", ".keras"])
    data = paths[suffix].read_bytes()
    if suffix == ".h5" or rng.random() < 0.4:
        name, data = byte_mutants(data, rng)
        return f"{suffix} {name}", suffix, data
    archive = zipfile.ZipFile(io.BytesIO(data))
    files = {info.filename: archive.read(info) for info in archive.infolist()}
    config = json.loads(files["config.json"])
    layers = config["config"]["layers"]
    layer = rng.choice(layers)
    edit = rng.choice(["input-none", "class", "kernel", "drop-layer", "lambda", "units", "quantizer", "remove-weights"])
    if edit == "input-none":
        shape = layers[0]["config"]["batch_input_shape"]
        shape[rng.randrange(1, len(shape))] = None
        name = f"input shape -> {shape}"
    elif edit == "class":
        layer["class_name"] = rng.choice(["FuzzLayer", "Conv3D", "Lambda"])
        name = f"layer {layer['name']} class -> {layer['class_name']}"
    elif edit == "kernel" and "kernel_size" in layer["config"]:
        layer["config"]["kernel_size"] = rng.choice([[0, 3], [-1, -1], [100, 100]])
        name = f"layer {layer['name']} kernel_size -> {layer['config']['kernel_size']}"
    elif edit == "units" and "units" in layer["config"]:
        layer["config"]["units"] = rng.choice([0, -4, 5])
        name = f"layer {layer['name']} units -> {layer['config']['units']}"
    elif edit == "quantizer" and "input_quantizer" in layer["config"]:
        layer["config"]["input_quantizer"] = rng.choice(["fuzz_sign", None, 3])
        name = f"layer {layer['name']} input_quantizer -> {layer['config']['input_quantizer']}"
    elif edit == "drop-layer":
        layers.remove(layer)
        name = f"layer {layer['name']} removed"
    elif edit == "remove-weights":
        files = {k: v for k, v in files.items() if not k.endswith(".h5")}
        name = "weights file removed"
    else:
        layer["config"]["fuzz"] = 1
        name = f"layer {layer['name']} unknown config key"
    files["config.json"] = json.dumps(config).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as rewritten:
        for file, content in files.items():
            rewritten.writestr(file, content)
    return f".keras {name}", suffix, out.getvalue()
