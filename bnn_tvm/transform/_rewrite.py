"""Plumbing the graph passes share: call-by-call rewriting of Relax functions with use counts."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from ..relay_ops._common import attr, make_call

BINARY_MAC_OPS = ("relax.bnn.bconv2d", "relax.bnn.bdense")


class Graph:
    """What a rewrite can ask about the function being rewritten."""

    def __init__(self, mutator: relax.PyExprMutator, uses: Counter):
        self._mutator = mutator
        self._uses = uses

    def producer(self, expr: relax.Expr) -> relax.Call | None:
        """The call bound to ``expr`` (a variable of the rewritten function), if any."""
        if isinstance(expr, relax.Var):
            value = self._mutator.lookup_binding(expr)
            if isinstance(value, relax.Call):
                return value
        return None

    def uses(self, var: relax.Expr) -> int:
        """How often ``var`` is read in the function (as it was before this pass)."""
        return self._uses[var]

    def sole_producer(self, expr: relax.Expr, *op_names: str) -> relax.Call | None:
        """The call of one of ``op_names`` bound to ``expr``, if ``expr`` has no other reader."""
        call = self.producer(expr)
        if call is None or self.uses(expr) != 1 or op_name(call) not in op_names:
            return None
        return call


def op_name(call: relax.Call) -> str:
    return call.op.name if isinstance(call.op, tvm.ir.Op) else ""


def _use_counts(func: relax.Function) -> Counter:
    uses: Counter = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call):
            uses.update(a for a in expr.args if isinstance(a, relax.Var))
        elif isinstance(expr, relax.Tuple):
            uses.update(f for f in expr.fields if isinstance(f, relax.Var))
        elif isinstance(expr, relax.TupleGetItem) and isinstance(expr.tuple_value, relax.Var):
            uses[expr.tuple_value] += 1
        elif isinstance(expr, relax.SeqExpr) and isinstance(expr.body, relax.Var):
            uses[expr.body] += 1

    relax.analysis.post_order_visit(func.body, visit)
    return uses


def rewrite_calls(rewrite: Callable[[relax.Call, Graph], "relax.Expr | None"], name: str) -> tvm.transform.Pass:
    """A module pass calling ``rewrite(call, graph)`` on every call, operands first; a returned
    expression replaces the call."""

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, mod, uses):
            super().__init__(mod)
            self.graph = Graph(self, uses)

        def visit_call_(self, call):
            call = super().visit_call_(call)
            replaced = rewrite(call, self.graph)
            return call if replaced is None else replaced

    @tvm.transform.module_pass(opt_level=0, name=name)
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        functions = dict(mod.functions_items())
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                functions[gvar] = _Rewriter(mod, _use_counts(func)).visit_expr(func)
        return tvm.IRModule(functions, attrs=mod.attrs)

    return run


def constant(expr: relax.Expr) -> np.ndarray | None:
    """The value of a constant operand, else None."""
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """``value`` as a [channels] vector if it broadcasts along the last axis only, else None."""
    if value is None or value.dtype != np.float32:
        return None
    if value.ndim == 0:
        return np.full(channels, value, np.float32)
    if value.shape[-1] in (1, channels) and all(d == 1 for d in value.shape[:-1]):
        return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float32)
    return None


def attrs_of(call: relax.Call) -> dict:
    return {key: attr(call, key) for key in call.attrs.keys()}


def remake(call: relax.Call, args: list[relax.Expr], **changes) -> relax.Call:
    """``call``'s op with new arguments and some attributes changed."""
    return make_call(op_name(call), args, **{**attrs_of(call), **changes})
