import itertools
import os

# TensorFlow's start-up lines (CUDA, oneDNN) are noise in test output; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

import bnn_tvm

_counter = itertools.count()


@pytest.fixture
def build_and_load(tmp_path):
    """Compile a model, export it to a fresh .so (dlopen caches by path) and load it back."""

    def run(model, target="host", **options):
        path = tmp_path / f"model{next(_counter)}.so"
        bnn_tvm.compile(model, target=target, **options).export_library(path)
        return bnn_tvm.load(path)

    return run


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def emulated_board():
    """One real RPC tracker and one emulated aarch64 board (qemu) for the whole test session."""
    from bnn_tvm import board

    port = board.free_port()
    key = f"test-aarch64-{port}"
    board.start_tracker(port)
    try:
        board.start_emulated_board(f"127.0.0.1:{port}", key, port=board.free_port())
        yield f"127.0.0.1:{port}", key
    finally:
        board.stop_board(key)
        board.stop_tracker(port)
