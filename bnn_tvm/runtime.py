"""Run compiled artifacts: load a .so and call it with numpy arrays."""

from __future__ import annotations

import json
import os
import statistics

import numpy as np
import tvm
from tvm import relax


class CompiledModel:
    """A loaded bnn-tvm .so: call it with numpy arrays, get numpy arrays back."""

    def __init__(self, module, device=None):
        self.device = device or tvm.cpu()
        self.vm = relax.VirtualMachine(module, self.device)
        self._main = self.vm["main"]

    def __call__(self, *inputs: np.ndarray):
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in inputs]
        return _to_numpy(self._main(*args))

    def input_signature(self) -> tuple[tuple[int, ...], str]:
        """Shape and dtype of the first input, as recorded by ``bnn_tvm.compile``."""
        from .build import INPUT_SIGNATURE

        (shape, dtype), *_ = json.loads(str(self.vm[INPUT_SIGNATURE]()))
        return tuple(shape), dtype

    def time(self, *inputs: np.ndarray, repeat: int = 10) -> list[float]:
        """Seconds of ``repeat`` calls, measured on the device (over RPC, without the RPC round trip)."""
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in inputs]
        self._main(*args)  # warm up: first-touch of weights and the thread pool
        timer = self.vm.time_evaluator("main", self.device, number=1, repeat=repeat)
        return list(timer(*args).results)


def _to_numpy(value):
    if isinstance(value, tvm.runtime.Tensor):
        return value.numpy()
    return [_to_numpy(v) for v in value]


def load(path: str | os.PathLike) -> CompiledModel:
    """Load a .so made by ``bnn_tvm.compile(...).export_library(path)`` on this machine."""
    return CompiledModel(tvm.runtime.load_module(os.fspath(path)))


def load_remote(path: str | os.PathLike, tracker: str, key: str, session_timeout: int = 600) -> CompiledModel:
    """Upload a .so to a board reached through an RPC tracker (``HOST:PORT``) and load it there."""
    from tvm import rpc

    from .board import parse_address

    host, port = parse_address(tracker)
    session = rpc.connect_tracker(host, port).request(key, session_timeout=session_timeout)
    session.upload(os.fspath(path))
    model = CompiledModel(session.load_module(os.path.basename(path)), session.cpu())
    model.session = session  # keep the connection alive as long as the model
    return model


def set_threads(n: int) -> None:
    """Size this process's TVM thread pool (benchmarks compare engines at equal thread counts)."""
    tvm.get_global_func("runtime.config_threadpool")(0, n)


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3
