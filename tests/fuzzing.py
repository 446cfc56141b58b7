"""bnn-tvm's own fuzzer: mutated LCE .tflite files and Keras files through `bnn-tvm compile`, each in its own
process with a time limit, classified by what the compiler did.

    python -m tests.fuzzing --cases N --seed S [--families bytes,flatbuffer,keras] [--jobs J] [--keep DIR]

Mutators (all seeded by ``--seed``): byte flips, truncations, insertions and zeroed ranges of real LCE
files; structure-aware edits through TFLite's flatbuffer object API (operator inputs/outputs, opcode indices,
tensor shapes, dtypes, buffers and quantization, subgraph inputs/outputs, builtin options, LCE custom
options decoded and re-encoded as flexbuffers); Keras: corrupted .h5/.keras bytes and edited .keras configs.

Each case runs ``bnn_tvm.cli.main(["compile", ...])`` in a process forked from a worker that has imported
bnn-tvm once (a fresh interpreter costs ~10 s of imports, the compile of these models ~1 s), killed after
``--timeout`` seconds. Outcomes:

- compiled: the .so ran on a seeded random input and agreed with the reference: LCE's interpreter on the
  mutated file (Keras on the mutated Keras file). A mutation that keeps the model valid (a flipped weight
  byte) must compile and agree; so whether a compiled mutant is malformed is the reference's call:
- silent: compiled although the reference rejects the file, disagrees with bnn-tvm's output, or the .so
  fails at run time (the compiler accepted a model it cannot run).
- clear: one ``error:`` line that names the file AND what in it is wrong (operator, tensor, layer, buffer,
  field, offset, ...), without Python internals.
- partial: names the file or the thing, not both.
- vague: raw internals (``struct.error``, ``KeyError: 12``, ...) or neither file nor thing.
- crash: a signal, or a traceback (the CLI prints one only for what it considers a bug in bnn-tvm).
- hang: killed at the time limit.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import io
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUTCOMES = ("compiled", "clear", "partial", "vague", "silent", "crash", "hang")
FAILURES = ("vague", "silent", "crash", "hang")
BASE_CASES = ({"name": "channels32"}, {"name": "zero-padding", "pad_values": 0.0, "channels_in": 33},
              {"name": "int8", "output": "int8", "channels_in": 33, "channels_out": 40},
              {"name": "bmaxpool", "output": "packed", "maxpool": True, "channels_out": 64},
              {"name": "packed-handoff", "output": "packed", "channels_in": 64, "channels_out": 33, "strides": 2})
# Words that say *what* in a model is wrong. Checked as whole words, case-insensitively.
_WHAT = re.compile(r"\b(operators?|op|tensors?|layers?|subgraphs?|buffers?|opcodes?|inputs?|outputs?|fields?|"
                   r"options?|offsets?|tables?|vtables?|vectors?|metadata|bytes?|header|segment|section|attribute|"
                   r"config|weights?|"
                   r"flatbuffer|hdf5|zip|archive|pad_values|strides?|padding|dtype|shape|channels_in)\b", re.I)
_INTERNALS = re.compile(r"struct\.error|unpack_from|KeyError|TypeError|AssertionError|IndexError|AttributeError|"
                        r"NoneType|object is not|is not a valid \w+$|not subscriptable|unhashable|"
                        r"has no attribute|Check failed|InternalError")

_RAW_PHRASES = re.compile(r"unpack_from requires a buffer[^;:]*|a bytes-like object is required[^;:]*|"
                          r"\b\w+Error\b:?[^;]*")


@dataclass
class Case:
    family: str
    mutation: str
    base: str
    path: str  # the mutated file
    reference: str  # "lce" or "keras"


# --------------------------------------------------------------------------------------------------- mutators

def _schema():
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


def make_cases(count: int, seed: int, folder: Path, families=("bytes", "flatbuffer", "keras")) -> list[Case]:
    """``count`` mutated files in ``folder``, spread evenly over ``families``; the same for the same seed."""
    from bnn_tvm import zoo

    rng = random.Random(seed)
    bases = {c["name"]: zoo.cached_tflite(zoo.ConvCase(**c)).read_bytes() for c in BASE_CASES}
    # A stock-converted model: builtin operators with options (CONV_2D's strides, padding, activation).
    stock = zoo.ConvCase("stock-relu", activation="relu", batch_norm=False)
    bases[stock.name] = zoo.cached_stock_tflite(stock).read_bytes()
    schema = _schema() if "flatbuffer" in families else None
    seeds = keras_files(folder) if "keras" in families else None
    cases = []
    for i in range(count):
        family = families[i % len(families)]
        base = rng.choice(sorted(bases))
        if family == "keras":
            mutation, suffix, data = keras_mutants(seeds, rng)
            base, reference = f"keras{suffix}", "keras"
        else:
            mutate = byte_mutants if family == "bytes" else lambda d, r: flatbuffer_mutants(d, r, schema)
            mutation, data = mutate(bases[base], rng)
            suffix, reference = ".tflite", "lce"
        path = folder / f"case{i:05d}{suffix}"
        path.write_bytes(data)
        cases.append(Case(family, mutation, base, str(path), reference))
    return cases


# ------------------------------------------------------------------------------------------------ the worker

def _forked(function, timeout: float, stdout: Path, stderr: Path) -> tuple[str, int]:
    """Run ``function()`` (its return value is the exit code) in a forked child: ("exit", code),
    ("signal", number) or ("hang", -1)."""
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.setpgid(0, 0)
            for fd, target in ((1, stdout), (2, stderr)):
                handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(handle, fd)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
            code = function()
        except BaseException:  # noqa: BLE001 - the child must never return into the worker's loop
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 70)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return ("signal", os.WTERMSIG(status)) if os.WIFSIGNALED(status) else ("exit", os.WEXITSTATUS(status))
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hang", -1


def _random_input(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def _compile_and_run(path: str, work: Path) -> int:
    from bnn_tvm import cli

    so = work / "model.so"
    code = cli.main(["compile", path, "-o", str(so)])
    if code != 0:
        return code
    (work / "compiled").touch()
    import bnn_tvm

    model = bnn_tvm.load(so, threads=1)
    shape, dtype = model.input_signature()
    x = _random_input(shape, dtype)
    y = model(x)
    np.save(work / "x.npy", x)
    np.save(work / "y.npy", np.asarray(y if not isinstance(y, list) else y[0]))
    return 0


def _reference(path: str, kind: str, work: Path) -> int:
    x = np.load(work / "x.npy")
    if kind == "lce":
        from bnn_tvm import zoo

        y = zoo.lce_interpreter(Path(path)).predict(x)
    else:
        import larq  # noqa: F401 - registers Larq's layers and quantizers with Keras
        import tensorflow as tf

        y = tf.keras.models.load_model(path, compile=False)(x).numpy()
    np.save(work / "reference.npy", np.asarray(y if not isinstance(y, list) else y[0]))
    return 0


def classify_rejection(stderr: str, path: str) -> tuple[str, str]:
    """(outcome, the error line) of a compile that exited 1 without a traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if "Traceback (most recent call last)" in stderr:
        return "crash", (lines or [stderr.strip().splitlines()[-1] if stderr.strip() else ""])[-1]
    if not lines:
        return "vague", stderr.strip()[-300:]
    line = lines[-1]
    names_file = path in line or Path(path).name in line
    # A raw detail after a message that names the file and the thing is fine; raw internals alone are not, and
    # their own words ("a buffer of at least ... bytes") do not count as naming the thing.
    names_what = bool(_WHAT.search(_RAW_PHRASES.sub("", line.replace(path, ""))))
    if names_file and names_what:
        return "clear", line
    if _INTERNALS.search(line):
        return "vague", line
    return ("partial" if names_file or names_what else "vague"), line


def run_case(case: Case, timeout: float) -> dict:
    """Compile one mutant in a forked child and classify the outcome."""
    work = Path(tempfile.mkdtemp(prefix="case", dir=os.environ.get("FUZZ_TMP")))
    out, err = work / "stdout", work / "stderr"
    start = time.monotonic()
    status, code = _forked(lambda: _compile_and_run(case.path, work), timeout, out, err)
    result = {"family": case.family, "mutation": case.mutation, "base": case.base, "path": case.path,
              "seconds": round(time.monotonic() - start, 2)}
    stderr = err.read_text(errors="replace")
    if status == "hang":
        return {**result, "outcome": "hang", "message": f"killed after {timeout} s"}
    if status == "signal":
        return {**result, "outcome": "crash", "message": f"signal {code}: {stderr.strip()[-300:]}"}
    if code != 0 and not (work / "compiled").exists():
        outcome, line = classify_rejection(stderr, case.path)
        return {**result, "outcome": outcome, "message": line}
    if not (work / "y.npy").exists():  # compiled, then failed to load or run
        return {**result, "outcome": "silent", "message": f"compiled, then failed at run: {stderr.strip()[-300:]}"}
    status, code = _forked(lambda: _reference(case.path, case.reference, work), timeout, out, err)
    if status != "exit" or code != 0:
        why = err.read_text(errors="replace").strip().splitlines()[-1:] or [status]
        return {**result, "outcome": "silent", "message": f"compiled; {case.reference} rejects it: {why[0][:200]}"}
    got, expected = np.load(work / "y.npy"), np.load(work / "reference.npy")
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return {**result, "outcome": "silent", "message": f"compiled as {got.dtype}{list(got.shape)}, {case.reference} "
                                                          f"gives {expected.dtype}{list(expected.shape)}"}
    scale = max(1.0, float(np.nanmax(np.abs(expected.astype(np.float64)), initial=0)))
    difference = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    if not np.array_equal(np.isnan(got), np.isnan(expected)) or np.nanmax(difference, initial=0) > 1e-3 * scale:
        return {**result, "outcome": "silent",
                "message": f"compiled; output differs from {case.reference} by {np.nanmax(difference, initial=0):.3g}"}
    return {**result, "outcome": "compiled", "message": ""}


def worker(timeout: float) -> None:
    """Read cases (JSON lines) on stdin, answer results (JSON lines) on stdout; imports paid once."""
    import bnn_tvm  # noqa: F401
    from bnn_tvm import cli  # noqa: F401
    from bnn_tvm.frontend import tflite  # noqa: F401

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of the imports must not corrupt the protocol
    for line in sys.stdin:
        case = Case(**json.loads(line))
        if case.reference == "keras":  # once here rather than ~10 s in every forked child
            os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
            import larq  # noqa: F401
            import tensorflow  # noqa: F401
        protocol.write(json.dumps(run_case(case, timeout)) + "\n")


def run_cases(cases: list[Case], jobs: int, timeout: float, say=None) -> list[dict]:
    """Results of ``cases``, run by ``jobs`` worker processes."""
    command = [sys.executable, "-m", "tests.fuzzing", "--worker", "--timeout", str(timeout)]
    root = Path(__file__).resolve().parent.parent
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
               for _ in range(max(1, min(jobs, len(cases))))]
    pending, busy, results = collections.deque(cases), {}, []
    try:
        for w in workers:
            if pending:
                busy[w.stdout.fileno()] = (w, pending.popleft())
                w.stdin.write(json.dumps(vars(busy[w.stdout.fileno()][1])) + "\n"), w.stdin.flush()
        while busy:
            ready, _, _ = select.select(list(busy), [], [])
            for fd in ready:
                w, case = busy.pop(fd)
                line = w.stdout.readline()
                if not line:  # the worker itself died: a crash it could not contain
                    raise RuntimeError(f"fuzz worker died on {case.path} ({case.mutation})")
                results.append(json.loads(line))
                if say:
                    say(results[-1])
                if pending:
                    busy[fd] = (w, pending.popleft())
                    w.stdin.write(json.dumps(vars(busy[fd][1])) + "\n"), w.stdin.flush()
    finally:
        for w in workers:
            w.stdin.close()
            w.wait(timeout=60)
    return results


def table(results: list[dict]) -> str:
    """The issue's table: cases per family and outcome, then the failing cases."""
    families = sorted({r["family"] for r in results})
    head = "| family | cases | " + " | ".join(OUTCOMES) + " | seconds per case |"
    rows = [head, "|" + "---|" * (len(OUTCOMES) + 3)]
    for family in families + ["all"]:
        mine = [r for r in results if family in ("all", r["family"])]
        counts = collections.Counter(r["outcome"] for r in mine)
        rows.append(f"| {family} | {len(mine)} | " + " | ".join(str(counts[o]) for o in OUTCOMES)
                    + f" | {sum(r['seconds'] for r in mine) / max(1, len(mine)):.1f} |")
    rejected = [r for r in results if r["outcome"] in ("clear", "partial", "vague")]
    clear = sum(r["outcome"] == "clear" for r in rejected)
    rows.append(f"\nclear rejections: {clear} of {len(rejected)} ({100 * clear / max(1, len(rejected)):.0f}%)")
    for r in results:
        if r["outcome"] in FAILURES + ("partial",):
            rows.append(f"{r['outcome']:8} {r['family']:10} {r['base']:15} {r['mutation']}: {r['message'][:300]}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default="bytes,flatbuffer,keras")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--keep", help="folder for the mutated files (default: a temporary one)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.timeout)
        return 0
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bnn-tvm-fuzz-"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = make_cases(args.cases, args.seed, folder, tuple(args.families.split(",")))
    results = run_cases(cases, args.jobs, args.timeout,
                        say=lambda r: print(f"{r['outcome']:8} {r['seconds']:6.1f}s {r['mutation']}", flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results))
    return 1 if any(r["outcome"] in FAILURES for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
