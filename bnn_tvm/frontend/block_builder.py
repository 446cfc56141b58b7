"""Building a frontend's ``main`` with TVM's BlockBuilder, so that a refused model leaves nothing behind."""

from __future__ import annotations

import contextlib

from tvm import relax


@contextlib.contextmanager
def main_function(bb: relax.BlockBuilder, params: list[relax.Var]):
    """``bb.function("main", params)``.

    An importer refuses a model by raising from inside; TVM's function scope then leaves its binding block
    open, and the BlockBuilder's destructor prints "BlockBuilder destroyed with remaining blocks!" after the
    one error line the user should see. The block is closed here instead.
    """
    try:
        with bb.function("main", params):
            yield
    except BaseException:
        drop_open_block(bb)
        raise


def drop_open_block(bb: relax.BlockBuilder) -> None:
    """Close the binding block a function scope that ended in an exception leaves open (its destructor would
    warn about it)."""
    try:
        bb._end_block()  # noqa: SLF001 - TVM has no public way to drop the open block
    except Exception:  # noqa: BLE001 - none was open (the scope failed before opening one): nothing to drop
        pass
