"""Running the guest (``guest.py``) on the emulated board under the instruction counter (``insn_count.c``, a TCG
plugin of Debian's dynamic ``qemu-aarch64``; the static build cannot load plugins), and reading back what it
counted: executions per translation block and guest thread, mapped to the module and ELF address each block
belongs to through the guest's ``/proc/self/maps``."""

from __future__ import annotations

import bisect
import collections
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from ..cache import build_once, cache_dir
from ..signature import Signature
from ..targets import presets
from .results import ProfileError

PLUGIN_SOURCE = Path(__file__).with_name("insn_count.c")
GUEST = Path(__file__).with_name("guest.py")
QEMU = "qemu-aarch64"
# Runs of N = 1 and N = 3 inferences: their difference is two inferences, set-up and warm-up cancelled.
RUNS = (1, 3)
GUEST_TIMEOUT = 3600


def core_and_clock(target: str) -> tuple[str, float | None]:
    """The core an aarch64 preset emulates (qemu's ``-cpu``, llvm-mca's ``-mcpu``) and its clock in GHz."""
    preset = presets().get(target)
    if preset is None or preset.core is None:
        aarch64 = [name for name, p in presets().items() if p.core]
        raise ProfileError(f"target {target!r} is not an emulated aarch64 preset; use one of {', '.join(aarch64)}")
    return preset.core, preset.clock_ghz


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


def model_signature(model: Path, core: str, folder: Path):
    """The ``signature.Signature`` an aarch64 bnn-tvm .so recorded, read on the emulated board (uncounted) and
    cached by the file's contents."""
    key = hashlib.sha256(Path(model).read_bytes()).hexdigest()[:16]

    def read(partial: Path) -> None:
        argv = [QEMU, "-cpu", core, "-L", str(folder / "sysroot"), str(folder / "sysroot/usr/bin/python3.11"),
                str(GUEST), "signature", str(model), str(partial)]
        run_guest(argv, guest_env(folder, 1), model, "its signature could not be read on the emulated board")

    return Signature.from_json(build_once(cache_dir() / "signatures" / f"{key}.json", read).read_text())


def guest_env(folder: Path, threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(folder / "site"), "TVM_USE_RUNTIME_LIB": "1",
            "TVM_NUM_THREADS": str(threads), "TVM_BIND_THREADS": "0", "OMP_NUM_THREADS": str(threads),
            "PYTHONHASHSEED": "0"}


def run_guest(argv: list[str], env: dict, model: Path, failed: str) -> None:
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


def run_counted(kind, model, core, threads, runs, folder, prefix, inputs=None) -> dict:
    """Run the guest under the counter; {(module, ELF address, size): [executions per vCPU]}, the calls and (for a
    model, fed the .npz ``inputs``) its outputs in order."""
    sysroot = folder / "sysroot"
    plugin = f"{plugin_library()},out={prefix}.counts" + (",per_vcpu=1" if threads > 1 else "")
    files = [f"{prefix}.calls", f"{prefix}.maps"] if kind == "kernels" else \
        [str(inputs), f"{prefix}.calls", f"{prefix}.outputs.npz", f"{prefix}.maps"]
    argv = [QEMU, "-cpu", core, "-L", str(sysroot), "-plugin", plugin, str(sysroot / "usr/bin/python3.11"),
            str(GUEST), kind, str(model), str(threads), str(runs), *files]
    run_guest(argv, guest_env(folder, threads), model, "failed on the emulated board")
    outputs = []
    if kind != "kernels":
        import numpy as np

        with np.load(f"{prefix}.outputs.npz") as saved:
            outputs = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    maps = read_maps(Path(f"{prefix}.maps"))
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


def read_maps(path: Path) -> list[tuple[int, int, str, int]]:
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


def per_inference(low: dict, high: dict, runs: int) -> dict:
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
