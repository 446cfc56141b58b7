"""Target presets: what ``--target`` accepts, and the compiler that links each one's .so.

Targets are TVM 0.27 JSON-dict targets. ``host`` detects the CPU through LLVM
(``-mcpu=native`` is rejected by TVM). Cross compilers are Debian packages;
the Makefile installs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import tvm

AARCH64_TRIPLE = "aarch64-linux-gnu"
ARMV7_TRIPLE = "armv7l-linux-gnueabihf"


@dataclass(frozen=True)
class TargetPreset:
    name: str
    description: str
    config: dict = field(default_factory=dict)
    cross_compiler: str | None = None  # None: the system C++ compiler
    runnable_here: bool = True  # False: build only (no TVM runtime for it on this machine)

    def target(self) -> tvm.target.Target:
        return tvm.target.Target(self.config)


def _host_config() -> dict:
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": os.cpu_count() or 1}


def _aarch64(name: str, description: str, mcpu: str, cores: int) -> TargetPreset:
    config = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mattr": ["+neon"], "mcpu": mcpu, "num-cores": cores}
    return TargetPreset(name, description, config, f"{AARCH64_TRIPLE}-g++", runnable_here=False)


def presets() -> dict[str, TargetPreset]:
    armv7 = {"kind": "llvm", "mtriple": ARMV7_TRIPLE, "mattr": ["+neon"], "mcpu": "cortex-a53", "num-cores": 4}
    found = [
        TargetPreset("host", "this machine's CPU, detected by LLVM", _host_config()),
        TargetPreset("x86-avx512", "x86-64 with AVX-512 and VPOPCNTDQ (Ice Lake and later, Zen 4)",
                     {"kind": "llvm", "mcpu": "icelake-server"}),
        TargetPreset("x86-avx2", "x86-64 with AVX2 (Haswell and later, Zen)", {"kind": "llvm", "mcpu": "haswell"}),
        _aarch64("aarch64", "64-bit ARM with NEON (generic)", "generic", 4),
        _aarch64("rpi4", "Raspberry Pi 4 (Cortex-A72), 64-bit OS", "cortex-a72", 4),
        _aarch64("rpi5", "Raspberry Pi 5 (Cortex-A76), 64-bit OS", "cortex-a76", 4),
        _aarch64("android-arm64", "Android arm64-v8a phones (Cortex-A76 class)", "cortex-a76", 8),
        TargetPreset("armv7", "32-bit ARM with NEON (build only: no TVM runtime wheel exists for armv7)", armv7,
                     f"{ARMV7_TRIPLE.replace('armv7l', 'arm')}-g++", runnable_here=False),
        TargetPreset("rpi3", "Raspberry Pi 3, 32-bit OS (build only)", armv7,
                     f"{ARMV7_TRIPLE.replace('armv7l', 'arm')}-g++", runnable_here=False),
    ]
    return {preset.name: preset for preset in found}


def resolve(target: str | dict | tvm.target.Target) -> tuple[tvm.target.Target, TargetPreset | None]:
    """A TVM target for a preset name, a JSON-dict target, or a Target, with its preset if any."""
    if isinstance(target, tvm.target.Target):
        return target, None
    if isinstance(target, dict):
        return tvm.target.Target(target), None
    known = presets()
    if target in known:
        return known[target].target(), known[target]
    raise ValueError(f"unknown target {target!r}; presets: {', '.join(known)} (or a JSON-dict target)")
