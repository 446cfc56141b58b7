"""ARM speed without a board: exact instruction counts and estimated cycles of an aarch64 build.

The emulated board (``bnn_tvm.board``) runs the model under Debian's dynamic ``qemu-aarch64`` (the static
build cannot load plugins) with ``insn_count.c``, a TCG plugin that counts every executed instruction
per translation block, and ``-cpu`` set to the preset's core. ``guest.py`` runs inside: it records each
kernel call's shapes, warms up, runs N inferences and saves its memory map. Two runs, N = 1 and N = 3,
are subtracted, so loading and warm-up cancel: what is left is one inference, and it repeats exactly.
The model is fed every input, the user's (as ``bnn-tvm run`` takes them) or random ones, checked on the host
against the signature the .so recorded.
Blocks are attributed to kernels through the model library's symbols (TVM's parallel bodies have none
and follow their kernel's ``_compute_`` function, so the preceding symbol names them).

Cycles are an estimate: llvm-mca (``-mcpu`` the preset's core) gives each hot block's steady-state
cycles, weighted by how often it ran; the few instructions outside the estimated blocks are charged at
their kernel's estimated rate. No cache or TLB misses, no branch mispredictions: a lower bound, and
LLVM 14 models the Cortex-A72 with its Cortex-A57 scheduling model. qemu's own wall time is never used.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import board
from ..cache import build_once, cache_dir
from ..targets import presets

PLUGIN_SOURCE = Path(__file__).with_name("insn_count.c")
GUEST = Path(__file__).with_name("guest.py")
QEMU = "qemu-aarch64"
OBJDUMP, NM, LLVM_MCA = "aarch64-linux-gnu-objdump", "aarch64-linux-gnu-nm", "llvm-mca"
RUNS = (1, 3)
# Blocks estimated by llvm-mca, hottest first, until they cover this share of each kernel's (each group's)
# instructions: per group, so that a kernel's estimate does not depend on what ran beside it.
MCA_COVERAGE = 0.995
MCA_ITERATIONS = 100
GUEST_TIMEOUT = 3600


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


def profile(model, target: str = "rpi4", threads: int = 1, reference=None,
            cache: Path = board.BOARD_CACHE, inputs_file=None, input_files=(), seed: int = 0) -> ArmProfile:
    """Profile an aarch64 bnn-tvm ``.so`` (built for ``target``) on the emulated board.

    ``reference``: a float .tflite to count under TFLite with XNNPACK on the same board, side by side.
    ``inputs_file``, ``input_files``, ``seed``: the inputs, as ``bnn-tvm run`` takes them (``--inputs FILE.npz``
    keyed by input name, ``--input [NAME=]FILE.npy`` repeated, ``--seed``); inputs left out are random (seed
    ``seed`` plus the input's index). The reference is fed the same arrays, matched by its signature keys (else
    by position).

    Raises
    ------
    signature.InputError
        An input that does not fit the model, naming the file and the input (``bnn-tvm run``'s messages).
    ProfileError
        Anything else: a missing tool, a file that is not an aarch64 library, a reference that does not take the
        model's inputs, a failure on the board.
    """
    from ..bench import input_sources, save_inputs
    from ..signature import read_inputs

    model = Path(model).resolve()
    if not model.is_file():
        raise ProfileError(f"{model}: no such file")
    with open(model, "rb") as file:
        header = file.read(20)
    if header[:4] != b"\x7fELF" or header[18:20] != b"\xb7\x00":  # e_machine: EM_AARCH64
        raise ProfileError(f"{model}: not an aarch64 shared library (compile it with --target {target})")
    core, clock = _core(target)
    _check_tools()
    folder = board.build_emulated_board(cache)
    # The host checks the inputs, against the signature the guest reads out of the .so (the host cannot load an
    # aarch64 library): the guest cannot import bnn-tvm, and checking there would need a second copy of
    # read_inputs' rules (an .npz, named and unnamed .npy files, random inputs and their seeds) and of its
    # messages. One uncounted emulated start (about 10 s; once per .so, cached by the file's hash) buys the very
    # checks and messages of `bnn-tvm run`, before any counted run, and arrays the reference can share.
    signature = model_signature(model, core, folder)
    input_files = [str(text) for text in input_files or ()]  # [NAME=]FILE.npy; Paths too
    arrays = read_inputs(signature, inputs_file, input_files, seed=seed)
    sources = input_sources(signature, inputs_file, input_files)
    outputs = [spec.name for spec in signature.outputs]
    with tempfile.TemporaryDirectory() as scratch:
        fed = save_inputs(Path(scratch) / "inputs.npz", signature, arrays)
        if reference is not None:  # checked before the counted runs, which take minutes on a large model
            reference = Path(reference).resolve()
            reference_fed, reference_outputs = _reference_inputs(reference, signature, arrays,
                                                                 Path(scratch) / "reference.npz")
        result = _profile("tvm", model, target, core, clock, threads, folder, fed, outputs)
        if reference is not None:
            result.reference = _profile("tflite", reference, target, core, clock, threads, folder, reference_fed,
                                        reference_outputs)
    result.inputs = [{"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype,
                      **({"source": source} if source else {"seed": seed + i})}
                     for i, (spec, source) in enumerate(zip(signature.inputs, sources, strict=True))]
    return result


def model_signature(model: Path, core: str, folder: Path):
    """The ``signature.Signature`` an aarch64 bnn-tvm .so recorded, read on the emulated board (uncounted) and
    cached by the file's contents."""
    from ..signature import Signature

    key = hashlib.sha256(Path(model).read_bytes()).hexdigest()[:16]

    def read(partial: Path) -> None:
        argv = [QEMU, "-cpu", core, "-L", str(folder / "sysroot"), str(folder / "sysroot/usr/bin/python3.11"),
                str(GUEST), "signature", str(model), str(partial)]
        _run_guest(argv, _guest_env(folder, 1), model, "its signature could not be read on the emulated board")

    return Signature.from_json(build_once(cache_dir() / "signatures" / f"{key}.json", read).read_text())


def _reference_inputs(reference: Path, signature, arrays: list, path: Path) -> tuple[Path, list[str]]:
    """The model's input ``arrays`` as the reference .tflite takes them, saved to ``path`` in the reference's
    order, and the reference's output names: matched by the reference's signature keys (the names bnn-tvm's
    frontend gives, by tensor index), else by position; each checked against the reference's own tensor."""
    import numpy as np

    if not reference.is_file():
        raise ProfileError(f"{reference}: no such file")
    try:
        import tflite

        from ..frontend.tflite import _io_names

        parsed = tflite.Model.GetRootAsModel(reference.read_bytes(), 0)
        graph = parsed.Subgraphs(0)
        names, output_names = _io_names(parsed)
        tensors = [graph.Tensors(graph.Inputs(i)) for i in range(graph.InputsLength())]
        codes = [parsed.OperatorCodes(i).CustomCode() for i in range(parsed.OperatorCodesLength())]
    except Exception as error:  # noqa: BLE001 - any parse failure: the file is not a .tflite model
        raise ProfileError(f"{reference}: not a .tflite model the reference can run ({error})") from None
    lce = sorted({code.decode() for code in codes if code and code.decode().startswith("Lce")})
    if lce:
        raise ProfileError(f"{reference}: an LCE-converted model ({', '.join(lce)}): the reference runs under TFLite, "
                           "which has no LCE kernels; give the float model of the stock TFLite converter")
    types = {value: key.lower() for key, value in vars(tflite.TensorType).items() if not key.startswith("_")}
    ours = signature.names()
    if sorted(names) == sorted(ours):
        order = [ours.index(name) for name in names]
    elif len(names) == len(ours):
        order = list(range(len(ours)))
    else:
        raise ProfileError(f"{reference}: the reference takes {len(names)} input{'s' * (len(names) != 1)} "
                           f"({', '.join(map(repr, names))}), the model {len(ours)} ({', '.join(map(repr, ours))})")
    for name, i, tensor in zip(names, order, tensors, strict=True):
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        dtype = types.get(tensor.Type(), f"TFLite type {tensor.Type()}")
        x = arrays[i]
        if (tuple(x.shape), str(x.dtype)) != (shape, dtype):
            raise ProfileError(f"{reference}: the reference's input {name!r} is {dtype} [{','.join(map(str, shape))}], "
                               f"the model's input {ours[i]!r} {x.dtype} [{','.join(map(str, x.shape))}]: give a "
                               "reference that takes the model's inputs")
    with open(path, "wb") as file:  # in the reference's order, which the guest feeds (names may repeat)
        np.savez(file, *(arrays[i] for i in order))
    return path, output_names


def _core(target: str) -> tuple[str, float | None]:
    preset = presets().get(target)
    if preset is None or preset.core is None:
        aarch64 = [name for name, p in presets().items() if p.core]
        raise ProfileError(f"target {target!r} is not an emulated aarch64 preset; use one of {', '.join(aarch64)}")
    return preset.core, preset.clock_ghz


def _check_tools() -> None:
    missing = [tool for tool in (QEMU, OBJDUMP, NM, LLVM_MCA) if shutil.which(tool) is None]
    if missing:
        raise ProfileError(f"{', '.join(missing)} missing: apt-get install qemu-user llvm binutils-aarch64-linux-gnu "
                           "(make installs them)")


def plugin_library() -> Path:
    """``insn_count.c`` compiled for this machine's qemu on first use, into the user's cache (keyed by the source
    and the compiler)."""
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        raise ProfileError(f"{compiler} missing: the instruction counter is a QEMU plugin built on first use with "
                           "the system C compiler: apt-get install gcc (or set CC)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(PLUGIN_SOURCE.read_bytes() + version.encode()).hexdigest()[:16]

    def build(partial: Path) -> None:
        done = subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-shared", "-fPIC",
                               "-o", str(partial), str(PLUGIN_SOURCE)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ProfileError(f"building the QEMU plugin {PLUGIN_SOURCE} with {compiler} failed:\n"
                               f"{done.stderr[-3000:]}")

    return build_once(cache_dir() / "plugins" / f"insn_count-{key}.so", build)


def _profile(kind, model, target, core, clock, threads, folder, inputs, output_names) -> ArmProfile:
    with tempfile.TemporaryDirectory() as scratch:
        low, high = (_count(kind, model, core, threads, runs, folder, Path(scratch) / f"n{runs}", inputs)
                     for runs in RUNS)
    blocks, calls = _per_inference(low, high, RUNS[1] - RUNS[0]), high["calls"]
    vcpus = max(len(execs) for execs in blocks.values())  # guest threads, numbered as qemu met them
    symbols = _symbols(str(model)) if kind == "tvm" else None

    def row_of(key) -> str:
        return _kernel_name(symbols, key[1]) if key[0] == str(model) else _group(key[0])

    rows: dict[str, KernelCost] = {}
    for key, execs in blocks.items():
        row = rows.setdefault(row_of(key), KernelCost(row_of(key), 0, 0.0, 0.0, thread_instructions=[0.0] * vcpus))
        for thread, count in enumerate(execs):
            row.thread_instructions[thread] += count * key[2]
    for name, (instructions, cycles) in _costs(blocks, core, row_of).items():
        rows[name].instructions, rows[name].cycles = instructions, cycles
    calls_of = collections.Counter(call["kernel"] for call in calls)
    for call in calls:
        if call["kernel"] in rows:
            rows[call["kernel"]].binary_macs += binary_macs(call["kernel"], call["args"])
            if "bconv2d" in call["kernel"]:
                rows[call["kernel"]].channels_in = call["args"][0][0][-1] * 32
    for name, row in rows.items():
        row.calls = calls_of.get(name, 0)
    kernels = sorted((r for r in rows.values() if not r.name.startswith("(")), key=lambda r: -r.instructions)
    overhead = sorted((r for r in rows.values() if r.name.startswith("(")), key=lambda r: -r.instructions)
    outputs = high["outputs"]
    names = output_names if len(set(output_names)) == len(outputs) == len(output_names) else \
        [f"output_{i}" for i in range(len(outputs))]  # a reference's names may repeat (a damaged file)
    return ArmProfile(model.name, target, core, clock, threads, kernels, overhead,
                      outputs=dict(zip(names, outputs, strict=True)))


def kernel_cycles(kernels: list, target: str = "rpi4", runs: int = 3, cache: Path = board.BOARD_CACHE) -> list:
    """Estimated cycles per call of each kernel library in ``kernels``, [(path, MetaSchedule argument infos)],
    on ``target``'s emulated core: all run in one emulated process, each counted in its own library. None for a
    kernel that failed to run. (How the emulated board ranks tuning candidates.)"""
    core, _ = _core(target)
    _check_tools()
    folder = board.build_emulated_board(cache)
    with tempfile.TemporaryDirectory() as scratch:
        spec = Path(scratch) / "kernels.json"
        spec.write_text(json.dumps([{"path": str(Path(path).resolve()), "args": args} for path, args in kernels]))
        counted = _count("kernels", spec, core, 1, runs, folder, Path(scratch) / "run")
    paths = [str(Path(path).resolve()) for path, _ in kernels]
    blocks = {key: [sum(execs) / runs] for key, execs in counted["blocks"].items() if key[0] in paths}
    costs = _costs(blocks, core, lambda key: key[0])
    failed = set(counted["calls"])
    return [None if i in failed or path not in costs else costs[path][1] for i, path in enumerate(paths)]


def binary_macs(kernel: str, args: list) -> int:
    """Binary multiply-accumulates of one call of a binary kernel, from its arguments' [shape, dtype] (0 for others).

    bconv2d: input [N, H, W, Cin/32] packed, output [N, OH, OW, Cout] (or Cout/32 words when packed), filter
    [Cout, KH, KW, Cin/32/groups] or, repacked for NEON, [Cout/32, KH, KW, 32, Cin/32 rounded up to 4 words]:
    N * OH * OW * Cout * KH * KW * Cin / groups. bdense: input [N, K/32], output [N, Cout]: N * Cout * K.
    Channels count in whole 32-bit words, as the kernels process them; a grouped NEON filter whose groups
    are under 4 words deep counts as one group (its padding hides the group count).
    """
    (x, _), (w, _), (out, out_dtype) = args[0], args[1], args[-1]
    cout = out[-1] * (32 if out_dtype == "int32" else 1)
    if "bconv2d" in kernel:
        groups = max(x[-1] // w[-1], 1)
        return out[0] * out[1] * out[2] * cout * w[1] * w[2] * x[-1] * 32 // groups
    if "bdense" in kernel:
        return out[0] * cout * x[-1] * 32
    return 0


def _guest_env(folder: Path, threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(folder / "site"), "TVM_USE_RUNTIME_LIB": "1",
            "TVM_NUM_THREADS": str(threads), "TVM_BIND_THREADS": "0", "OMP_NUM_THREADS": str(threads),
            "PYTHONHASHSEED": "0"}


def _run_guest(argv: list[str], env: dict, model: Path, failed: str) -> None:
    """Run the guest; a failure is a ProfileError: the guest's own one-line error when it gave one, else
    ``failed`` and the end of its stderr."""
    from .guest import ERROR_EXIT, ERROR_PREFIX

    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=GUEST_TIMEOUT)
    except subprocess.TimeoutExpired as error:
        raise ProfileError(f"{model.name} did not finish on the emulated board within {GUEST_TIMEOUT} s") from error
    if done.returncode == ERROR_EXIT:
        said = [line for line in done.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
        if said:
            raise ProfileError(f"{model}: {said[-1].removeprefix(ERROR_PREFIX)}")
    if done.returncode != 0:
        raise ProfileError(f"{model.name} {failed}:\n{done.stderr[-3000:]}")


def _count(kind, model, core, threads, runs, folder, prefix, inputs=None) -> dict:
    """Run the guest under the counter; {(module, ELF address, size): [executions per vCPU]}, the calls and (for a
    model, fed the .npz ``inputs``) its outputs in order."""
    sysroot = folder / "sysroot"
    plugin = f"{plugin_library()},out={prefix}.counts" + (",per_vcpu=1" if threads > 1 else "")
    files = [f"{prefix}.calls", f"{prefix}.maps"] if kind == "kernels" else \
        [str(inputs), f"{prefix}.calls", f"{prefix}.outputs.npz", f"{prefix}.maps"]
    argv = [QEMU, "-cpu", core, "-L", str(sysroot), "-plugin", plugin, str(sysroot / "usr/bin/python3.11"),
            str(GUEST), kind, str(model), str(threads), str(runs), *files]
    _run_guest(argv, _guest_env(folder, threads), model, "failed on the emulated board")
    outputs = []
    if kind != "kernels":
        import numpy as np

        with np.load(f"{prefix}.outputs.npz") as saved:
            outputs = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    maps = _read_maps(Path(f"{prefix}.maps"))
    starts = [m[0] for m in maps]
    blocks = collections.defaultdict(lambda: [0])
    for line in Path(f"{prefix}.counts").read_text().splitlines():
        _, vaddr, size, *execs = line.split()
        vaddr = int(vaddr, 16)
        i = bisect.bisect_right(starts, vaddr) - 1
        module, address = ("[anonymous]", vaddr)
        if i >= 0 and vaddr < maps[i][1]:
            module, address = maps[i][2], vaddr - maps[i][3]
        slot = blocks[(module, address, int(size))]
        slot.extend([0] * (len(execs) - len(slot)))
        for vcpu, count in enumerate(execs):
            slot[vcpu] += int(count)
    return {"blocks": blocks, "calls": json.loads(Path(f"{prefix}.calls").read_text()), "outputs": outputs}


def _read_maps(path: Path) -> list[tuple[int, int, str, int]]:
    """[(start, end, file, load base)] of the guest's mappings; the base is where the file's offset 0 sits."""
    maps, bases = [], {}
    for line in path.read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        name = fields[5].strip() if len(fields) > 5 else ""
        offset = int(fields[2], 16)
        if name.startswith("/"):
            bases.setdefault(name, start - offset)
            maps.append((start, end, name, bases[name]))
        else:
            maps.append((start, end, name or "[anonymous]", 0))
    return sorted(maps)


def _per_inference(low: dict, high: dict, runs: int) -> dict:
    """{block: [executions per inference per vCPU]} from the difference of two runs; blocks that ran only in
    set-up (equal counts) drop out."""
    result = {}
    for key in high["blocks"].keys() | low["blocks"].keys():
        hi, lo = high["blocks"].get(key, [0]), low["blocks"].get(key, [0])
        width = max(len(hi), len(lo))
        diff = [((hi + [0] * width)[v] - (lo + [0] * width)[v]) / runs for v in range(width)]
        if any(diff):
            result[key] = diff
    return result


def _symbols(module: str) -> tuple[list[int], list[str]]:
    out = subprocess.run([NM, "--defined-only", module], capture_output=True, text=True).stdout
    found = sorted((int(f[0], 16), f[2]) for f in map(str.split, out.splitlines()) if len(f) == 3 and f[1] in "tTwW")
    return [a for a, _ in found], [n for _, n in found]


def _kernel_name(symbols, address: int) -> str:
    addresses, names = symbols
    i = bisect.bisect_right(addresses, address) - 1
    name = names[i] if i >= 0 else "?"
    return name.removeprefix("__tvm_ffi_").removesuffix("_compute_")


def _group(module: str) -> str:
    base = os.path.basename(module)
    if base.startswith("libtvm"):
        return "(TVM runtime: VM, thread pool)"
    if base.startswith(("libc.so", "libm.so", "libstdc++", "libgcc", "ld-linux", "libgomp", "libpthread")):
        return "(C and C++ libraries)"
    if base.startswith("_pywrap_tensorflow") or "litert" in module:
        return "(TFLite with XNNPACK)"
    return "(Python and the rest)"


def _costs(blocks: dict, core: str, group_of) -> dict[str, tuple[float, float]]:
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
