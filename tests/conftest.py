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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def emulated_board():
    """One real RPC tracker and one emulated aarch64 board (qemu) for the whole test session."""
    from bnn_tvm import board

    port, key = _free_port(), f"test-aarch64-{_free_port()}"
    board.start_tracker(port)
    try:
        board.start_emulated_board(f"127.0.0.1:{port}", key, port=_free_port())
        yield f"127.0.0.1:{port}", key
    finally:
        board.stop_board(key)
        board.stop_tracker(port)
