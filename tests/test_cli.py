"""The bnn-tvm command line, run as a user would."""

import subprocess
import sys

import numpy as np
import pytest

from bnn_tvm import zoo

CASE = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)


def bnn_tvm(*args):
    return subprocess.run([sys.executable, "-m", "bnn_tvm.cli", *args], capture_output=True, text=True, timeout=600)


def test_compile_then_run_matches_lce(tmp_path):
    model = zoo.cached_tflite(CASE)
    so = tmp_path / "model.so"
    done = bnn_tvm("compile", str(model), "--target", "host", "-o", str(so))
    assert done.returncode == 0, done.stderr
    x = zoo.random_input((1, CASE.size, CASE.size, CASE.channels_in))
    np.save(tmp_path / "x.npy", x)
    done = bnn_tvm("run", str(so), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                   "--repeat", "3", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "median latency" in done.stdout and "runs, 1 thread\n" in done.stdout
    assert "shape [1, 4, 4, 16]" in done.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), zoo.lce_interpreter(model).predict(x))
    done = bnn_tvm("run", str(so))  # random input of the recorded shape
    assert done.returncode == 0 and "float32 [1,7,7,64] (seed 0)" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("command", [[], ["compile"], ["run"]])
def test_help(command):
    done = bnn_tvm(*command, "--help")
    assert done.returncode == 0 and "usage: bnn-tvm" in done.stdout


# What `bnn-tvm --help`, an argument error and `import bnn_tvm` load: nothing heavy (TVM alone takes ~3 s to import).
_IMPORTS_PROBE = """
import os, sys
environment = dict(os.environ)
import bnn_tvm
from bnn_tvm import cli
for argv in (["--help"], ["compile", "--help"], ["run"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tvm", "tvm_ffi", "numpy", "tensorflow", "xgboost"))
print(heavy, os.environ == environment)
"""


def test_help_and_argument_errors_import_no_tvm_and_the_package_changes_no_environment():
    done = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[] True", done.stdout


def test_bad_inputs_give_clear_errors(tmp_path):
    model = zoo.cached_tflite(CASE)
    done = bnn_tvm("compile", str(model), "--target", "pdp11", "-o", str(tmp_path / "m.so"))
    assert done.returncode != 0 and "unknown target 'pdp11'" in done.stderr and "host" in done.stderr
    done = bnn_tvm("run", str(tmp_path / "m.so"), "--threads", "0")
    assert done.returncode == 2 and "--threads must be at least 1, got 0" in done.stderr
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a model")
    done = bnn_tvm("compile", str(garbage), "-o", str(tmp_path / "m.so"))
    assert done.returncode != 0 and "error:" in done.stderr and "Traceback" not in done.stderr


def test_stock_tvm_loads_the_library(tmp_path):
    """The .so is a plain Relax executable: TVM alone runs it, without importing bnn_tvm."""
    model = zoo.cached_tflite(CASE)
    so = tmp_path / "model.so"
    assert bnn_tvm("compile", str(model), "-o", str(so)).returncode == 0
    x = zoo.random_input((1, CASE.size, CASE.size, CASE.channels_in))
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, tvm\n"
        f"vm = tvm.relax.VirtualMachine(tvm.runtime.load_module({str(so)!r}), tvm.cpu())\n"
        f"y = vm['main'](tvm.runtime.tensor(np.load({str(tmp_path / 'x.npy')!r}))).numpy()\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "assert 'bnn_tvm' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), zoo.lce_interpreter(model).predict(x))


def test_board_sysroot_prints_the_emulated_boards_libraries():
    """The folder the README's `qemu-aarch64-static -L "$(bnn-tvm board sysroot)" bundle/bnn-run` line uses."""
    from pathlib import Path

    done = bnn_tvm("board", "sysroot")
    assert done.returncode == 0, done.stderr
    sysroot = Path(done.stdout.strip())
    assert (sysroot / "lib" / "ld-linux-aarch64.so.1").exists(), sysroot  # the dynamic loader qemu -L needs
