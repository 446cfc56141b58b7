"""Target presets: what ``--target`` accepts, and the compiler that links each one's .so.

Targets are TVM 0.27 JSON-dict targets. ``host`` detects the CPU through LLVM
(``-mcpu=native`` is rejected by TVM).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import tvm


@dataclass(frozen=True)
class TargetPreset:
    name: str
    description: str
    config: dict = field(default_factory=dict)
    cross_compiler: str | None = None  # None: the system C++ compiler

    def target(self) -> tvm.target.Target:
        return tvm.target.Target(self.config)


def _host_config() -> dict:
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": os.cpu_count() or 1}


def presets() -> dict[str, TargetPreset]:
    return {
        "host": TargetPreset("host", "this machine's CPU, detected by LLVM", _host_config()),
    }


def resolve(target: str | dict | tvm.target.Target) -> tuple[tvm.target.Target, TargetPreset | None]:
    """A TVM target for a preset name, a JSON-dict target, or a Target, with its preset if any."""
    if isinstance(target, tvm.target.Target):
        return target, None
    if isinstance(target, dict):
        return tvm.target.Target(target), None
    known = presets()
    if target in known:
        return known[target].target(), known[target]
    raise ValueError(f"unknown target {target!r}; presets: {', '.join(sorted(known))} (or a JSON-dict target)")
