"""Import LCE-converted .tflite models into Relax.

LCE's custom ops (LceQuantize, LceDequantize, LceBconv2d, LceBMaxPool2d) become
``relax.bnn.*`` ops; every builtin op goes through TVM's own TFLite converter,
which this module extends by subclassing its ``OperatorConverter`` (and corrects
where TVM 0.27's conversion does not run: SPACE_TO_BATCH_ND, BATCH_TO_SPACE_ND).

A Larq model converted by the stock TFLite converter has no custom ops: its
binary layers arrive as float ops, which ``bnn_tvm.transform``'s
``RecognizeBinaryLayers`` turns into ``relax.bnn.*`` ops.
"""

from __future__ import annotations

import contextlib
import os
import traceback

import numpy as np
import tvm
from flatbuffers import flexbuffers
from tvm.relax.frontend.tflite import tflite_frontend

from .. import relay_ops as ops
from ..relay_ops import PACKED_DTYPE
from ..signature import with_names
from .block_builder import drop_open_block
from .model_file import ModelFileError, checked_model_file
from .tflite_check import TYPE_NAMES, UnsupportedModelError, check_tflite, opcode_names

# tflite.TensorType values this importer reads.
_TFLITE_DTYPES = {0: "float32", 2: "int32", 9: "int8"}
# tflite.Padding and tflite.ActivationFunctionType, as LCE stores them in its options.
_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}

# The custom options LCE's converter writes for each op (all of them, always): name -> allowed values,
# as a range of integers or an enum. Checked as LCE's kernels check them, never coerced.
_POSITIVE = range(1, 2**31)
_BCONV_OPTIONS = {
    "channels_in": _POSITIVE, "dilation_height_factor": _POSITIVE, "dilation_width_factor": _POSITIVE,
    "fused_activation_function": _ACTIVATION, "pad_values": {0: "0", 1: "1"}, "padding": _PADDING,
    "stride_height": _POSITIVE, "stride_width": _POSITIVE,
}
_BMAXPOOL_OPTIONS = {"filter_height": _POSITIVE, "filter_width": _POSITIVE, "padding": _PADDING,
                     "stride_height": _POSITIVE, "stride_width": _POSITIVE}
# Element types a converted Relax expression is compared with: those TFLite and Relax name alike.
_COMPARABLE_DTYPES = {"float16", "float32", "float64", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                      "uint32", "uint64"}


class LceOperatorConverter(tflite_frontend.OperatorConverter):
    """TVM's TFLite converter plus LCE's custom ops."""

    _SUPPORTED_QUANTIZED_OPS = tflite_frontend.OperatorConverter._SUPPORTED_QUANTIZED_OPS | {"CUSTOM"}

    def __init__(self, model, subgraph, exp_tab, ctx, conversion_state=None):
        super().__init__(model, subgraph, exp_tab, ctx, conversion_state)
        self.allow_custom_ops = True
        self.custom_converters = {
            "LceQuantize": self.convert_lce_quantize,
            "LceDequantize": self.convert_lce_dequantize,
            "LceBconv2d": self.convert_lce_bconv2d,
            "LceBMaxPool2d": self.convert_lce_bmaxpool2d,
        }
        self.convert_map["CUSTOM"] = self.convert_lce_custom
        # TVM 0.27 emits these as calls of TE functions that do not exist at run time ("topi.nn.*").
        self.convert_map["SPACE_TO_BATCH_ND"] = self.convert_space_to_batch_nd
        self.convert_map["BATCH_TO_SPACE_ND"] = self.convert_batch_to_space_nd
        self._current_index = -1

    # ------------------------------------------------------------ checks

    def check_unsupported_ops(self):
        """Fail on the first unsupported op, naming it and its index, before converting anything."""
        for index in range(self.subgraph.OperatorsLength()):
            op = self.subgraph.Operators(index)
            code = self.get_op_code_str(op)
            self._current_index = index
            with self._operator_errors(index):  # TVM's check below reads every operator's tensors
                self.get_input_tensors(op), self.get_output_tensors(op)
            if code == "CUSTOM":
                custom = self._custom_code(op)
                if custom not in self.custom_converters:
                    raise UnsupportedModelError(
                        f"operator {index} is the custom op {custom!r}, which bnn-tvm does not support; "
                        f"supported custom ops: {', '.join(sorted(self.custom_converters))}"
                    )
            elif code not in self.convert_map:
                raise UnsupportedModelError(
                    f"operator {index} is the TFLite builtin {code}, which TVM's TFLite frontend does not "
                    f"support; supported: the LCE ops ({', '.join(sorted(self.custom_converters))}) and "
                    f"TVM's builtins ({', '.join(sorted(k for k in self.convert_map if k != 'CUSTOM'))})"
                )
        self._check_operator_codes()
        super().check_unsupported_ops()

    def _check_operator_codes(self):
        """TFLite resolves every operator code when it loads a file, used or not (LCE's converter leaves unused
        ones), and refuses the file when one names an op it lacks: so does bnn-tvm, for ops it cannot convert."""
        for i, name in opcode_names(self.model).items():
            supported = name in self.custom_converters or name in self.convert_map
            if not supported:
                raise UnsupportedModelError(f"operator code {i} is {name!r}, which bnn-tvm cannot convert (no operator "
                                            f"uses it, but TFLite would need it to load the file)")

    def convert_op_to_relax(self):
        for index in range(self.subgraph.OperatorsLength()):
            self._current_index = index
            with self._operator_errors(index):
                self._convert_one(index)

    @contextlib.contextmanager
    def _operator_errors(self, index):
        """Give any error raised while converting operator ``index`` its index and op name.

        Errors of the relax.bnn ops' shape inference cross TVM's C++ BlockBuilder and come back as
        RuntimeError (their BnnOpError type is lost); TVM's frontend also fails with bare AssertionErrors.
        """
        try:
            yield
        except UnsupportedModelError:
            raise
        except (tvm.error.OpNotImplemented, NotImplementedError) as err:
            raise UnsupportedModelError(f"operator {index} ({self._describe(index)}): {err}") from err
        except Exception as err:  # noqa: BLE001 - whatever TVM raises, the user needs to know where
            raise UnsupportedModelError(f"operator {index} ({self._describe(index)}): {_explain(err)}") from err

    def _convert_one(self, index):
        op = self.subgraph.Operators(index)
        code = self.get_op_code_str(op)
        ret = self.convert_map[code](op=op)
        if ret is None:
            return
        ret = self.bb.normalize(ret)
        outputs = self.get_output_tensors(op)
        self._check_output_dtypes(ret, outputs, index)
        if len(outputs) == 1:
            ret = self._with_declared_shape(ret, outputs[0], index)
            self.exp_tab.set_expr(tflite_frontend.get_tensor_name(self.subgraph, outputs[0].tensor_idx), ret)
        else:
            for i, tensor in enumerate(outputs):
                self.exp_tab.set_expr(tflite_frontend.get_tensor_name(self.subgraph, tensor.tensor_idx), ret[i])

    def _check_output_dtypes(self, ret, outputs, index):
        """Refuse an output whose declared type the converted op does not compute (a model saying float16
        or int8 where the op computes float32): TFLite's kernels never convert implicitly, its interpreter
        refuses such a model, and casting would invent semantics the file does not have."""
        ty = ret.ty
        types = list(ty.fields) if isinstance(ty, tvm.relax.TupleType) else [ty]
        for i, (tensor, actual) in enumerate(zip(outputs, types)):
            declared = TYPE_NAMES.get(tensor.tensor.Type())
            if (declared in _COMPARABLE_DTYPES and isinstance(actual, tvm.relax.TensorType)
                    and str(actual.dtype) in _COMPARABLE_DTYPES and str(actual.dtype) != declared):
                name = tensor.tensor.Name()
                raise UnsupportedModelError(
                    f"operator {index} ({self._describe(index)}): output {i} is tensor {tensor.tensor_idx}"
                    f"{f' ({name.decode()!r})' if name else ''}, declared {declared}, but the operator computes "
                    f"{actual.dtype}; TFLite does not convert types between operators, so the model is "
                    "inconsistent (bnn-tvm refuses it rather than cast)")

    def _with_declared_shape(self, expr, tensor, index):
        """Hold TVM's converters to the output shape the .tflite declares.

        (TVM 0.27's FULLY_CONNECTED keeps a 4-D input's leading axes, [1, 1, 1, N] where TFLite says
        [1, N].) The same shape but for axes of size 1: reshape; otherwise fail rather than compute something
        else (TFLite computes its own output shapes, so a reshape to another declared shape would change the
        model).
        """
        declared = [int(d) for d in tensor.tensor.ShapeAsNumpy()] if tensor.tensor.ShapeLength() else None
        ty = expr.ty
        if not declared or not isinstance(ty, tvm.relax.TensorType) or ty.shape is None:
            return expr
        actual = [int(d) for d in ty.shape.values] if all(
            isinstance(d, tvm.tirx.IntImm) for d in ty.shape.values) else None
        if actual is None or actual == declared:
            return expr
        # A dynamic batch (-1 in the signature) is stored as 1 even where the op changes it
        # (SPACE_TO_BATCH_ND multiplies it by the block size): only the static axes are declared.
        signature = tensor.tensor.ShapeSignatureAsNumpy() if tensor.tensor.ShapeSignatureLength() else None
        if signature is not None and len(signature) == len(actual) and all(
                s < 0 or a == d for s, a, d in zip(signature, actual, declared, strict=True)):
            return expr
        if [d for d in actual if d != 1] != [d for d in declared if d != 1]:
            raise UnsupportedModelError(
                f"operator {index} ({self._describe(index)}): converted to shape {actual}, "
                f"but the model declares {declared}"
            )
        return self.bb.normalize(tvm.relax.op.reshape(expr, declared))

    def _describe(self, index) -> str:
        op = self.subgraph.Operators(index)
        try:
            code = self.get_op_code_str(op)
            return self._custom_code(op) if code == "CUSTOM" else code
        except Exception:  # noqa: BLE001 - used while reporting another error, it must not replace it
            return f"opcode {op.OpcodeIndex()}"

    def _custom_code(self, op) -> str:
        return self.model.OperatorCodes(op.OpcodeIndex()).CustomCode().decode()

    def _fail(self, op_name: str, what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"operator {self._current_index} ({op_name}): {what}")

    # ------------------------------------------------------------ LCE ops

    def convert_lce_custom(self, op):
        return self.custom_converters[self._custom_code(op)](op)

    def _options(self, op, op_name: str, spec: dict, optional: frozenset = frozenset()) -> dict[str, int]:
        """The op's flexbuffer custom options, each checked against ``spec`` (its allowed integer values)."""
        raw = op.CustomOptionsAsNumpy()
        data = raw.tobytes() if isinstance(raw, np.ndarray) else b""
        try:
            options = _flexbuffer_map(data) if data else {}
        except Exception as err:  # noqa: BLE001 - the flexbuffers reader raises assorted errors on garbage
            raise self._fail(op_name, f"custom_options ({len(data)} bytes) are not a valid flexbuffer map: "
                                      f"{_explain(err)}") from err
        unknown = sorted(set(options) - set(spec))
        if unknown:
            raise self._fail(op_name, f"unknown custom options {unknown}; supported: {sorted(spec)}")
        for key, allowed in spec.items():
            if key not in options:
                if key in optional:
                    continue
                raise self._fail(op_name, f"custom option {key} is missing")
            kind, value = options[key]
            if kind != "int" or value not in allowed:
                expected = (f"an integer from {allowed.start}" if isinstance(allowed, range) else
                            " or ".join(f"{k} ({v})" if v != str(k) else str(k) for k, v in allowed.items()))
                got = f"{value!r}" if kind == "int" else f"the {kind} {value!r}"
                raise self._fail(op_name, f"custom option {key} is {got}; expected {expected}")
        return {key: value for key, (_, value) in options.items()}

    def _dtype(self, tensor, op_name: str, role: str) -> str:
        code = tensor.tensor.Type()
        if code not in _TFLITE_DTYPES:
            raise self._fail(op_name, f"{role} has TFLite type {code}; supported: float32, int32, int8")
        return _TFLITE_DTYPES[code]

    def _constant(self, tensor, op_name: str, role: str) -> np.ndarray:
        if tensor.tensor_idx < 0:
            raise self._fail(op_name, f"the {role} input is missing")
        if self.has_expr(tensor.tensor_idx):
            raise self._fail(op_name, f"the {role} must be a constant, it is computed at run time")
        return self.get_tensor_value(tensor)

    def _io(self, op, op_name: str, inputs: range):
        """The op's input and output tensors, after checking their numbers (one output, ``inputs`` inputs)."""
        ins, outs = self.get_input_tensors(op), self.get_output_tensors(op)
        if len(ins) not in inputs or len(outs) != 1:
            expected = f"{inputs.start}" if len(inputs) == 1 else f"{inputs.start} to {inputs.stop - 1}"
            raise self._fail(op_name, f"{len(ins)} inputs and {len(outs)} outputs; expected {expected} inputs "
                                      "and 1 output")
        if any(t.tensor_idx < 0 for t in ins[:1] + outs):
            raise self._fail(op_name, "the input or output is missing (tensor index -1)")
        return ins, outs[0]

    def convert_lce_quantize(self, op):
        self._options(op, "LceQuantize", {})
        (x,), _ = self._io(op, "LceQuantize", range(1, 2))
        dtype = self._dtype(x, "LceQuantize", "input")
        zero_point = 0
        if dtype == "int8":
            zero_point = self._zero_point(x)
        elif dtype != "float32":
            raise self._fail("LceQuantize", f"input type {dtype} is not supported; supported: float32, int8")
        return ops.quantize(self.get_tensor_expr(x), zero_point=zero_point)

    def convert_lce_dequantize(self, op):
        self._options(op, "LceDequantize", {})
        (x,), out = self._io(op, "LceDequantize", range(1, 2))
        out_dtype = self._dtype(out, "LceDequantize", "output")
        if not out.tensor.ShapeLength():
            raise self._fail("LceDequantize", "the output has no shape, so its channel count is unknown")
        channels = int(out.tensor.ShapeAsNumpy()[-1])
        if out_dtype == "int8":
            scale, zero_point = self._scale_zero_point(out)
            return ops.dequantize(self.get_tensor_expr(x), channels, "int8", scale, zero_point)
        return ops.dequantize(self.get_tensor_expr(x), channels)

    def convert_lce_bconv2d(self, op):
        name = "LceBconv2d"
        options = self._options(op, name, _BCONV_OPTIONS, optional=frozenset({"channels_in"}))
        inputs, out = self._io(op, name, range(2, 6))
        x, w = inputs[0], inputs[1]
        if self._dtype(x, name, "input") != PACKED_DTYPE:
            raise self._fail(name, "the input must be bitpacked (int32); float input is not supported")
        filt = self._constant(w, name, "filter")
        channels_in = options.get("channels_in")
        if filt.dtype == np.float32:  # older converters stored the filter unpacked (OHWI, +-1)
            channels_in = channels_in or filt.shape[-1]
            filt = ops.quantize_ref(filt)
        elif channels_in is None:
            raise self._fail(name, "custom option channels_in is missing (a bitpacked filter needs it)")
        out_dtype = self._dtype(out, name, "output")
        common = dict(
            channels_in=channels_in,
            strides=(options["stride_height"], options["stride_width"]),
            dilations=(options["dilation_height_factor"], options["dilation_width_factor"]),
            padding=_PADDING[options["padding"]],
            pad_value=options["pad_values"],
            activation=_ACTIVATION[options["fused_activation_function"]],
            out_dtype=out_dtype,
            output_formula="lce",  # LCE's bits
        )
        x_expr, w_expr = self.get_tensor_expr(x), tvm.relax.const(filt, PACKED_DTYPE)
        if out_dtype == PACKED_DTYPE:
            thresholds = self._constant(inputs[4] if len(inputs) > 4 else inputs[-1], name, "thresholds")
            return ops.bconv2d(x_expr, w_expr, thresholds=tvm.relax.const(thresholds.astype(np.int32)), **common)
        multiplier = self._constant(inputs[2], name, "post_activation_multiplier").astype(np.float32)
        bias = self._constant(inputs[3], name, "post_activation_bias").astype(np.float32)
        if out_dtype == "int8":
            common["out_scale"], common["out_zero_point"] = self._scale_zero_point(out)
        return ops.bconv2d(
            x_expr, w_expr, multiplier=tvm.relax.const(multiplier), bias=tvm.relax.const(bias), **common
        )

    def convert_lce_bmaxpool2d(self, op):
        name = "LceBMaxPool2d"
        options = self._options(op, name, _BMAXPOOL_OPTIONS)
        (x,), _ = self._io(op, name, range(1, 2))
        return ops.bmaxpool2d(
            self.get_tensor_expr(x),
            pool_size=(options["filter_height"], options["filter_width"]),
            strides=(options["stride_height"], options["stride_width"]),
            padding=_PADDING[options["padding"]],
        )

    # ------------------------------------------------------------ builtins TVM converts wrongly

    def _block_and_pairs(self, op, name: str):
        x, block, pairs = self.get_input_tensors(op)
        block = [int(b) for b in self._constant(block, name, "block shape")]
        pairs = [[int(p) for p in pair] for pair in self._constant(pairs, name, "paddings or crops")]
        shape = [int(d) for d in self.get_tensor_expr(x).ty.shape.values]
        if len(pairs) != len(block) or len(shape) < len(block) + 1:
            raise self._fail(name, f"block shape {block} and paddings/crops {pairs} do not fit the input {shape}")
        return x, block, pairs, shape

    def convert_space_to_batch_nd(self, op):
        """SPACE_TO_BATCH_ND: pad the M block axes with zeros (the zero point), split each into
        (size / b, b), move the b axes in front of the batch and merge them into it."""
        name = "SPACE_TO_BATCH_ND"
        x, block, paddings, shape = self._block_and_pairs(op, name)
        spatial = len(block)
        rest = shape[spatial + 1:]
        pad_value = float(self._zero_point(x)) if self._dtype(x, name, "input") == "int8" else 0.0
        padded = [size + before + after for size, (before, after) in zip(shape[1:spatial + 1], paddings, strict=True)]
        if any(size % b for size, b in zip(padded, block, strict=True)):
            raise self._fail(name, f"padded sizes {padded} are not multiples of the block shape {block}")
        y = tvm.relax.op.nn.pad(self.get_tensor_expr(x), [0, 0, *(p for pair in paddings for p in pair),
                                                          *[0] * (2 * len(rest))], "constant", pad_value)
        split = [shape[0], *(d for size, b in zip(padded, block, strict=True) for d in (size // b, b)), *rest]
        y = tvm.relax.op.reshape(y, split)
        block_axes = [2 + 2 * i for i in range(spatial)]
        y = tvm.relax.op.permute_dims(y, [*block_axes, 0, *(a - 1 for a in block_axes),
                                          *range(2 * spatial + 1, len(split))])
        return tvm.relax.op.reshape(
            y, [int(np.prod(block)) * shape[0], *(size // b for size, b in zip(padded, block, strict=True)), *rest])

    def convert_batch_to_space_nd(self, op):
        """BATCH_TO_SPACE_ND, the inverse: split the batch into (b_1 .. b_M, batch), interleave each b
        with its axis, merge, then crop."""
        name = "BATCH_TO_SPACE_ND"
        x, block, crops, shape = self._block_and_pairs(op, name)
        spatial = len(block)
        rest = shape[spatial + 1:]
        if shape[0] % int(np.prod(block)):
            raise self._fail(name, f"batch {shape[0]} is not a multiple of the block shape {block}'s size")
        batch, sizes = shape[0] // int(np.prod(block)), shape[1:spatial + 1]
        y = tvm.relax.op.reshape(self.get_tensor_expr(x), [*block, batch, *sizes, *rest])
        interleaved = [axis for i in range(spatial) for axis in (spatial + 1 + i, i)]
        y = tvm.relax.op.permute_dims(y, [spatial, *interleaved, *range(2 * spatial + 1, 2 * spatial + 1 + len(rest))])
        merged = [size * b for size, b in zip(sizes, block, strict=True)]
        y = tvm.relax.op.reshape(y, [batch, *merged, *rest])
        return tvm.relax.op.strided_slice(
            y, axes=list(range(1, spatial + 1)), begin=[before for before, _ in crops],
            end=[size - after for size, (_, after) in zip(merged, crops, strict=True)])

    def _scale_zero_point(self, tensor) -> tuple[float, int]:
        quant = tensor.tensor.Quantization()
        if quant is None or quant.ScaleLength() != 1:
            raise self._fail(self._describe(self._current_index), "an int8 tensor needs one scale and zero point")
        return float(quant.ScaleAsNumpy()[0]), int(quant.ZeroPointAsNumpy()[0])

    def _zero_point(self, tensor) -> int:
        return self._scale_zero_point(tensor)[1]


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
    except (tvm.error.OpNotImplemented, NotImplementedError) as err:
        raise UnsupportedModelError(f"{prefix}{err}") from err
    except Exception as err:  # noqa: BLE001 - outside any one operator (graph inputs, outputs): still the model's fault
        raise UnsupportedModelError(f"{prefix}TVM's TFLite frontend failed: {_explain(err)}") from err


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


def _explain(err: Exception) -> str:
    """``err`` as one message: its text, or for a bare ``assert`` the check that failed and where."""
    text = str(err).strip()
    if text:
        # ValueError and RuntimeError (what a relax.bnn op's BnnOpError becomes after crossing TVM's C++)
        # carry their own description; for the others (KeyError: 12) the type is part of the meaning.
        return text if isinstance(err, (ValueError, RuntimeError)) else f"{type(err).__name__}: {text}"
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" `{frame.line}` ({os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    return f"{type(err).__name__}: failed check{where}"


def _flexbuffer_map(data: bytes) -> dict[str, tuple[str, object]]:
    """A flexbuffer map's entries as key -> (kind, value): kind "int" for integers, else the stored kind.

    Read entry by entry, with the entry count bounded first: the reader would otherwise follow any
    length a corrupt buffer declares.
    """
    root = flexbuffers.GetRoot(data)
    if not root.IsMap:
        raise ValueError("the root is not a map")
    entries = root.AsMap
    keys, values = entries.Keys, entries.Values
    if len(entries) > 64 or len(keys) != len(entries):
        raise ValueError(f"the map declares {len(entries)} values and {len(keys)} keys")
    options, previous = {}, None
    for i in range(len(entries)):
        key, value = keys[i].AsKey, values[i]
        if previous is not None and key <= previous:  # LCE looks keys up by binary search
            raise ValueError(f"keys {previous!r} and {key!r} are not in sorted order")
        previous = key
        if value.IsInt:
            options[key] = ("int", value.AsInt)
        elif value.IsFloat:
            options[key] = ("float", value.AsFloat)
        elif value.IsBool:
            options[key] = ("bool", value.AsBool)
        else:
            options[key] = ("non-numeric value", None)
    return options
