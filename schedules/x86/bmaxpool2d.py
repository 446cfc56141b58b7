"""x86 schedule of binary max-pool: parallel over output rows, words innermost."""

from __future__ import annotations

from tvm import s_tir

from ...relay_ops.bmaxpool2d import RULE
from ...strategies import register
from ..generic._util import parallel_rows


@register(RULE, ("cpu",))
def schedule_bmaxpool2d(sch: s_tir.Schedule, block) -> s_tir.Schedule | None:
    n, h, w, c, p, q = sch.get_loops(block)
    # Step 1: window loops outside the word loop, so the words vectorize.
    sch.reorder(n, h, w, p, q, c)
    parallel_rows(sch, block)
    return sch
