"""TVM's TFLite ``OperatorConverter`` held to what the .tflite file says.

Extended with LCE's ops (:mod:`.lce_ops`), it fails on the first unsupported op or operator code before
converting anything, names the operator of every error raised while converting, refuses outputs whose declared
type or shape the converted op does not compute, and corrects the builtins TVM 0.27 converts into code that
does not run (SPACE_TO_BATCH_ND, BATCH_TO_SPACE_ND).
"""

from __future__ import annotations

import contextlib
import os
import traceback

import numpy as np
import tvm
from tvm.relax.frontend.tflite import tflite_frontend

from ..relay_ops import BnnOpError
from .errors import UnsupportedModelError, explain
from .lce_ops import LceOpConverters
from .tflite_check import TYPE_NAMES, opcode_names

# Element types a converted Relax expression is compared with: those TFLite and Relax name alike.
_COMPARABLE_DTYPES = {"float16", "float32", "float64", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                      "uint32", "uint64"}


def is_model_error(err: BaseException) -> bool:
    """Whether ``err``, raised while converting a model, is a condition checked on the model (the user's
    mistake) rather than a bug in bnn-tvm or TVM.

    Checked conditions: ours (``UnsupportedModelError``, the relax.bnn ops' ``BnnOpError``), TVM's refusals
    (``NotImplementedError``, ``tvm.error.OpNotImplemented``), the ``assert`` statements TVM's TFLite frontend
    checks a model with, and the shape and type inference behind TVM's C++ BlockBuilder, whose errors come
    back as ``RuntimeError`` (a ``BnnOpError`` raised there loses its type on the way). TVM's ``InternalError``
    (a broken invariant), a ``TypeError``, ``KeyError``, ``IndexError`` or a numpy error is a bug: nothing
    checked the condition it trips on (the CLI's ``_users_mistake`` draws the same line).
    """
    if isinstance(err, (tvm.error.InternalError, RecursionError)):  # a broken invariant ("Check failed"), as the
        return False                                                  # CLI counts it, or a runaway recursion
    if isinstance(err, (UnsupportedModelError, BnnOpError, RuntimeError)):
        return True  # RuntimeError includes NotImplementedError and tvm.error's OpError, DiagnosticError
    frames = traceback.extract_tb(err.__traceback__)
    raised_in = os.path.basename(frames[-1].filename) if frames else ""
    return isinstance(err, AssertionError) and raised_in == os.path.basename(tflite_frontend.__file__)


class LceOperatorConverter(LceOpConverters, tflite_frontend.OperatorConverter):
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
        """Name operator ``index`` (index and op) in the model's errors raised while it is converted.

        Only checked conditions are the model's errors (``is_model_error``); anything else is a bug, raised
        as it is with the operator in a note, so that the CLI reports it as one.
        """
        try:
            yield
        except UnsupportedModelError:
            raise
        except Exception as err:
            if not is_model_error(err):
                err.add_note(f"while bnn-tvm converted operator {index} ({self._describe(index)})")
                raise
            text = str(err) if isinstance(err, NotImplementedError) else explain(err)
            raise UnsupportedModelError(f"operator {index} ({self._describe(index)}): {text}") from err

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
        """Refuse an output shape the converted op does not compute, as TFLite would compute it.

        TFLite computes every output shape itself when it prepares the model, so a declared shape that
        differs (an extra unit axis, a transposed one) would make a compiled model answer in another shape
        than LCE's interpreter. The one difference that is TVM's, not the model's: TVM 0.27's FULLY_CONNECTED
        keeps a 4-D input's leading axes ([1, 1, 1, N] where TFLite computes [1, N]), reshaped to TFLite's.
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
        op = self._describe(index)
        if op == "FULLY_CONNECTED" and declared == [int(np.prod(actual[:-1])), actual[-1]]:
            return self.bb.normalize(tvm.relax.op.reshape(expr, declared))
        name = tensor.tensor.Name()
        raise UnsupportedModelError(
            f"operator {index} ({op}): output 0 is tensor {tensor.tensor_idx}"
            f"{f' ({name.decode()!r})' if name else ''}, declared shape {declared}, but the operator computes "
            f"{actual}; TFLite computes output shapes itself, so the model is inconsistent (bnn-tvm refuses it "
            "rather than reshape)")

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
