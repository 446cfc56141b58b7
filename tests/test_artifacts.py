"""Broken artifacts and users' mistakes on the command line: one `error: <file>: <problem>` line, exit code 1, never
a signal or a traceback (issue 13, items 4 and 6)."""

import os
import subprocess
import sys

import pytest

import bnn_tvm
from bnn_tvm import zoo
from bnn_tvm.runtime import LibraryError, check_library

CASE = zoo.ConvCase("channels32")


def bnn_tvm_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bnn_tvm.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error_line(done, *fragments):
    """Exit code 1 (not a signal: a negative code), no traceback, and an `error:` line holding ``fragments``."""
    assert done.returncode == 1, f"exit code {done.returncode}: {done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    """A real host .so, the same model built for aarch64, and the host .so cut short at several points."""
    folder = tmp_path_factory.mktemp("libraries")
    model = zoo.cached_tflite(CASE)
    host = bnn_tvm.compile(model).export_library(folder / "host.so")
    arm = bnn_tvm.compile(model, target="rpi4").export_library(folder / "arm.so")
    data = host.read_bytes()
    truncated = {}
    for fraction in (0.05, 0.5, 0.9, 0.999):
        path = folder / f"truncated-{fraction}.so"
        path.write_bytes(data[: int(len(data) * fraction)])
        truncated[fraction] = path
    text = folder / "notes.so"
    text.write_text("not a library\n")
    return host, arm, truncated, text


def test_check_library_accepts_a_real_one_and_names_what_is_wrong(libraries):
    host, arm, truncated, text = libraries
    assert check_library(host) == host
    assert check_library(arm, machine=None) == arm  # what load_remote checks: complete, any architecture
    with pytest.raises(LibraryError, match=r"arm\.so: built for aarch64, this machine is x86-64"):
        check_library(arm)
    for path in truncated.values():
        with pytest.raises(LibraryError, match=rf"{path.name}: truncated or not a shared library: .*ends past the end"):
            check_library(path)
    with pytest.raises(LibraryError, match=r"notes\.so: truncated or not a shared library: no ELF header"):
        check_library(text)


@pytest.mark.parametrize("which", ["truncated", "aarch64", "text"])
def test_run_refuses_a_broken_library_without_dying(libraries, which):
    host, arm, truncated, text = libraries
    path, expected = {"truncated": (truncated[0.9], "truncated or not a shared library"),
                      "aarch64": (arm, "built for aarch64, this machine is x86-64"),
                      "text": (text, "truncated or not a shared library")}[which]
    # Loaded in a child process: before the check, a truncated .so killed it with SIGBUS.
    script = f"import bnn_tvm\ntry:\n    bnn_tvm.load({str(path)!r})\nexcept ValueError as err:\n    print(err)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"{path}: {expected}" in done.stdout, (done.returncode, done.stderr)
    assert_one_error_line(bnn_tvm_cli("run", str(path)), str(path), expected)


def test_cli_users_mistakes_give_one_line(tmp_path):
    model = zoo.cached_tflite(CASE)
    folder = tmp_path / "folder.tflite"
    folder.mkdir()
    assert_one_error_line(bnn_tvm_cli("compile", str(folder), "-o", str(tmp_path / "m.so")), str(folder))
    not_hdf5 = tmp_path / "model.h5"
    not_hdf5.write_bytes(b"this is not HDF5" * 64)
    assert_one_error_line(bnn_tvm_cli("compile", str(not_hdf5), "-o", str(tmp_path / "m.so")), str(not_hdf5))
    not_keras = tmp_path / "model.keras"
    not_keras.write_bytes(b"PK\x03\x04 a zip cut short")
    assert_one_error_line(bnn_tvm_cli("compile", str(not_keras), "-o", str(tmp_path / "m.so")), str(not_keras))
    regular = tmp_path / "file"
    regular.write_text("")
    done = bnn_tvm_cli("compile", str(model), "-o", str(regular / "sub" / "m.so"))
    assert_one_error_line(done, str(regular / "sub" / "m.so"), f"{regular} is a file, not a folder")
    assert_one_error_line(bnn_tvm_cli("compile", str(model), "-o", str(tmp_path)), str(tmp_path), "is a folder")
    done = bnn_tvm_cli("run", str(tmp_path / "missing.so"))
    assert_one_error_line(done, str(tmp_path / "missing.so"), "no such file")


def test_cli_refuses_a_fifo(tmp_path):
    fifo = tmp_path / "model.tflite"
    os.mkfifo(fifo)
    done = bnn_tvm_cli("compile", str(fifo), "-o", str(tmp_path / "m.so"), timeout=120)  # it blocked forever
    assert_one_error_line(done, str(fifo), "FIFO")
    os.mkfifo(tmp_path / "x.npy")
    so = bnn_tvm.compile(zoo.cached_tflite(CASE)).export_library(tmp_path / "m.so")
    assert_one_error_line(bnn_tvm_cli("run", str(so), "--input", str(tmp_path / "x.npy"), timeout=120),
                          str(tmp_path / "x.npy"), "FIFO")


def test_verbose_shows_the_traceback(tmp_path):
    text = tmp_path / "notes.so"
    text.write_text("not a library\n")
    for flags in (["--verbose", "run", str(text)], ["run", str(text), "-v"]):
        done = bnn_tvm_cli(*flags)
        assert done.returncode == 1 and "Traceback" in done.stderr and "LibraryError" in done.stderr, done.stderr
        assert done.stderr.rstrip().splitlines()[-1].startswith(f"error: {text}: truncated"), done.stderr
