"""LCE's custom ops (LceQuantize, LceDequantize, LceBconv2d, LceBMaxPool2d) as ``relax.bnn`` ops.

``LceOpConverters`` holds the methods :class:`.tflite_converter.LceOperatorConverter` dispatches LCE's custom
codes to, with the tensor accessors they share (types, constants, quantization); their custom options are
read from the flexbuffer and checked as LCE's kernels check them.
"""

from __future__ import annotations

import numpy as np
import tvm
from flatbuffers import flexbuffers

from .. import relay_ops as ops
from ..relay_ops import PACKED_DTYPE
from .errors import explain

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


class LceOpConverters:
    """Mixin of TVM's ``OperatorConverter``: LCE's ops, and the tensor accessors they check their inputs with.

    Relies on the converter's ``_fail`` (an error naming the current operator) and ``_describe``.
    """

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
                                      f"{explain(err)}") from err
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

    def _scale_zero_point(self, tensor) -> tuple[float, int]:
        quant = tensor.tensor.Quantization()
        if quant is None or quant.ScaleLength() != 1:
            raise self._fail(self._describe(self._current_index), "an int8 tensor needs one scale and zero point")
        return float(quant.ScaleAsNumpy()[0]), int(quant.ZeroPointAsNumpy()[0])

    def _zero_point(self, tensor) -> int:
        return self._scale_zero_point(tensor)[1]


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
