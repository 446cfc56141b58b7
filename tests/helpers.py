"""Helpers shared by the tests."""

from tvm import relax


def single_op_module(make_output, *inputs):
    """A Relax module whose main takes ``inputs`` (numpy) and returns ``make_output(vars)``."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype))) for i, x in enumerate(inputs)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(make_output(*params))
        bb.emit_func_output(out)
    return bb.get()
