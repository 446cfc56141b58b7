import itertools

import numpy as np
import pytest

import bnn_tvm

_counter = itertools.count()


@pytest.fixture
def build_and_load(tmp_path):
    """Compile a model, export it to a fresh .so (dlopen caches by path) and load it back."""

    def run(model, target="host"):
        path = tmp_path / f"model{next(_counter)}.so"
        bnn_tvm.compile(model, target=target).export_library(path)
        return bnn_tvm.load(path)

    return run


@pytest.fixture
def rng():
    return np.random.default_rng(0)
