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

import os
from pathlib import Path

import numpy as np
import tvm
from flatbuffers import flexbuffers
from tvm.relax.frontend.tflite import tflite_frontend

from .. import relay_ops as ops
from ..relay_ops import PACKED_DTYPE

# tflite.TensorType values this importer reads.
_TFLITE_DTYPES = {0: "float32", 2: "int32", 9: "int8"}
# tflite.Padding and tflite.ActivationFunctionType, as LCE stores them in its options.
_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}

_BCONV_OPTIONS = {
    "channels_in", "dilation_height_factor", "dilation_width_factor", "fused_activation_function",
    "pad_values", "padding", "stride_height", "stride_width",
}
_BMAXPOOL_OPTIONS = {"filter_height", "filter_width", "padding", "stride_height", "stride_width"}


class UnsupportedModelError(ValueError):
    """The model uses an op or option bnn-tvm cannot compile; the message says which and where."""


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
        super().check_unsupported_ops()

    def convert_op_to_relax(self):
        for index in range(self.subgraph.OperatorsLength()):
            self._current_index = index
            try:
                self._convert_one(index)
            except ops.BnnOpError as err:
                raise UnsupportedModelError(f"operator {index} ({self._describe(index)}): {err}") from err

    def _convert_one(self, index):
        op = self.subgraph.Operators(index)
        code = self.get_op_code_str(op)
        ret = self.convert_map[code](op=op)
        if ret is None:
            return
        ret = self.bb.normalize(ret)
        outputs = self.get_output_tensors(op)
        if len(outputs) == 1:
            ret = self._with_declared_shape(ret, outputs[0], index)
            self.exp_tab.set_expr(tflite_frontend.get_tensor_name(self.subgraph, outputs[0].tensor_idx), ret)
        else:
            for i, tensor in enumerate(outputs):
                self.exp_tab.set_expr(tflite_frontend.get_tensor_name(self.subgraph, tensor.tensor_idx), ret[i])

    def _with_declared_shape(self, expr, tensor, index):
        """Hold TVM's converters to the output shape the .tflite declares.

        (TVM 0.27's FULLY_CONNECTED keeps a 4-D input's leading axes, [1, 1, 1, N] where TFLite says
        [1, N].) Same element count: reshape; otherwise fail rather than compute something else.
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
        if int(np.prod(actual)) != int(np.prod(declared)):
            raise UnsupportedModelError(
                f"operator {index} ({self._describe(index)}): converted to shape {actual}, "
                f"but the model declares {declared}"
            )
        return self.bb.normalize(tvm.relax.op.reshape(expr, declared))

    def _describe(self, index) -> str:
        op = self.subgraph.Operators(index)
        code = self.get_op_code_str(op)
        return self._custom_code(op) if code == "CUSTOM" else code

    def _custom_code(self, op) -> str:
        return self.model.OperatorCodes(op.OpcodeIndex()).CustomCode().decode()

    def _fail(self, op_name: str, what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"operator {self._current_index} ({op_name}): {what}")

    # ------------------------------------------------------------ LCE ops

    def convert_lce_custom(self, op):
        return self.custom_converters[self._custom_code(op)](op)

    def _options(self, op, op_name: str, known: set[str]) -> dict:
        raw = op.CustomOptionsAsNumpy()
        options = flexbuffers.Loads(raw.tobytes()) if isinstance(raw, np.ndarray) and raw.size else {}
        unknown = set(options) - known
        if unknown:
            raise self._fail(op_name, f"unknown options {sorted(unknown)}; supported: {sorted(known)}")
        return options

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

    def convert_lce_quantize(self, op):
        (x,) = self.get_input_tensors(op)
        dtype = self._dtype(x, "LceQuantize", "input")
        zero_point = 0
        if dtype == "int8":
            zero_point = self._zero_point(x)
        elif dtype != "float32":
            raise self._fail("LceQuantize", f"input type {dtype} is not supported; supported: float32, int8")
        return ops.quantize(self.get_tensor_expr(x), zero_point=zero_point)

    def convert_lce_dequantize(self, op):
        (x,) = self.get_input_tensors(op)
        (out,) = self.get_output_tensors(op)
        out_dtype = self._dtype(out, "LceDequantize", "output")
        channels = int(out.tensor.ShapeAsNumpy()[-1])
        if out_dtype == "int8":
            scale, zero_point = self._scale_zero_point(out)
            return ops.dequantize(self.get_tensor_expr(x), channels, "int8", scale, zero_point)
        return ops.dequantize(self.get_tensor_expr(x), channels)

    def convert_lce_bconv2d(self, op):
        name = "LceBconv2d"
        options = self._options(op, name, _BCONV_OPTIONS)
        inputs = self.get_input_tensors(op)
        (out,) = self.get_output_tensors(op)
        x, w = inputs[0], inputs[1]
        if self._dtype(x, name, "input") != PACKED_DTYPE:
            raise self._fail(name, "the input must be bitpacked (int32); float input is not supported")
        filt = self._constant(w, name, "filter")
        channels_in = int(options.get("channels_in", 0))
        if filt.dtype == np.float32:  # older converters stored the filter unpacked (OHWI, +-1)
            channels_in = channels_in or filt.shape[-1]
            filt = ops.quantize_ref(filt)
        padding = _PADDING.get(options.get("padding", 1))
        activation = _ACTIVATION.get(options.get("fused_activation_function", 0))
        if padding is None:
            raise self._fail(name, f"padding {options.get('padding')} is not SAME (0) or VALID (1)")
        if activation is None:
            raise self._fail(
                name,
                f"fused_activation_function {options.get('fused_activation_function')} is not supported; "
                "supported: NONE, RELU, RELU_N1_TO_1, RELU6",
            )
        out_dtype = self._dtype(out, name, "output")
        common = dict(
            channels_in=channels_in,
            strides=(options.get("stride_height", 1), options.get("stride_width", 1)),
            dilations=(options.get("dilation_height_factor", 1), options.get("dilation_width_factor", 1)),
            padding=padding,
            pad_value=int(options.get("pad_values", 0)),
            activation=activation,
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
        (x,) = self.get_input_tensors(op)
        padding = _PADDING.get(options.get("padding", 1))
        if padding is None:
            raise self._fail(name, f"padding {options.get('padding')} is not SAME (0) or VALID (1)")
        return ops.bmaxpool2d(
            self.get_tensor_expr(x),
            pool_size=(options.get("filter_height", 1), options.get("filter_width", 1)),
            strides=(options.get("stride_height", 1), options.get("stride_width", 1)),
            padding=padding,
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

    Raises
    ------
    UnsupportedModelError
        For an op or option bnn-tvm cannot compile, naming the op and its index in the graph.
    """
    import tflite

    data = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    try:
        parsed = tflite.Model.GetRootAsModel(data, 0)
        parsed.SubgraphsLength()
    except Exception as err:  # noqa: BLE001 - flatbuffers raises assorted errors on garbage
        raise UnsupportedModelError(f"not a TFLite flatbuffer: {err}") from err
    try:
        return tflite_frontend.from_tflite(parsed, op_converter=LceOperatorConverter)
    except (tvm.error.OpNotImplemented, NotImplementedError) as err:
        raise UnsupportedModelError(str(err)) from err
