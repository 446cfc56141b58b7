"""Estimated cycles of the code that ran: llvm-mca (``-mcpu`` the preset's core) gives each hot block's
steady-state cycles, weighted by how often it ran; the few instructions outside the estimated blocks are charged
at their group's estimated rate. No cache or TLB misses, no branch mispredictions: a lower bound, and LLVM 14
models the Cortex-A72 with its Cortex-A57 scheduling model."""

from __future__ import annotations

import collections
import re
import subprocess

OBJDUMP, LLVM_MCA = "aarch64-linux-gnu-objdump", "llvm-mca"
# Blocks estimated by llvm-mca, hottest first, until they cover this share of each kernel's (each group's)
# instructions: per group, so that a kernel's estimate does not depend on what ran beside it.
MCA_COVERAGE = 0.995
MCA_ITERATIONS = 100


def estimate_costs(blocks: dict, core: str, group_of) -> dict[str, tuple[float, float]]:
    """{group: (instructions, estimated cycles)} of ``blocks`` ({block: executions per vCPU}) grouped by
    ``group_of(block)``: llvm-mca on the hottest blocks, the others at their group's estimated cycles per
    instruction (or the overall one, for a group with no estimated block)."""
    cycles_per_exec = _block_cycles(blocks, core, group_of)
    totals = collections.defaultdict(lambda: [0.0, 0.0, 0.0])  # instructions; of those estimated; their cycles
    for key, execs in blocks.items():
        total, instructions = totals[group_of(key)], sum(execs) * key[2]
        total[0] += instructions
        if key in cycles_per_exec:
            total[1] += instructions
            total[2] += sum(execs) * cycles_per_exec[key]
    overall = sum(t[2] for t in totals.values()) / max(sum(t[1] for t in totals.values()), 1.0)
    return {group: (instructions, cycles + (instructions - estimated) * (cycles / estimated if estimated else overall))
            for group, (instructions, estimated, cycles) in totals.items()}


def _block_cycles(blocks: dict, core: str, group_of) -> dict:
    """{block: estimated cycles per execution} for the hottest blocks of each group, by llvm-mca on ``core``."""
    groups = collections.defaultdict(list)
    for key, execs in blocks.items():
        if sum(execs) > 0:
            groups[group_of(key)].append((sum(execs) * key[2], key))
    hottest = []
    for members in groups.values():
        total, covered = sum(weight for weight, _ in members), 0.0
        for weight, key in sorted(members, key=lambda member: (-member[0], member[1])):
            if covered >= MCA_COVERAGE * total:
                break
            hottest.append(key)
            covered += weight
    code = {}
    for module in {key[0] for key in hottest}:
        listing = _disassembly(module)
        for key in (k for k in hottest if k[0] == module):
            lines = [listing.get(key[1] + 4 * i) for i in range(key[2])]
            if all(lines):
                code[key] = lines
    estimates = _mca(list(code.items()), core)
    if len(estimates) < len(code):  # one block llvm-mca cannot read fails its whole batch: retry them one by one
        for item in code.items():
            if item[0] not in estimates:
                estimates.update(_mca([item], core))
    return estimates


_ADDRESS_OPERAND = re.compile(r"\b[0-9a-f]+ <[^>]*>")


def _disassembly(module: str) -> dict[int, str]:
    """{ELF address: instruction as llvm-mc reads it} for a module's code; addresses (branch targets,
    literals, pages) become ``.Lb``, which ``_mca`` turns into a label at the start of each block."""
    out = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", module], capture_output=True, text=True).stdout
    listing = {}
    for line in out.splitlines():
        address, sep, text = line.partition(":\t")
        if not sep or not address.strip() or any(c not in "0123456789abcdef" for c in address.strip()):
            continue
        text = _ADDRESS_OPERAND.sub(".Lb", text.split("//")[0]).replace("\t", " ").strip()
        if text and not text.startswith((".inst", "udf", ".word")):
            listing[int(address, 16)] = text
    return listing


def _mca(blocks: list, core: str) -> dict:
    """llvm-mca's cycles per execution of each block, every block a code region of one run."""
    if not blocks:
        return {}
    source = "".join(f"# LLVM-MCA-BEGIN b{i}\n.Lb{i}:\n" + "\n".join(line.replace(".Lb", f".Lb{i}") for line in lines)
                     + f"\n# LLVM-MCA-END b{i}\n" for i, (_, lines) in enumerate(blocks))
    done = subprocess.run([LLVM_MCA, "-mtriple=aarch64", f"-mcpu={core}", f"-iterations={MCA_ITERATIONS}",
                           "-all-views=false", "-summary-view"], input=source, capture_output=True, text=True)
    if done.returncode != 0:
        return {}
    cycles = [int(c) / MCA_ITERATIONS for c in re.findall(r"Total Cycles:\s+(\d+)", done.stdout)]
    return dict(zip((key for key, _ in blocks), cycles)) if len(cycles) == len(blocks) else {}
