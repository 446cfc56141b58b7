"""The one per-user folder where bnn-tvm keeps what it builds on first use.

``$BNN_TVM_CACHE`` if set, else ``$XDG_CACHE_HOME/bnn-tvm``, else ``~/.cache/bnn-tvm``. It holds the QEMU
instruction-counter plugin (``plugins/``), the bundle's ``bnn-run`` (``runners/``), the popcount-peak
program (``programs/``), the signatures of aarch64 .so files the profiler read on the emulated board
(``signatures/``), the models the tests and benchmarks convert (``bnn_tvm.zoo``) and, unless
``$BNN_TVM_BOARD_CACHE`` names another folder, the emulated boards (``boards/``). Everything in it is
named by a hash of what it was built from, so deleting any of it only costs a rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    """The cache's root (not created)."""
    if os.environ.get("BNN_TVM_CACHE"):
        return Path(os.environ["BNN_TVM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnn-tvm"


def board_cache_dir() -> Path:
    """The folder of the emulated boards (each ~300 MB; ``$BNN_TVM_BOARD_CACHE`` moves them elsewhere)."""
    return Path(os.environ.get("BNN_TVM_BOARD_CACHE") or cache_dir() / "boards")


def build_once(path: Path, build: Callable[[Path], None]) -> Path:
    """``path``, made by ``build(partial)`` unless it exists: ``build`` writes ``partial`` beside it, which is
    then renamed into place, so an interrupted or concurrent build never leaves a torn file at ``path``."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        build(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
