"""Deploy without Python: bundles of a model, TVM's runtime and the C++ runner, run as a device would."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import bnn_tvm
from bnn_tvm import board, bundle, zoo


CASE = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)
SHAPE = (1, CASE.size, CASE.size, CASE.channels_in)
# What a device without Python has: no PYTHONPATH, no LD_LIBRARY_PATH, no TVM variables.
BARE_ENV = {"PATH": "/usr/bin:/bin"}


def bnn_tvm_cli(*args):
    return subprocess.run([sys.executable, "-m", "bnn_tvm.cli", *args], capture_output=True, text=True, timeout=600)


def run(argv, cwd, timeout=300):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=BARE_ENV, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A host bundle made by the CLI, then copied elsewhere and the original deleted (as a user copies it)."""
    work = tmp_path_factory.mktemp("host")
    so = work / "model.so"
    done = bnn_tvm_cli("compile", str(zoo.cached_tflite(CASE)), "--target", "host", "-o", str(so),
                       "--bundle", str(work / "made"))
    assert done.returncode == 0, done.stderr
    assert re.search(r"bundle .*made: [0-9.]+ MB \(runtime [0-9.]+ MB", done.stdout), done.stdout
    moved = tmp_path_factory.mktemp("elsewhere") / "bnn"
    shutil.copytree(work / "made", moved, symlinks=True)
    shutil.rmtree(work / "made")
    x = zoo.random_input(SHAPE, seed=3)
    np.save(work / "x.npy", x)
    return {"so": so, "folder": moved, "x": x, "x_path": work / "x.npy", "work": work}


@pytest.fixture(scope="module")
def aarch64(tmp_path_factory):
    """An rpi4 bundle made through the Python API from a compiled artifact."""
    folder = tmp_path_factory.mktemp("rpi4") / "bnn-rpi4"
    artifact = bnn_tvm.compile(zoo.cached_tflite(CASE), target="rpi4")
    said = []
    bundle.make_bundle(artifact, "rpi4", folder, say=said.append)
    assert said and "runtime" in said[0]
    return folder


def test_host_bundle_runs_without_python(host, tmp_path):
    """From its copied folder, with an empty environment: the output is bnn_tvm.load's and LCE's, bit for bit."""
    folder = host["folder"]
    done = run([folder / "bnn-run", folder / "model.so", "--input", host["x_path"], "--output", "y.npy"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "output 0: shape [1, 4, 4, 16] float32" in done.stdout
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_array_equal(y, bnn_tvm.load(host["so"])(host["x"]))
    np.testing.assert_array_equal(y, zoo.lce_interpreter(zoo.cached_tflite(CASE)).predict(host["x"]))


def test_runtime_resolves_inside_the_folder(host, tmp_path):
    folder = host["folder"]
    done = run(["ldd", folder / "bnn-run"], tmp_path)
    assert done.returncode == 0, done.stderr
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", done.stdout, re.MULTILINE))
    for library in ("libtvm_runtime.so", "libtvm_ffi.so"):
        assert resolved.get(library) == str(folder / library), done.stdout
    assert "not found" not in done.stdout
    # nothing of the compiler, and only what the runtime needs beyond glibc and libstdc++
    assert sorted(p.name for p in folder.glob("*.so")) == ["libtvm_ffi.so", "libtvm_runtime.so", "model.so"]


def test_random_input_and_median(host, tmp_path):
    folder = host["folder"]
    done = run([folder / "bnn-run", folder / "model.so", "--repeat", "5", "--threads", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "random input [1, 7, 7, 64] float32" in done.stdout
    assert re.search(r"median latency [0-9.]+ ms over 5 runs, 1 thread\n", done.stdout), done.stdout


def test_embed_example_builds_with_the_readme_command(host):
    """The README's compile command, run in the folder, gives a program that computes what Python does."""
    folder = host["folder"]
    readme = (folder / "README.md").read_text()
    command = next(line.strip() for line in readme.splitlines() if "-o embed_example" in line)
    done = subprocess.run(command, shell=True, cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, command + "\n" + done.stderr
    done = run(["./embed_example", "./model.so", *SHAPE], folder)
    assert done.returncode == 0, done.stderr
    expected = bnn_tvm.load(host["so"])(np.ones(SHAPE, np.float32)).ravel()
    assert f"{expected.size} outputs; largest {expected.max():g} at index {expected.argmax()}" in done.stdout


def _garbage(tmp_path):
    path = tmp_path / "garbage.npy"
    path.write_bytes(b"not numpy at all")
    return path


def _array(tmp_path, shape, dtype):
    path = tmp_path / f"x-{dtype}.npy"
    np.save(path, np.zeros(shape, dtype))
    return path


BAD_INPUTS = {
    "missing input": (lambda tmp: ["--input", tmp / "nothing.npy"], "cannot open input"),
    "wrong shape": (lambda tmp: ["--input", _array(tmp, (1, 7, 7, 32), "float32")],
                    "is [1, 7, 7, 32] float32; the model expects [1, 7, 7, 64] float32"),
    "wrong dtype": (lambda tmp: ["--input", _array(tmp, SHAPE, "int8")],
                    "is [1, 7, 7, 64] int8; the model expects [1, 7, 7, 64] float32"),
    "garbage .npy": (lambda tmp: ["--input", _garbage(tmp)], "not a .npy file"),
}


@pytest.mark.parametrize("case", [*BAD_INPUTS, "missing model", "aarch64 model", "not a model"])
def test_bad_inputs_give_one_line_errors(host, aarch64, tmp_path, case):
    folder = host["folder"]
    model, extra, expected = folder / "model.so", [], None
    if case in BAD_INPUTS:
        make, expected = BAD_INPUTS[case]
        extra = make(tmp_path)
    elif case == "missing model":
        model, expected = tmp_path / "none.so", "cannot open model"
    elif case == "aarch64 model":
        model, expected = aarch64 / "model.so", "is built for aarch64; this bnn-run runs x86-64 models"
    else:
        model, expected = folder / "libtvm_ffi.so", "is not a bnn-tvm model"
    done = run([folder / "bnn-run", model, *extra], tmp_path)
    assert done.returncode > 0, (done.returncode, done.stderr)  # an exit status, not a signal
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert "terminate called" not in done.stderr and "core dumped" not in done.stderr


def under_qemu(folder, x_path, cwd, *extra):
    """The aarch64 runner under qemu-user with the emulated board's sysroot (its libc and libstdc++, no Python):
    its output for the input at ``x_path``."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    done = run([qemu, "-L", board.build_emulated_board() / "sysroot", folder / "bnn-run", folder / "model.so",
                "--input", x_path, "--output", "y_qemu.npy", *extra], cwd)
    assert done.returncode == 0, done.stderr
    return np.load(cwd / "y_qemu.npy"), done.stdout


def on_board_python(so, x_path, cwd):
    """What the emulated board's Python (the aarch64 TVM wheel) computes with ``so`` for the input at ``x_path``."""
    folder = board.build_emulated_board()
    script = ("import numpy as np, tvm\n"
              "from tvm.runtime.vm import VirtualMachine\n"  # tvm.relax does not import with the runtime alone
              f"vm = VirtualMachine(tvm.runtime.load_module({str(so)!r}), tvm.cpu())\n"
              f"np.save('y_board.npy', vm['main'](tvm.runtime.tensor(np.load({str(x_path)!r}))).numpy())\n")
    done = subprocess.run([str(folder / "python-aarch64"), "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(folder / "site"), "TVM_USE_RUNTIME_LIB": "1"})
    assert done.returncode == 0, done.stderr
    return np.load(cwd / "y_board.npy")


def test_aarch64_bundle_matches_the_board_and_the_host(aarch64, host, tmp_path):
    """Bit for bit: what the same .so gives through the emulated board's Python, and what the host bundle gives
    (a binary model with LCE's output formula is exact on both)."""
    assert bundle.elf_machine(aarch64 / "bnn-run") == 183  # EM_AARCH64
    assert bundle.elf_machine(aarch64 / "libtvm_runtime.so") == 183
    y, stdout = under_qemu(aarch64, host["x_path"], tmp_path, "--repeat", "2")
    assert "median latency" in stdout
    done = run([host["folder"] / "bnn-run", host["folder"] / "model.so", "--input", host["x_path"],
                "--output", "y_host.npy"], tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(y, np.load(tmp_path / "y_host.npy"))
    np.testing.assert_array_equal(y, on_board_python(aarch64 / "model.so", host["x_path"], tmp_path))


def test_bundles_are_small(host, aarch64):
    for folder in (host["folder"], aarch64):
        runtime = sum((folder / name).stat().st_size for name in ("libtvm_runtime.so", "libtvm_ffi.so"))
        print(bundle.size_report(folder))
        assert runtime < 8 * 2**20


def test_android_needs_the_ndk(tmp_path):
    done = bnn_tvm_cli("compile", str(zoo.cached_tflite(CASE)), "--target", "android-arm64",
                       "-o", str(tmp_path / "m.so"))
    assert done.returncode == 2 and "Android NDK" in done.stderr and "--cross-compiler" in done.stderr
    assert "aarch64-linux-android" in done.stderr and not (tmp_path / "m.so").exists()


def test_cross_compiler_flags_reach_the_linker(tmp_path):
    so = tmp_path / "m.so"
    done = bnn_tvm_cli("compile", str(zoo.cached_tflite(CASE)), "--target", "rpi4", "-o", str(so),
                       "--cross-compiler", "aarch64-linux-gnu-gcc",
                       "--cross-compiler-options=-Wl,-soname,bnn-model.so")
    assert done.returncode == 0, done.stderr
    dynamic = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
    assert "[bnn-model.so]" in dynamic
    done = bnn_tvm_cli("compile", str(zoo.cached_tflite(CASE)), "--target", "rpi4", "-o", str(so),
                       "--cross-compiler", str(tmp_path / "no-such-clang"))
    assert done.returncode == 2 and "is not installed" in done.stderr


@pytest.mark.parametrize("target", ["rpi3", "android-arm64"])
def test_no_bundle_without_a_runtime_for_the_target(target):
    with pytest.raises(bundle.BundleError, match="no TVM runtime"):
        bundle.bundle_target(target)


def test_a_bundle_does_not_overwrite_other_folders(host, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(bundle.BundleError, match="not a bnn-tvm bundle"):
        bundle.make_bundle(host["so"], "host", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
