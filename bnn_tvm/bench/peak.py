"""This machine: its CPU, and the popcount peak of one core (binary MACs per second of ``bench_peak.c``'s XOR +
popcount + add loops on registers), against which ``bnn-tvm bench`` rates the binary kernels."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from ..cache import build_once, cache_dir
from ..runtime import physical_cores
from ..targets import host_cpu_flags

PEAK_SOURCE = Path(__file__).with_name("bench_peak.c")
CPU_FLAGS = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq", "avx512vpopcntdq", "neon",
             "asimd")


def popcount_peak(seconds: float = 0.1, trials: int = 5, cache: Path | None = None) -> dict:
    """Binary MACs per second of one core in ``bench_peak.c``'s register loops; the fastest loop is the peak.

    Each loop compiled in (``-march=native`` decides which: AVX-512 VPOPCNTQ, AVX2 nibble lookup, scalar POPCNT,
    AVX2 and scalar at once) runs ``trials`` times; a loop's rate is its fastest trial, since other tenants of
    the machine can only slow a loop down. Returns the peak, the loop that reached it, every loop's samples and
    the instruction sets the program was compiled for.
    """
    program = compile_peak_program(cache)
    paths = subprocess.run([str(program), "list"], capture_output=True, text=True, check=True).stdout.split()
    samples = {}
    for path in paths:
        out = subprocess.run([str(program), path, str(seconds), str(trials)], capture_output=True, text=True,
                             check=True).stdout
        samples[path] = [int(bits) / float(secs) for name, bits, secs in
                         (line.split() for line in out.splitlines() if not line.startswith("checksum"))]
    best = max(paths, key=lambda p: max(samples[p]))
    return {"binary_macs_per_s": max(samples[best]), "path": best, "paths": paths,
            "samples_macs_per_s": samples, "program": str(program)}


def compile_peak_program(cache: Path | None = None) -> Path:
    """``bench_peak.c`` compiled with ``gcc -O3 -march=native`` for this machine, once (cached by source and CPU)."""
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"the popcount peak needs a C compiler: {compiler} not found (set CC)")
    source = PEAK_SOURCE.read_bytes()
    machine = machine_info()
    key = hashlib.sha256(source + json.dumps([machine["cpu"], machine["flags"], compiler]).encode()).hexdigest()[:16]
    def build(partial: Path) -> None:
        subprocess.run([compiler, "-O3", "-march=native", "-o", str(partial), str(PEAK_SOURCE)], check=True,
                       capture_output=True)

    return build_once((cache or cache_dir() / "programs") / f"bench_peak-{key}", build)


def machine_info() -> dict:
    """CPU model, the CPU flags that decide the kernels (popcount, AVX2, AVX-512), logical CPUs, physical cores."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.partition(":")[2].strip() for line in info if line.startswith("model name")), None)
    except OSError:  # not Linux: the platform's own name
        pass
    cpu = cpu or platform.processor() or platform.machine()
    return {"cpu": cpu, "machine": platform.machine(), "flags": sorted(host_cpu_flags() & set(CPU_FLAGS)),
            "logical_cpus": len(os.sched_getaffinity(0)), "physical_cores": physical_cores(),
            "python": platform.python_version()}
