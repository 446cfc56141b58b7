"""x86 schedule of binary max-pool: parallel over output rows, words innermost.

Knobs (defaults in brackets): how deep into batch, rows and columns the
parallel part goes [batch and rows], and the vector width over words [none:
LLVM's own vectorizer].
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ..generic._util import sample_parallel, sample_split

MAX_VECTOR_WORDS = 16


def schedule_bmaxpool2d(sch: s_tir.Schedule, block, target: tvm.target.Target) -> s_tir.Schedule | None:
    n, h, w, c, p, q = sch.get_loops(block)
    # Step 1: window loops outside the word loop, so the words vectorize.
    sch.reorder(n, h, w, p, q, c)
    # Step 2: parallel over the output rows. Knob: how deep.
    sample_parallel(sch, [n, h, w], 2)
    # Step 3: Knob: an explicit vector width over the words.
    _, words = sample_split(sch, c, 1, max_inner=MAX_VECTOR_WORDS)
    sch.vectorize(words)
    return sch
