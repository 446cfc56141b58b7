"""Run compiled artifacts: load a .so and call it with numpy arrays."""

from __future__ import annotations

import os
import statistics
import time

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

        (shape, dtype), *_ = self.vm[INPUT_SIGNATURE]()
        return tuple(int(d) for d in shape), str(dtype)

    def time(self, *inputs: np.ndarray, repeat: int = 10, warmup: int = 2) -> list[float]:
        """Wall-clock seconds of ``repeat`` calls (after ``warmup``), inputs already on the device."""
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in inputs]
        for _ in range(warmup):
            self._main(*args)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            self._main(*args)
            times.append(time.perf_counter() - start)
        return times


def _to_numpy(value):
    if isinstance(value, tvm.runtime.Tensor):
        return value.numpy()
    return [_to_numpy(v) for v in value]


def load(path: str | os.PathLike) -> CompiledModel:
    """Load a .so made by ``bnn_tvm.compile(...).export_library(path)`` on this machine."""
    return CompiledModel(tvm.runtime.load_module(os.fspath(path)))


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3
