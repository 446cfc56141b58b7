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

Cycles are an estimate (``mca``: llvm-mca on the hot blocks, a lower bound); qemu's own wall time is never used.
The guest's runs and what they count are ``emulator``'s; the table is ``results``'.
"""

from __future__ import annotations

import bisect
import collections
import json
import os
import shutil
import tempfile
from pathlib import Path

from .. import board, elf
from ..profiler import binary_macs
from ..signature import input_sources, read_inputs, save_inputs
from .emulator import QEMU, RUNS, core_and_clock, model_signature, per_inference, run_counted
from .mca import LLVM_MCA, OBJDUMP, estimate_costs
from .results import ArmProfile, KernelCost, ProfileError

__all__ = ["ArmProfile", "KernelCost", "ProfileError", "kernel_cycles", "profile"]
EM_AARCH64 = 183


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
    model = Path(model).resolve()
    if not model.is_file():
        raise ProfileError(f"{model}: no such file")
    if elf.machine(model) != EM_AARCH64:
        raise ProfileError(f"{model}: not an aarch64 shared library (compile it with --target {target})")
    core, clock = core_and_clock(target)
    check_tools()
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
        from ..frontend.tflite_check import opcode_names

        parsed = tflite.Model.GetRootAsModel(reference.read_bytes(), 0)
        graph = parsed.Subgraphs(0)
        names, output_names = _io_names(parsed)
        tensors = [graph.Tensors(graph.Inputs(i)) for i in range(graph.InputsLength())]
        ops = opcode_names(parsed).values()
    except Exception as error:  # noqa: BLE001 - any parse failure: the file is not a .tflite model
        raise ProfileError(f"{reference}: not a .tflite model the reference can run ({error})") from None
    lce = sorted({op for op in ops if op.startswith("Lce")})
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


def check_tools() -> None:
    """Raise ProfileError naming the tools a profile needs that are not installed."""
    missing = [tool for tool in (QEMU, OBJDUMP, LLVM_MCA) if shutil.which(tool) is None]
    if missing:
        raise ProfileError(f"{', '.join(missing)} missing: apt-get install qemu-user llvm binutils-aarch64-linux-gnu "
                           "(make installs them)")


def _profile(kind, model, target, core, clock, threads, folder, inputs, output_names) -> ArmProfile:
    with tempfile.TemporaryDirectory() as scratch:
        low, high = (run_counted(kind, model, core, threads, runs, folder, Path(scratch) / f"n{runs}", inputs)
                     for runs in RUNS)
    blocks, calls = per_inference(low, high, RUNS[1] - RUNS[0]), high["calls"]
    vcpus = max(len(execs) for execs in blocks.values())  # guest threads, numbered as qemu met them
    symbols = _symbols(str(model)) if kind == "tvm" else None

    def row_of(key) -> str:
        return _kernel_name(symbols, key[1]) if key[0] == str(model) else _group(key[0])

    rows: dict[str, KernelCost] = {}
    for key, execs in blocks.items():
        row = rows.setdefault(row_of(key), KernelCost(row_of(key), 0, 0.0, 0.0, thread_instructions=[0.0] * vcpus))
        for thread, count in enumerate(execs):
            row.thread_instructions[thread] += count * key[2]
    for name, (instructions, cycles) in estimate_costs(blocks, core, row_of).items():
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
    core, _ = core_and_clock(target)
    check_tools()
    folder = board.build_emulated_board(cache)
    with tempfile.TemporaryDirectory() as scratch:
        spec = Path(scratch) / "kernels.json"
        spec.write_text(json.dumps([{"path": str(Path(path).resolve()), "args": args} for path, args in kernels]))
        counted = run_counted("kernels", spec, core, 1, runs, folder, Path(scratch) / "run")
    paths = [str(Path(path).resolve()) for path, _ in kernels]
    blocks = {key: [sum(execs) / runs] for key, execs in counted["blocks"].items() if key[0] in paths}
    costs = estimate_costs(blocks, core, lambda key: key[0])
    failed = set(counted["calls"])
    return [None if i in failed or path not in costs else costs[path][1] for i, path in enumerate(paths)]


def _symbols(module: str) -> tuple[list[int], list[str]]:
    """The addresses (sorted) and names of a module's code symbols; none for a module whose tables are damaged."""
    try:
        found = sorted((symbol.value, symbol.name) for symbol in elf.ElfFile.read(module).code_symbols())
    except elf.ElfError:
        found = []
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
