"""Deploy without Python: a folder holding a model, TVM's runtime and a prebuilt runner for one target.

Copying the folder to a device with a C/C++ runtime (glibc, libstdc++) is the whole install::

    model.so            the model (`bnn-tvm compile`)
    libtvm_runtime.so   TVM's runtime, from the locked TVM wheel of the target's architecture
    libtvm_ffi.so       (what libtvm_runtime.so needs beyond glibc and libstdc++; nothing of the compiler)
    bnn-run             runner/bnn_run.cc built for the target, linked with rpath $ORIGIN
    bnn_run.cc, embed_example.cc, include/   the sources and the tvm-ffi headers to rebuild or embed them
    README.md

The runtime libraries of an aarch64 target come from the emulated board's site-packages (``board.py``),
which installs the same locked wheels a Raspberry Pi does. The runner is built once per target and cached
in the user's cache (``bnn_tvm.cache``), keyed by the sources, the compiler and the runtime libraries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import elf
from .cache import build_once, cache_dir
from .targets import AARCH64_TRIPLE, TargetPreset, presets

RUNNER_DIR = Path(__file__).with_name("runner")
RUNNER_SOURCE = RUNNER_DIR / "bnn_run.cc"
EMBED_SOURCE = RUNNER_DIR / "embed_example.cc"
RUNNER = "bnn-run"
MODEL = "model.so"
# Within a site-packages folder: TVM's runtime and the one library it NEEDs that is not glibc's or libstdc++'s.
RUNTIME_LIBRARIES = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so")
HEADERS = "tvm_ffi/include"
# What every glibc system with a C++ runtime has: a bundled file may need these and nothing else outside it.
SYSTEM_LIBRARIES = ("libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libstdc++.so.6",
                    "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1")
# The linker flags in the runner's build and in the README's compile command: the runtime is linked even where
# the program references none of its symbols (it registers the VM loader), and found beside the program.
LINK_FLAGS = ("-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN")


class BundleError(RuntimeError):
    """A bundle cannot be made for this target or model; the message says why and what to do."""


@dataclass(frozen=True)
class BundleTarget:
    """Where a preset's runtime comes from and what builds its programs."""

    preset: TargetPreset
    site_packages: Path  # holds tvm/lib and tvm_ffi/lib of the target's architecture
    compiler: str  # C++ compiler that builds the runner for the target
    machine: int  # ELF e_machine of the target's binaries


def bundle_target(preset: TargetPreset | str) -> BundleTarget:
    """The runtime wheel and compiler of ``preset``; fails, saying what is missing, where none exists."""
    preset = presets()[preset] if isinstance(preset, str) else preset
    triple = preset.config.get("mtriple")
    if triple is None:  # an x86-64 preset: this machine's venv holds the wheel
        site = Path(importlib.util.find_spec("tvm").submodule_search_locations[0]).parent
        return BundleTarget(preset, site, os.environ.get("CXX", "g++"), 62)
    if preset.name == "android-arm64":
        raise BundleError("no TVM runtime for Android exists as a wheel (the aarch64 one needs glibc): build "
                          "libtvm_runtime.so and libtvm_ffi.so with the Android NDK (TVM's cmake with "
                          "-DCMAKE_TOOLCHAIN_FILE=$NDK/build/cmake/android.toolchain.cmake) and ship them beside the "
                          "model; `bnn-tvm compile --target android-arm64 --cross-compiler ...` makes the model")
    if triple != AARCH64_TRIPLE:
        raise BundleError(f"no TVM runtime wheel exists for {triple} (preset {preset.name}), so bnn-tvm cannot "
                          "bundle one: build TVM's runtime for it from source, or use a 64-bit OS and an aarch64 "
                          "preset (rpi4, rpi5)")
    from .board import build_emulated_board

    return BundleTarget(preset, build_emulated_board() / "site", preset.cross_compiler, 183)


def make_bundle(model, target: TargetPreset | str, out_dir: str | os.PathLike, say=print) -> Path:
    """Write a self-contained folder that runs ``model`` on ``target`` without Python.

    Parameters
    ----------
    model : path or bnn_tvm.build.Artifact
        The compiled model: a ``.so`` written by ``bnn-tvm compile`` for ``target``, or the artifact itself.
    target : TargetPreset or str
        The preset the model was compiled for (host, x86 presets, aarch64 presets).
    out_dir : path
        The folder to write; an earlier bundle there is replaced, any other non-empty folder is refused.
    say : callable
        Hears the bundle's size.

    Returns
    -------
    Path
        ``out_dir``.
    """
    where = bundle_target(target)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / RUNNER).exists():
        raise BundleError(f"{out_dir} exists and is not a bnn-tvm bundle: give an empty or new folder")
    # Built beside its place and renamed into it when complete: an interrupted build leaves no half bundle.
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if isinstance(model, (str, os.PathLike)):
            shutil.copyfile(model, partial / MODEL)
        else:
            model.export_library(partial / MODEL)
        _check_machine(partial / MODEL, where, str(model) if isinstance(model, (str, os.PathLike)) else "the model")
        for library in RUNTIME_LIBRARIES:
            shutil.copyfile(where.site_packages / library, partial / Path(library).name)
        shutil.copy2(runner_executable(where), partial / RUNNER)
        for source in (RUNNER_SOURCE, EMBED_SOURCE):
            shutil.copyfile(source, partial / source.name)
        for headers in ("tvm", "dlpack"):
            shutil.copytree(where.site_packages / HEADERS / headers, partial / "include" / headers)
        _check_self_contained(partial)
        (partial / "README.md").write_text(_readme(where, partial, out_dir.name))
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    say(size_report(out_dir))
    return out_dir


def size_report(folder: Path) -> str:
    """One line: the bundle's size, and its runtime part (what the device needs besides the model)."""
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    runtime = sum((folder / Path(library).name).stat().st_size for library in RUNTIME_LIBRARIES)
    runner = (folder / RUNNER).stat().st_size
    model = (folder / MODEL).stat().st_size
    return (f"bundle {folder}: {_mb(total)} (runtime {_mb(runtime)}, runner {_mb(runner)}, model {_mb(model)}, "
            f"sources and headers {_mb(total - runtime - runner - model)})")


def _mb(size: int) -> str:
    return f"{size / 2**20:.2f} MB"


def runner_executable(where: BundleTarget) -> Path:
    """``bnn-run`` built for the target, once: cached by its source, the compiler and the runtime libraries."""
    if shutil.which(where.compiler) is None:
        raise BundleError(f"{where.compiler} is missing: apt-get install {debian_compiler_package(where.compiler)}")
    version = subprocess.run([where.compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(RUNNER_SOURCE.read_bytes() + version.encode() + " ".join(LINK_FLAGS).encode())
    for library in RUNTIME_LIBRARIES:
        digest.update((where.site_packages / library).read_bytes())
    for header in sorted((where.site_packages / HEADERS).rglob("*.h")):
        digest.update(header.read_bytes())
    library_dirs = sorted({str((where.site_packages / library).parent) for library in RUNTIME_LIBRARIES})

    def build(partial: Path) -> None:
        argv = [where.compiler, "-std=c++17", "-O2", str(RUNNER_SOURCE), "-o", str(partial),
                f"-I{where.site_packages / HEADERS}", *(f"-L{d}" for d in library_dirs),
                *(f"-Wl,-rpath-link,{d}" for d in library_dirs), *LINK_FLAGS]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise BundleError(f"building {RUNNER} with {where.compiler} failed:\n{done.stderr[-3000:]}")

    name = f"{RUNNER}-{elf.MACHINES[where.machine]}-{digest.hexdigest()[:16]}"
    return build_once(cache_dir() / "runners" / name, build)


def debian_compiler_package(compiler: str) -> str:
    """The Debian package of a (cross) compiler: aarch64-linux-gnu-g++ -> g++-aarch64-linux-gnu."""
    triple, _, tool = compiler.rpartition("-")
    return f"{tool}-{triple}" if triple else compiler


def _check_machine(model: Path, where: BundleTarget, name: str) -> None:
    machine = elf.machine(model)
    if machine != where.machine:
        built = "not a shared library" if machine is None else f"built for {elf.MACHINES.get(machine, machine)}"
        raise BundleError(f"{name} is {built}, not for {where.preset.name} ({elf.MACHINES[where.machine]}): "
                          f"compile it with --target {where.preset.name}")


def _binaries(folder: Path) -> list[Path]:
    return [folder / RUNNER, folder / MODEL, *(folder / Path(library).name for library in RUNTIME_LIBRARIES)]


def system_requirements(folder: Path) -> dict[str, str]:
    """The newest glibc and libstdc++ symbol versions the bundle's binaries need: {"GLIBC": "2.34", ...}."""
    newest: dict[str, tuple[int, ...]] = {}
    for binary in _binaries(folder):
        versions = elf.ElfFile.read(binary).version_needs()
        for name in (version for version in versions if re.fullmatch(r"GLIBC(?:XX)?_[0-9.]+", version)):
            library, _, number = name.partition("_")
            newest[library] = max(newest.get(library, ()), tuple(int(part) for part in number.split(".")))
    return {library: ".".join(map(str, version)) for library, version in sorted(newest.items())}


def _check_self_contained(folder: Path) -> None:
    """Fail unless every library the bundle's binaries need is in the folder or in glibc and libstdc++."""
    for binary in _binaries(folder):
        missing = [lib for lib in elf.ElfFile.read(binary).needed() if lib not in SYSTEM_LIBRARIES and not
                   (folder / lib).exists()]
        if missing:
            raise BundleError(f"{binary.name} needs {', '.join(missing)}, which the bundle does not hold")


def compile_command(compiler: str, source: str, output: str) -> str:
    """The shell command that builds a runner source in a bundle's folder."""
    flags = " ".join(f"'{flag}'" if "$" in flag else flag for flag in LINK_FLAGS)
    return f"{compiler} -std=c++17 -O2 {source} -o {output} -Iinclude -L. {flags}"


def _readme(where: BundleTarget, folder: Path, name: str) -> str:
    preset, machine = where.preset, elf.MACHINES[where.machine]
    needs = system_requirements(folder)
    device = "a Raspberry Pi or another aarch64 board" if where.machine == 183 else "an x86-64 machine"
    tvm_version = next((line.split(":", 1)[1].strip() for line in _dist_info(where.site_packages, "apache_tvm")
                        if line.startswith("Version:")), "unknown")
    return f"""# bnn-tvm bundle for {preset.name}: {preset.description}

A compiled binarized model with TVM's C++ runtime ({tvm_version}, {machine}) and a runner: no Python, no pip.
It runs on {device} with glibc {needs.get("GLIBC", "?")} or later and a libstdc++ with GLIBCXX_{needs.get("GLIBCXX", "?")}
(Debian 12, Raspberry Pi OS 12 "bookworm", Ubuntu 22.04 or later).

## Run

Copy the folder to the device (any way: `scp -r {name} user@device:`), then there:

    ./{name}/bnn-run ./{name}/model.so --repeat 20

Without inputs, bnn-run feeds the model random ones and prints each input's name, dtype and shape as the model
records them (`random input 'image' float32 [1,224,224,3] (seed 0)`). Give inputs as numpy writes them: one .npy
per input, named (`--input NAME=x.npy`) or in the model's order (`--input x.npy`, repeated), or all in one .npz
keyed by input name (`np.savez("x.npz", image=image, features=features)`; not `np.savez_compressed`, which
bnn-run refuses). Inputs given neither way are random (input i: seed `--seed` + i). For a model of two inputs:

    ./{name}/bnn-run ./{name}/model.so --input image=image.npy --input features=features.npy --output y.npy
    ./{name}/bnn-run ./{name}/model.so --inputs x.npz --output y.npz

`bnn-run model.so [--inputs x.npz] [--input [NAME=]x.npy ...] [--output y.npy] [--repeat N] [--threads T]
[--seed S]` checks every input's name, dtype and shape against the model's and says what is wrong on one
`error:` line. It prints each output's name, shape and summary; `--output` writes one output as .npy, several as
an .npz keyed by output name (`y.npy` becomes `y.npz`; `np.load("y.npz")["logits"]`); `--repeat` adds the median
latency. Threads: one per physical core unless `--threads` says otherwise; nothing is pinned. Everything it
loads is in this folder (rpath `$ORIGIN`).

## Embed the model in your program

`embed_example.cc` is the least code that loads `model.so` and runs it on a buffer. Built in this folder:

    {compile_command(where.compiler, "embed_example.cc", "embed_example")}
    ./embed_example ./model.so 1 224 224 3     # the input shape `bnn-run model.so` prints

(`{where.compiler}` built this bundle's runner; on the device itself use its own `g++`.) Ship `model.so`,
`libtvm_runtime.so` and `libtvm_ffi.so` beside your program. `bnn_run.cc` is the runner's source, built by
`{compile_command(where.compiler, "bnn_run.cc", RUNNER)}`.
"""


def _dist_info(site: Path, name: str) -> list[str]:
    metadata = next(site.glob(f"{name}-*.dist-info/METADATA"), None)
    return metadata.read_text(errors="replace").splitlines() if metadata else []
