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
    # The core the emulated board counts and estimates cycles for (qemu -cpu, llvm-mca -mcpu; aarch64 only),
    # and the clock that turns estimated cycles into an estimated latency (None: the device's clock varies).
    core: str | None = None
    clock_ghz: float | None = None
    # /proc/cpuinfo flags an x86 CPU needs to run this preset's code (its mcpu's instruction sets).
    cpu_flags: tuple[str, ...] = ()

    def runs_on_this_cpu(self) -> bool:
        """Whether this machine can run the preset's .so (an AVX-512 build on a CPU without it dies of SIGILL)."""
        return self.runnable_here and set(self.cpu_flags) <= host_cpu_flags()

    def target(self) -> tvm.target.Target:
        return tvm.target.Target(self.config)


def host_cpu_flags() -> set[str]:
    """This CPU's feature flags, as Linux lists them in /proc/cpuinfo ("flags" on x86, "Features" on ARM; empty
    where there is none)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((set(line.split(":", 1)[1].split()) for line in cpuinfo
                         if line.startswith(("flags", "Features"))), set())
    except OSError:
        return set()


# What LLVM's icelake-server and haswell enable, by their /proc/cpuinfo names.
AVX512_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512vbmi", "avx512_vbmi2", "avx512_vnni",
                "avx512_bitalg", "avx512_vpopcntdq", "avx512ifma", "gfni", "vaes", "vpclmulqdq")
AVX2_FLAGS = ("avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm")


def _host_config() -> dict:
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": os.cpu_count() or 1}


def _aarch64(name: str, description: str, mcpu: str, cores: int, clock_ghz: float | None = None) -> TargetPreset:
    config = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mattr": ["+neon"], "mcpu": mcpu, "num-cores": cores}
    core = "cortex-a72" if mcpu == "generic" else mcpu  # a generic build is profiled on the Raspberry Pi 4's core
    return TargetPreset(name, description, config, f"{AARCH64_TRIPLE}-g++", runnable_here=False, core=core,
                        clock_ghz=clock_ghz)


def presets() -> dict[str, TargetPreset]:
    # gnueabihf passes floats in VFP registers; LLVM's default soft-float objects would not link with its libraries.
    armv7 = {"kind": "llvm", "mtriple": ARMV7_TRIPLE, "mattr": ["+neon"], "mcpu": "cortex-a53", "num-cores": 4,
             "mfloat-abi": "hard"}
    found = [
        TargetPreset("host", "this machine's CPU, detected by LLVM", _host_config()),
        TargetPreset("x86-avx512", "x86-64 with AVX-512 and VPOPCNTDQ (Ice Lake and later, Zen 4)",
                     {"kind": "llvm", "mcpu": "icelake-server"}, cpu_flags=AVX512_FLAGS),
        TargetPreset("x86-avx2", "x86-64 with AVX2 (Haswell and later, Zen)", {"kind": "llvm", "mcpu": "haswell"},
                     cpu_flags=AVX2_FLAGS),
        _aarch64("aarch64", "64-bit ARM with NEON (generic)", "generic", 4),
        _aarch64("rpi4", "Raspberry Pi 4 (Cortex-A72 at 1.5 GHz), 64-bit OS", "cortex-a72", 4, clock_ghz=1.5),
        _aarch64("rpi5", "Raspberry Pi 5 (Cortex-A76 at 2.4 GHz), 64-bit OS", "cortex-a76", 4, clock_ghz=2.4),
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
