"""What ``bnn-tvm profile`` found: each kernel's instructions (exact) and estimated cycles per inference, and the
table it prints."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


class ProfileError(RuntimeError):
    """The profile could not be taken; the message says what is missing or what failed."""


@dataclass


class KernelCost:
    """One kernel's cost per inference (or a group of non-kernel code: the VM, libc, Python)."""

    name: str
    calls: int
    instructions: float
    cycles: float
    binary_macs: int = 0
    channels_in: int = 0  # a binary convolution's input depth (32 per packed word; 0 for other kernels)
    thread_instructions: list[float] = field(default_factory=list)  # per guest thread (vCPU), by qemu's numbering


@dataclass


class ArmProfile:
    """Per-inference instruction counts (exact) and cycle estimates of one model on one emulated core."""

    model: str
    target: str
    core: str
    clock_ghz: float | None
    threads: int
    kernels: list[KernelCost]
    overhead: list[KernelCost]
    reference: ArmProfile | None = None
    # What the model was fed, in its order: {"name", "shape", "dtype", and "source" (a file) or "seed" (random)}.
    inputs: list[dict] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)  # {output name: the board's output for those inputs}

    @property
    def instructions(self) -> float:
        return sum(k.instructions for k in self.kernels + self.overhead)

    @property
    def cycles(self) -> float:
        """Estimated cycles per inference; with several threads, those of the busiest thread."""
        if self.threads == 1:
            return sum(k.cycles for k in self.kernels + self.overhead)
        per_thread = collections.defaultdict(float)
        for kernel in self.kernels + self.overhead:
            share = kernel.cycles / kernel.instructions if kernel.instructions else 0.0
            for thread, count in enumerate(kernel.thread_instructions):
                per_thread[thread] += count * share
        return max(per_thread.values())

    def kernel_instructions_per_thread(self) -> list[float]:
        """Instructions in model kernels per guest thread (vCPU), of the threads that ran any."""
        per_thread = collections.defaultdict(float)
        for kernel in self.kernels:
            for thread, count in enumerate(kernel.thread_instructions):
                per_thread[thread] += count
        return [count for _, count in sorted(per_thread.items()) if count]

    @property
    def estimated_ms(self) -> float | None:
        return self.cycles / (self.clock_ghz * 1e6) if self.clock_ghz else None

    def report(self) -> str:
        lines = [f"{self.model}: {self.target} build on the emulated board, {self.core} model, "
                 f"{self.threads} thread{'s' if self.threads > 1 else ''}, per inference",
                 "instructions are exact counts; cycles are ESTIMATES (llvm-mca, steady state, no cache misses "
                 "or mispredictions: a lower bound)"]
        if self.inputs:
            lines.append("input" + "s" * (len(self.inputs) > 1) + ": " + "; ".join(
                f"{t['name']!r} {t['dtype']} [{','.join(map(str, t['shape']))}] "
                + (f"from {t['source']}" if t.get("source") else f"random (seed {t['seed']})") for t in self.inputs))
        lines.append("")
        header = f"{'kernel':<44} {'calls':>5} {'instructions':>13} {'est. cycles':>12} {'bMAC/insn':>9} " \
                 f"{'bMAC/cyc':>8} {'share':>6}"
        lines.append(header)
        total = self.instructions or 1.0
        for row in self.kernels + self.overhead:
            macs = (f"{row.binary_macs / row.instructions:9.1f} {row.binary_macs / row.cycles:8.1f}"
                    if row.binary_macs and row.instructions and row.cycles else f"{'':9} {'':8}")
            lines.append(f"{row.name[:44]:<44} {row.calls or '':>5} {row.instructions:13,.0f} {row.cycles:12,.0f} "
                         f"{macs} {100 * row.instructions / total:5.1f}%")
        binary = [k for k in self.kernels if k.binary_macs]
        if binary:
            macs, insns, cycles = (sum(getattr(k, a) for k in binary) for a in ("binary_macs", "instructions", "cycles"))
            lines.append(f"{'all binary kernels':<44} {'':>5} {insns:13,.0f} {cycles:12,.0f} {macs / insns:9.1f} "
                         f"{macs / cycles:8.1f} {100 * insns / total:5.1f}%")
        lines.append(f"{'total':<44} {'':>5} {self.instructions:13,.0f} {self.cycles:12,.0f}")
        if self.threads > 1:
            lines.append("model-kernel instructions per guest thread that ran them: "
                         + ", ".join(f"{count:,.0f}" for count in self.kernel_instructions_per_thread()))
        if self.estimated_ms is not None:
            lines.append(f"estimated latency at {self.clock_ghz:g} GHz: {self.estimated_ms:.2f} ms (an estimate, "
                         "not a measurement)")
        if self.reference is not None:
            ref = self.reference
            lines.append(f"reference {ref.model} (TFLite with XNNPACK, same board, counter and inputs): "
                         f"{ref.instructions:,.0f} instructions, {ref.cycles:,.0f} estimated cycles"
                         + (f", {ref.estimated_ms:.2f} ms estimated" if ref.estimated_ms is not None else "")
                         + f"; bnn-tvm uses {ref.instructions / self.instructions:.2f}x fewer instructions")
        return "\n".join(lines)
