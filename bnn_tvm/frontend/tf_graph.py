"""Convert TensorFlow graphs into Relax: traced Python code, and a SavedModel's saved functions.

Keras ``Lambda`` and ``TFOpLambda`` layers, and quantizers that are not binary (DoReFa's k-bit, say),
are Python code. They are traced with ``tf.function`` at the layer's concrete shapes and the graph's
ops are converted one by one (``convert_traced``). A SavedModel's serving function is read from its
FunctionDef as data, the functions it calls inlined (``convert_function``, used by :mod:`.saved_model`).
Only the ops the outputs depend on are converted. Ops on constants only are evaluated with numpy, so
shape arithmetic, constant folding and a quantizer applied to a saved kernel never reach Relax. Input
shapes are fixed before conversion (the batch too), so the shape of every tensor is known: ``Shape``,
``Size`` and ``Rank`` of a tensor are constants, and a shape a graph computes from them (Keras's
``Reshape`` and ``Flatten`` trace ``Shape`` -> ``StridedSlice`` -> ``Pack``) folds to a constant before
the op that needs it. An argument that must be constant (a reshape's shape, a slice's bounds) but is
computed from the model's input data fails naming the op, the argument and the tensor it comes from.
TF's dilated convolution, SpaceToBatchND -> Conv2D -> BatchToSpaceND, becomes one dilated conv2d again
(``convert_atrous``). An op not in the table fails with its name and type and the layer's or function's name.
"""


from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tvm import relax

from .errors import UnsupportedModelError
from .tf_array_ops import ARRAY_OPS
from .tf_nn_ops import NN_OPS, HeldBatchedConv, HeldSpaceToBatch, convert_atrous, materialize
from .tf_values import ELEMENTWISE_OPS, NotConstantError, as_expr, is_const

OPS: dict[str, Callable] = {**ELEMENTWISE_OPS, **ARRAY_OPS, **NN_OPS}


def convert_traced(bb: relax.BlockBuilder, function: Callable, inputs: Sequence[relax.Expr],
                   where: str) -> list[relax.Expr]:
    """Trace ``function`` on tensors shaped like ``inputs``; emit its ops into ``bb``; return its outputs.

    ``where`` names the layer for error messages.
    """
    import tensorflow as tf

    specs = [tf.TensorSpec([int(d) for d in x.ty.shape], x.ty.dtype) for x in inputs]
    graph = tf.function(function).get_concrete_function(*specs).graph
    return [as_expr(v) for v in convert_graph(bb, graph, inputs, where)]

def convert_graph(bb: relax.BlockBuilder, graph, inputs: Sequence, where: str) -> list:
    """Emit the ops of a TensorFlow ``graph`` (a FuncGraph fed from ``inputs``, in order) into ``bb``;
    return its outputs (Relax expressions, or numpy arrays for outputs that are constants)."""
    needed = _needed_ops(graph)
    values: dict[str, object] = {}
    arguments = {t.op.name: x for t, x in zip(graph.inputs, inputs)}
    for op in graph.get_operations():
        if op.name not in needed:
            continue
        if op.type == "Placeholder":
            if op.name not in arguments:
                raise UnsupportedModelError(f"{where}: TensorFlow graph input {op.name} is not fed (a captured "
                                            "tensor or variable); only the function's own inputs are")
            values[op.name] = arguments[op.name]
            continue
        args = [_output(values, t.op.name, t.value_index) for t in op.inputs]
        values[op.name] = _convert_node(bb, op.node_def, args, where, {})
    return [materialize(bb, _output(values, t.op.name, t.value_index)) for t in graph.outputs]

def _needed_ops(graph) -> set[str]:
    """The ops the graph's outputs depend on through data (not control) edges: the rest (the batch-norm's
    saved statistics, NoOps, ops on the gradient's side) is never converted."""
    needed, stack = set(), [t.op for t in graph.outputs]
    while stack:
        op = stack.pop()
        if op.name not in needed:
            needed.add(op.name)
            stack.extend(t.op for t in op.inputs)
    return needed

def convert_function(bb: relax.BlockBuilder, function, inputs: Sequence, where: str,
                     functions: Mapping) -> list:
    """Emit a TensorFlow FunctionDef's ops into ``bb``, read as data (no TensorFlow graph is built).

    Parameters
    ----------
    bb : relax.BlockBuilder
        Inside a dataflow block.
    function : FunctionDef
        Its arguments are fed, in order, from ``inputs``: Relax tensors, or numpy arrays for constants
        and for resource (variable) arguments, whose value ``ReadVariableOp`` then reads.
    where : str
        Starts error messages (the file and signature, say).
    functions : mapping
        FunctionDefs by name, for the functions it calls (``PartitionedCall``, ``StatefulPartitionedCall``,
        or a function name as op type): they are converted in place, as if inlined.

    Returns
    -------
    list
        The function's results, Relax expressions or numpy arrays (results that are constants). Only the
        ops they depend on through data edges are converted.

    Raises
    ------
    UnsupportedModelError
        Naming the op (type, name and function) that cannot be converted.
    """
    where = f"{where}, function {function.signature.name}"
    args = function.signature.input_arg
    if len(args) != len(inputs):
        raise UnsupportedModelError(f"{where}: takes {len(args)} arguments, called with {len(inputs)}")
    values: dict[str, list] = {arg.name: [x] for arg, x in zip(args, inputs)}
    nodes = {n.name: n for n in function.node_def}

    def ref(name: str) -> tuple[str, int]:
        # A FunctionDef names its arguments bare and node outputs as node:output_arg:index.
        node_name, _, rest = name.partition(":")
        if not rest:
            if node_name not in values and node_name not in nodes:
                raise UnsupportedModelError(f"{where}: reference to {name}, which is neither an argument nor a node")
            return node_name, 0
        if node_name not in nodes:
            raise UnsupportedModelError(f"{where}: reference to {name}, a node the function does not have")
        out_arg, _, index = rest.partition(":")
        return node_name, _output_offset(nodes[node_name], out_arg, functions, where) + int(index or 0)

    def data_inputs(node):
        return [ref(i) for i in node.input if not i.startswith("^")]

    results = [ref(function.ret[arg.name]) for arg in function.signature.output_arg]
    # Depth-first post-order from the results (iterative: a deep network's chain outgrows Python's stack).
    order, state, stack = [], {}, [(name, False) for name, _ in reversed(results)]
    while stack:
        name, expanded = stack.pop()
        if name in values or state.get(name) == 2:
            continue
        if expanded:
            state[name] = 2
            order.append(name)
            continue
        if state.get(name) == 1:
            raise UnsupportedModelError(f"{where}: node {name} depends on itself")
        state[name] = 1
        stack.append((name, True))
        stack.extend((n, False) for n, _ in reversed(data_inputs(nodes[name])))
    for name in order:
        node = nodes[name]
        inputs_ = [_output(values, n, i) for n, i in data_inputs(node)]
        value = _convert_node(bb, node, inputs_, where, functions)
        values[name] = value if isinstance(value, list) else [value]
    return [materialize(bb, _output(values, n, i)) for n, i in results]

def _output_offset(node, out_arg: str, functions: Mapping, where: str) -> int:
    """Where ``node``'s output argument ``out_arg`` starts among its flat outputs (an argument may hold a list)."""
    from tensorflow.python.framework import op_def_registry

    signature = functions[node.op].signature if node.op in functions else op_def_registry.get(node.op)
    if signature is None:
        raise UnsupportedModelError(f"{where}: TensorFlow op {node.op} ({node.name}) is not a TensorFlow op "
                                    "nor a function of the model")
    offset = 0
    for arg in signature.output_arg:
        if arg.name == out_arg:
            return offset
        offset += (int(node.attr[arg.number_attr].i) if arg.number_attr
                   else len(node.attr[arg.type_list_attr].list.type) if arg.type_list_attr else 1)
    raise UnsupportedModelError(f"{where}: TensorFlow op {node.op} ({node.name}) has no output {out_arg}")

_CALLS = ("PartitionedCall", "StatefulPartitionedCall")

# Converted by ``convert_atrous`` (which needs the block builder), not by a function of OPS.
_ATROUS = ("SpaceToBatchND", "BatchToSpaceND")

# Ops that hand a held-back SpaceToBatchND or convolution on as it is.
_PASS_THROUGH = ("Identity", "IdentityN", "StopGradient")

def _with_defaults(node):
    """``node`` with the attributes its op defines defaults for filled in: saved FunctionDefs leave them out."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node.op)
    missing = [] if op_def is None else [
        a for a in op_def.attr if a.name not in node.attr and a.HasField("default_value")]
    if not missing:
        return node
    node = type(node).FromString(node.SerializeToString())
    for attr in missing:
        node.attr[attr.name].CopyFrom(attr.default_value)
    return node

def _convert_node(bb, node, args, where, functions):
    """The value (or list of values) of one op on ``args``."""
    import tensorflow as tf

    if node.op == "Const":
        return tf.make_ndarray(node.attr["value"].tensor)
    if node.op in _CALLS or node.op in functions:
        name = node.attr["f"].func.name if node.op in _CALLS else node.op
        if name not in functions:
            raise UnsupportedModelError(f"{where}: TensorFlow op {node.op} ({node.name}) calls function {name}, "
                                        "which the model does not hold")
        return convert_function(bb, functions[name], args, where, functions)
    converter = OPS.get(node.op)
    if converter is None and node.op not in _ATROUS:
        raise UnsupportedModelError(
            f"{where}: TensorFlow op {node.op} ({node.name}) is not supported by the TensorFlow graph importer; "
            f"supported: {', '.join(sorted([*OPS, *_ATROUS]))}")
    node = _with_defaults(node)
    try:
        held = convert_atrous(bb, node, args)
        if held is not None:
            return _emit(bb, held)
        if node.op not in _PASS_THROUGH:
            args = [materialize(bb, a) for a in args]
        return _emit(bb, converter(args, node))
    except NotConstantError as err:
        source = [i for i in node.input if not i.startswith("^")][err.index]
        raise UnsupportedModelError(
            f"{where}: TensorFlow op {node.op} ({node.name}): its {err.what} (input {err.index}, {source}) is "
            f"computed from the model's input data, not from shapes and constants only; only a {err.what} known "
            "at compile time is supported") from err
    except (NotImplementedError, ValueError, TypeError) as err:
        raise UnsupportedModelError(f"{where}: TensorFlow op {node.op} ({node.name}): {err}") from err

def _emit(bb: relax.BlockBuilder, value):
    if isinstance(value, (HeldSpaceToBatch, HeldBatchedConv)):
        return value
    if isinstance(value, list):
        return [v if v is None or isinstance(v, relax.Var) else _emit(bb, v) for v in value]
    if isinstance(value, np.generic):  # numpy reduces 0-d arrays to scalars: a constant stays an array
        return np.asarray(value)
    if is_const(value):
        return value
    value = bb.emit(value)
    if isinstance(value.ty, relax.TupleType):
        return [bb.emit(relax.TupleGetItem(value, i)) for i in range(len(value.ty.fields))]
    return value

def _output(values, name, index):
    value = values[name]
    return value[index] if isinstance(value, list) else value
