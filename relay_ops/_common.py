"""Shared plumbing for the binary Relax operators: registration, attributes, errors.

Every op of ``relax.bnn`` is registered from Python (TVM 0.27 has no C++ hook we
could use from a wheel): ``RegisterOp`` creates it, ``FInferType`` gives shape
inference, ``FPurity`` lets dataflow passes move it, and ``FLegalize`` lowers it
to a TE compute whose main block carries ``schedule_rule`` so that the strategy
layer (and MetaSchedule) can find the schedule for it.
"""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import relax
from tvm.relax.transform.legalize_ops.common import register_legalize

BITS_PER_WORD = 32
PACKED_DTYPE = "int32"


class BnnOpError(ValueError):
    """A binary op got an input or attribute it cannot accept.

    The message always names the op and the offending attribute or input.
    """

    def __init__(self, op: str, what: str, message: str):
        self.op = op
        self.what = what
        super().__init__(f"{op}: {what}: {message}")


def packed_words(channels: int) -> int:
    """Number of int32 words holding ``channels`` bits (LCE packs along the last axis)."""
    return (channels + BITS_PER_WORD - 1) // BITS_PER_WORD


def round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def check_channels_in(op: str, channels_in: int, words: int) -> None:
    """``channels_in`` bits are what ``words`` packed words of the input hold."""
    if channels_in < 1 or packed_words(channels_in) != words:
        raise BnnOpError(op, "channels_in", f"{channels_in} channels need {packed_words(max(channels_in, 1))} "
                                            f"words, the input has {words}")


def register_op(
    name: str,
    doc: str,
    infer_type: Callable[[relax.Call], relax.TensorType],
    legalize: Callable[[relax.BlockBuilder, relax.Call], relax.Expr],
) -> tvm.ir.Op:
    """Register ``name`` as a pure Relax op with shape inference and legalization.

    Registration is idempotent so that re-importing a module (pytest does) is harmless.
    """
    try:
        return tvm.ir.Op.get(name)
    except Exception:  # noqa: BLE001 - TVM raises a plain error for unknown ops
        pass
    tvm.ir._ffi_api.RegisterOp(name, doc)
    tvm.ir.register_op_attr(name, "FInferType", lambda call, _ctx: infer_type(call))
    tvm.ir.register_op_attr(name, "FPurity", True)
    register_legalize(name, legalize)
    return tvm.ir.Op.get(name)


def legalize_without_target(legalize_with: Callable[[relax.BlockBuilder, relax.Call, str], relax.Expr],
                            value_only_accumulation: str) -> Callable[[relax.BlockBuilder, relax.Call], relax.Expr]:
    """The default legalization of an op whose kernel depends on the target (it chooses the accumulation).

    Without a target no kernel is made: the call is left as it is, and only a call of constants is legalized
    (with ``value_only_accumulation``), which is how FoldConstant evaluates it at compile time: every
    accumulation gives the same values, and no kernel remains. ``bnn_tvm.build.legalize(mod, target)`` (or
    ``LegalizeOps(bnn_tvm.strategies.binary_legalizations(target))``) makes the kernels.
    """

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if all(isinstance(arg, tvm.ir.expr.Constant) for arg in call.args):
            return legalize_with(bb, call, lambda _geometry: value_only_accumulation)
        return call

    return legalize


def make_call(op_name: str, args: list[relax.Expr], **attrs) -> relax.Call:
    """A call of a ``relax.bnn`` op with its attributes stored as DictAttrs."""
    return relax.Call(tvm.ir.Op.get(op_name), args, tvm.ir.make_node("ir.DictAttrs", **attrs))


def attr(call: relax.Call, key: str):
    """An attribute of ``call`` as a plain Python value."""
    value = call.attrs[key]
    if isinstance(value, (str, int, float)):
        return value
    return [v for v in value]  # an ffi Array of ints


def static_shape(op: str, what: str, expr: relax.Expr) -> tuple[list[int], str]:
    """The static shape and dtype of a tensor argument, or an error naming it."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise BnnOpError(op, what, f"expected a tensor with a known shape, got {ty}")
    dims = []
    for dim in ty.shape.values:
        if not isinstance(dim, tvm.tirx.IntImm):
            raise BnnOpError(op, what, f"dynamic shapes are not supported (shape {ty.shape})")
        dims.append(int(dim.value))
    return dims, str(ty.dtype)


def expect_dtype(op: str, what: str, dtype: str, allowed: tuple[str, ...]) -> None:
    if dtype not in allowed:
        raise BnnOpError(op, what, f"dtype {dtype} is not supported; expected one of {allowed}")


# The widest (dilated) window a sliding-window op may have: far beyond any real model, and small enough that
# padded extents and their indices stay well inside TVM's 32-bit index arithmetic.
MAX_WINDOW = 1 << 16


def same_padding(in_size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """TF/TFLite SAME padding: (output size, pad before, pad after)."""
    effective = (kernel - 1) * dilation + 1
    out = (in_size + stride - 1) // stride
    total = max((out - 1) * stride + effective - in_size, 0)
    return out, total // 2, total - total // 2


def window_output(
    op: str, in_size: int, kernel: int, stride: int, dilation: int, padding: str, axis: str
) -> tuple[int, int, int]:
    """Output size and (before, after) padding of a sliding window along one axis."""
    effective = (kernel - 1) * dilation + 1
    if effective > MAX_WINDOW:
        raise BnnOpError(op, "dilations" if dilation > 1 else "kernel",
                         f"a window {effective} pixels across ({kernel} taps, dilation {dilation}) along the {axis} "
                         f"is beyond the {MAX_WINDOW} bnn-tvm supports (the input {axis} is {in_size})")
    if padding == "SAME":
        return same_padding(in_size, kernel, stride, dilation)
    effective = (kernel - 1) * dilation + 1
    out = (in_size - effective) // stride + 1
    if out < 1:
        raise BnnOpError(
            op, "padding",
            f"VALID window of effective size {effective} does not fit the input {axis} {in_size}",
        )
    return out, 0, 0


def check_choice(op: str, name: str, value, choices) -> None:
    if value not in choices:
        raise BnnOpError(op, name, f"got {value!r}; supported: {', '.join(map(str, choices))}")


def check_positive_pair(op: str, name: str, value) -> tuple[int, int]:
    if len(value) != 2 or any(int(v) < 1 for v in value):
        raise BnnOpError(op, name, f"expected two positive integers, got {list(value)}")
    return int(value[0]), int(value[1])
