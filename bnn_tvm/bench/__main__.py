"""``python -m bnn_tvm.bench worker ...``: one measurement of ``bnn-tvm bench``, in a process of its own."""

import sys

from .engines import main

sys.exit(main())
