"""Checks a .tflite file before anything reads it.

The flatbuffers Python reader trusts every offset: a truncated or corrupted file reaches the
converter as ``struct.error``, a silently shortened slice, or a tensor index TVM's frontend asserts
on. ``check_tflite`` verifies the flatbuffer the way TFLite's own verifier does (every table,
vtable, vector and string inside the file and aligned, union members known) for every field of
the schema the generated ``tflite`` package reads, then checks what the converter relies on:
indices in range, every operator input computed before it is used, constant buffers of the size
their shape and type need, quantized tensors with their scales and zero points. The first problem
is raised as an ``UnsupportedModelError`` naming the operator, tensor or field.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import re
import struct

import numpy as np

from .errors import UnsupportedModelError

# Bytes per element of each tflite.TensorType whose constant size the shape fixes (STRING, RESOURCE,
# VARIANT and the packed INT4 are left out).
ITEM_SIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4, 16: 2, 18: 2}
TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16",
              8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 13: "resource",
              14: "variant", 15: "uint32", 16: "uint16", 17: "int4", 18: "bfloat16"}
_QUANTIZED = {3: (0, 255), 7: (-32768, 32767), 9: (-128, 127)}  # uint8, int16, int8: zero point range
_INT8 = 9
_SCALARS = {"Bool": 1, "Int8": 1, "Uint8": 1, "Int16": 2, "Uint16": 2, "Int32": 4, "Uint32": 4, "Float32": 4,
            "Int64": 8, "Uint64": 8, "Float64": 8}
# Union fields of the schema and the enum naming their member tables.
_UNIONS = {("Operator", "BuiltinOptions"): "BuiltinOptions", ("Operator", "BuiltinOptions2"): "BuiltinOptions2",
           ("QuantizationParameters", "Details"): "QuantizationDetails",
           ("DimensionMetadata", "ArraySegments"): "SparseIndexVector",
           ("DimensionMetadata", "ArrayIndices"): "SparseIndexVector"}
_ELEMENT = {"subgraphs": "subgraph", "operators": "operator", "tensors": "tensor", "buffers": "buffer",
            "operator_codes": "operator code", "signature_defs": "signature", "metadata": "metadata",
            "inputs": "input", "outputs": "output"}
_ACCESSOR = re.compile(r"    def (\w+)\(self(?:, j)?\):\n((?:        .*\n|\n)+)")


def _join(where: str, field: str) -> str:
    return f"{where}, {field}" if where else field


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


@functools.cache
def _schema(cls: str) -> dict:
    """Slot -> (field name, kind, detail) of a table, read from the generated ``tflite.<cls>`` accessors
    (the code that will read the file), so every field it can read is verified."""
    source = inspect.getsource(importlib.import_module(f"tflite.{cls}"))
    fields = {}
    for name, body in _ACCESSOR.findall(source):
        offset = re.search(r"Offset\((\d+)\)", body)
        if not offset or name.endswith(("AsNumpy", "Length", "IsNone")):
            continue
        slot, target = (int(offset.group(1)) - 4) // 2, re.search(r"from tflite\.(\w+) import", body)
        if ".Union(" in body:
            kind, detail = "union", (f"{name}Type", _UNIONS.get((cls, name)))
        elif "self._tab.Vector(o)" in body:
            if "Indirect(" in body:
                kind, detail = "tables", target.group(1)
            elif "String(" in body:
                kind, detail = "strings", None
            else:
                kind, detail = "vector", int(re.search(r"j \* (\d+)", body).group(1))
        elif "String(o + self._tab.Pos)" in body:
            kind, detail = "string", None
        elif "Indirect(o + self._tab.Pos)" in body:
            kind, detail = "table", target.group(1)
        else:
            flags = re.search(r"number_types\.(\w+)Flags, o \+ self\._tab\.Pos", body)
            if not flags:  # a struct: the schema has none, so a generated class with one is not ours
                raise RuntimeError(f"tflite.{cls}.{name}: field kind not understood")
            kind, detail = "scalar", _SCALARS[flags.group(1)]
        fields[slot] = (name, kind, detail)
    return fields


@functools.cache
def _union_members(enum: str) -> dict[int, str]:
    members = vars(importlib.import_module(f"tflite.{enum}"))[enum]
    return {v: k for k, v in vars(members).items() if isinstance(v, int) and not k.startswith("_") and v}


class _Flatbuffer:
    """Bounds-, alignment- and size-checked walk of the whole flatbuffer from its root."""

    def __init__(self, data: bytes):
        self.data, self.size = data, len(data)
        # Each table and table-vector element costs 1; a well-formed file needs >= 4 bytes for each, so a
        # file of overlapping offsets that would take longer than its size allows is refused, not walked.
        self.budget = self.size // 4 + 64
        self.seen = set()

    def fail(self, where: str, what: str):
        raise UnsupportedModelError(f"{where or 'the model table'}: {what}")

    def check(self, where: str, pos: int, length: int, align: int, what: str):
        if pos < 0 or pos + length > self.size:
            self.fail(where, f"{what} at byte {pos} ({length} bytes) lies outside the file ({self.size} bytes): "
                             "the file is truncated or corrupt")
        if align > 1 and pos % align:
            self.fail(where, f"{what} at byte {pos} is not aligned to {align} bytes: the file is corrupt")

    def u32(self, pos):
        return struct.unpack_from("<I", self.data, pos)[0]

    def u16(self, pos):
        return struct.unpack_from("<H", self.data, pos)[0]

    def offset(self, where, pos, what):
        self.check(where, pos, 4, 4, f"offset to the {what}")
        return pos + self.u32(pos)

    def vector(self, where, pos, item, what="vector"):
        self.check(where, pos, 4, 4, what)
        length = self.u32(pos)
        self.check(where, pos + 4, length * item, 1, f"{what} of {length} x {item} bytes")
        return length

    def string(self, where, pos):
        length = self.vector(where, pos, 1, "string")
        self.check(where, pos + 4 + length, 1, 1, "string terminator")
        if self.data[pos + 4 + length] != 0:
            self.fail(where, f"the string at byte {pos} is not zero-terminated: the file is corrupt")

    def table(self, where: str, pos: int, cls: str):
        if (pos, cls) in self.seen:
            return
        self.seen.add((pos, cls))
        self.spend(where)
        self.check(where, pos, 4, 4, "table")
        vtable = pos - struct.unpack_from("<i", self.data, pos)[0]
        self.check(where, vtable, 4, 2, "vtable")
        vsize, tsize = self.u16(vtable), self.u16(vtable + 2)
        if vsize < 4 or vsize % 2 or tsize < 4:
            self.fail(where, f"vtable at byte {vtable} declares sizes {vsize} and {tsize}, not an even vtable size "
                             "of at least 4 and a table size of at least 4: the file is corrupt")
        self.check(where, vtable, vsize, 2, "vtable")
        self.check(where, pos, tsize, 4, "table")
        schema = _schema(cls)
        slots = {}
        for slot in range((vsize - 4) // 2):
            field = self.u16(vtable + 4 + 2 * slot)
            if field and slot in schema:
                slots[schema[slot][0]] = pos + field
        for name, kind, detail in schema.values():
            if name not in slots:
                continue
            at, here = slots[name], _join(where, _snake(name))
            if kind == "scalar":
                self.check(here, at, detail, detail, "field")
                continue
            target = self.offset(here, at, _snake(name))
            if kind == "string":
                self.string(here, target)
            elif kind == "vector":
                self.vector(here, target, detail)
            elif kind == "table":
                self.table(here, target, detail)
            elif kind in ("tables", "strings"):
                for i in range(self.vector(here, target, 4)):
                    self.spend(here)
                    element = _join(where, f"{_ELEMENT.get(_snake(name), _snake(name))} {i}")
                    item = self.offset(element, target + 4 + 4 * i, "element")
                    if kind == "tables":
                        self.table(element, item, detail)
                    else:
                        self.string(element, item)
            else:
                self.union(here, slots, name, detail, target)

    def union(self, where, slots, name, detail, target):
        type_field, enum = detail
        member = self.data[slots[type_field]] if type_field in slots else 0
        if not member:
            return
        tables = _union_members(enum) if enum else {}
        if member not in tables:
            self.fail(where, f"{_snake(type_field)} is {member}, which is not a {enum} member")
        self.table(where, target, tables[member])

    def spend(self, where):
        self.budget -= 1
        if self.budget < 0:
            self.fail(where, f"more tables than a file of {self.size} bytes can hold: its offsets overlap")


def check_flatbuffer(data: bytes) -> None:
    """Verify the flatbuffer structure of a .tflite file: every table, vtable, vector and string the schema
    can reach lies inside ``data``, aligned, strings zero-terminated, union members known.

    Raises
    ------
    UnsupportedModelError
        Naming the first table or field (e.g. ``subgraph 0, tensor 3, shape``) that is out of bounds.
    """
    if len(data) < 8:
        raise UnsupportedModelError(f"not a TFLite flatbuffer: {len(data)} bytes, too short for a header")
    if data[4:8] != b"TFL3":
        raise UnsupportedModelError(f"not a TFLite flatbuffer: file identifier {bytes(data[4:8])!r}, "
                                    "expected b'TFL3'")
    walker = _Flatbuffer(data)
    walker.table("", walker.u32(0), "Model")


def _op_name(op, codes: dict) -> str:
    return codes.get(op.OpcodeIndex(), f"opcode {op.OpcodeIndex()}")


def opcode_names(model) -> dict[int, str]:
    """Each operator code's op: the builtin's name (``CONV_2D``) or the custom code (``LceBconv2d``)."""
    from tflite.BuiltinOperator import BuiltinOperator

    builtins = {v: k for k, v in vars(BuiltinOperator).items() if isinstance(v, int)}
    names = {}
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.DeprecatedBuiltinCode(), code.BuiltinCode())
        if builtin not in builtins:
            raise UnsupportedModelError(f"operator code {i}: builtin_code {builtin} is not a TFLite operator")
        if builtin == BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            if not custom:
                raise UnsupportedModelError(f"operator code {i}: a CUSTOM operator without a custom_code")
            names[i] = _utf8(custom, f"operator code {i}, custom_code")
        else:
            names[i] = builtins[builtin]
    return names


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UnsupportedModelError(f"{where}: {raw[:40]!r} is not UTF-8 text ({err.reason})") from None


def _tensor_label(subgraph, index: int) -> str:
    raw = subgraph.Tensors(index).Name()
    return f"tensor {index} ({raw.decode('utf-8', 'replace')!r})" if raw else f"tensor {index}"


def _check_tensor(model, subgraph, index: int, where: str, constant_sizes: dict) -> None:
    tensor = subgraph.Tensors(index)
    label = f"{where}{_tensor_label(subgraph, index)}"
    name = tensor.Name()
    if name is not None:
        _utf8(name, f"{label}, name")
    dtype = tensor.Type()
    if dtype not in TYPE_NAMES:
        raise UnsupportedModelError(f"{label}: type {dtype} is not a TFLite tensor type")
    shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    if any(d < 0 for d in shape):
        raise UnsupportedModelError(f"{label}: shape {shape} has a negative dimension (sizes must be 0 or more)")
    buffer = tensor.Buffer()
    if buffer >= model.BuffersLength():
        raise UnsupportedModelError(f"{label}: buffer {buffer}, but the model has {model.BuffersLength()} buffers")
    data = model.Buffers(buffer)
    if data.Offset() > 1:  # data stored after the flatbuffer (models over 2 GB): TVM's frontend ignores it
        raise UnsupportedModelError(f"{label}: buffer {buffer} keeps its data outside the flatbuffer "
                                    f"(offset {data.Offset()}), which bnn-tvm does not read")
    size = data.DataLength()
    constant_sizes[index] = size
    if size and dtype in ITEM_SIZE and tensor.Sparsity() is None:
        expected = math.prod(shape) * ITEM_SIZE[dtype]
        if size != expected:
            raise UnsupportedModelError(
                f"{label}: buffer {buffer} holds {size} bytes, but shape {shape} of {TYPE_NAMES[dtype]} needs "
                f"{expected}")
    _check_quantization(tensor, label, dtype, shape, constant=size > 0)


def _check_quantization(tensor, label: str, dtype: int, shape: list[int], constant: bool) -> None:
    quant = tensor.Quantization()
    scales = quant.ScaleLength() if quant is not None else 0
    zero_points = quant.ZeroPointLength() if quant is not None else 0
    if scales != zero_points:
        raise UnsupportedModelError(f"{label}: quantization has {scales} scales and {zero_points} zero points; "
                                    "TFLite needs one zero point per scale")
    if not scales:
        # int8 is always quantized in TFLite (uint8 and int16 may be plain integers, as an image fed to a CAST).
        if dtype == _INT8 and not constant and math.prod(shape) > 0:
            raise UnsupportedModelError(f"{label}: a {TYPE_NAMES[dtype]} tensor computed at run time needs a "
                                        "quantization scale and zero point; it has none")
        return
    scale, zero_point = quant.ScaleAsNumpy(), quant.ZeroPointAsNumpy()
    if dtype in _QUANTIZED:
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise UnsupportedModelError(f"{label}: quantization scales must be positive, got {scale[:8].tolist()}")
        low, high = _QUANTIZED[dtype]
        if np.any(zero_point < low) or np.any(zero_point > high):
            raise UnsupportedModelError(f"{label}: zero points {zero_point[:8].tolist()} lie outside the "
                                        f"{TYPE_NAMES[dtype]} range [{low}, {high}]")
    if scales > 1:
        axis = quant.QuantizedDimension()
        if not 0 <= axis < len(shape) or shape[axis] != scales:
            raise UnsupportedModelError(f"{label}: {scales} per-channel scales along quantized_dimension {axis} "
                                        f"do not match shape {shape}")


def _check_subgraph(model, s: int, codes: dict) -> None:
    subgraph = model.Subgraphs(s)
    where = f"subgraph {s}, " if s else ""
    count = subgraph.TensorsLength()
    sizes = {}
    for t in range(count):
        _check_tensor(model, subgraph, t, where, sizes)
    names = {}
    for t in range(count):
        name = subgraph.Tensors(t).Name()
        if name and name in names:  # TVM's frontend keys tensors by name: the second would read the first
            raise UnsupportedModelError(f"{where}{_tensor_label(subgraph, t)} has the same name as tensor "
                                        f"{names[name]}")
        if name:
            names.setdefault(name, t)

    def index(value, what, optional=False):
        value = int(value)
        if not (-1 if optional else 0) <= value < count:
            raise UnsupportedModelError(f"{where}{what} is tensor {value}, but the subgraph has {count} tensors")
        return value

    inputs = [index(v, f"input {i}") for i, v in enumerate(subgraph.InputsAsNumpy() if subgraph.InputsLength()
                                                             else [])]
    outputs = [index(v, f"output {i}") for i, v in enumerate(subgraph.OutputsAsNumpy() if subgraph.OutputsLength()
                                                               else [])]
    for i, t in enumerate(inputs):
        if inputs.index(t) != i:  # one tensor cannot be fed twice
            raise UnsupportedModelError(f"{where}input {i} is {_tensor_label(subgraph, t)}, already input "
                                        f"{inputs.index(t)}")
    if s == 0:
        for what, found in (("inputs", inputs), ("outputs", outputs)):
            if not found:
                raise UnsupportedModelError(f"subgraph 0 (the model) has no {what}")
        if not subgraph.OperatorsLength():
            raise UnsupportedModelError("subgraph 0 (the model) has no operators: there is nothing to compile")

    def ready(t):  # usable before any operator runs: a model input, a constant, a variable or empty
        tensor = subgraph.Tensors(t)
        shape = tensor.ShapeAsNumpy() if tensor.ShapeLength() else []
        return sizes[t] > 0 or tensor.IsVariable() or (len(shape) and math.prod(int(d) for d in shape) == 0)

    produced = {t: "a model input" if s == 0 else "a subgraph input" for t in inputs}
    opcodes = model.OperatorCodesLength()
    for o in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(o)
        if op.OpcodeIndex() >= opcodes:
            raise UnsupportedModelError(f"{where}operator {o}: opcode_index {op.OpcodeIndex()}, but the model has "
                                        f"{opcodes} operator codes")
        label = f"{where}operator {o} ({_op_name(op, codes)})"
        if op.BuiltinOptionsType() and op.BuiltinOptions() is None:
            raise UnsupportedModelError(f"{label}: builtin_options_type is {op.BuiltinOptionsType()} but there are "
                                        "no builtin_options")
        for i, t in enumerate(op.InputsAsNumpy() if op.InputsLength() else []):
            t = index(t, f"operator {o} ({_op_name(op, codes)}): input {i}", optional=True)
            if t >= 0 and t not in produced and not ready(t):
                raise UnsupportedModelError(
                    f"{label}: input {i} is {_tensor_label(subgraph, t)}, which holds no data, is not an input "
                    "and no earlier operator computes it")
        for i, t in enumerate(op.OutputsAsNumpy() if op.OutputsLength() else []):
            t = index(t, f"operator {o} ({_op_name(op, codes)}): output {i}")
            if t in produced:
                raise UnsupportedModelError(f"{label}: output {i} is {_tensor_label(subgraph, t)}, which is already "
                                            f"{produced[t]}")
            produced[t] = f"the output of operator {o}"
        for i, t in enumerate(op.IntermediatesAsNumpy() if op.IntermediatesLength() else []):
            index(t, f"operator {o} ({_op_name(op, codes)}): intermediate {i}", optional=True)
    for i, t in enumerate(outputs):
        if t not in produced and not ready(t):
            raise UnsupportedModelError(f"{where}output {i} is {_tensor_label(subgraph, t)}, which no operator "
                                        "computes and which holds no data")


def check_tflite(data: bytes) -> None:
    """Check a whole .tflite file: its flatbuffer structure (``check_flatbuffer``), then what the converter
    relies on in every subgraph.

    Checked: at least one subgraph; the model (subgraph 0) has inputs, outputs and operators; opcode,
    buffer and tensor indices in range (operator inputs may be -1, "absent"); every operator input
    and model output is an input, a constant, a variable or computed by an earlier operator, and no
    tensor is computed twice; shapes non-negative; constant buffers exactly as large as shape and
    type need; tensor names unique UTF-8; quantization with one zero point per scale, positive scales
    and zero points in range (int8, uint8, int16), and a scale on every int8 tensor computed at run time.

    Raises
    ------
    UnsupportedModelError
        For the first problem found, naming the operator (index and op), tensor (index and name) or field.
    """
    import tflite

    check_flatbuffer(data)
    model = tflite.Model.GetRootAsModel(data, 0)
    if not model.SubgraphsLength():
        raise UnsupportedModelError("the model has no subgraphs")
    codes = opcode_names(model)
    for s in range(model.SubgraphsLength()):
        _check_subgraph(model, s, codes)  # on a verified flatbuffer, any other exception is a bug in the check
