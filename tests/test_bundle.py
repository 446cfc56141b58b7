"""Deploy without Python: bundles of a model, TVM's runtime and the C++ runner, run as a device would."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from tvm import relax

import bnn_tvm
from bnn_tvm import board, bundle, elf, zoo
from bnn_tvm.signature import InputError, read_inputs, with_names


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
    signature = bnn_tvm.load(so).signature()
    return {"so": so, "folder": moved, "x": x, "x_path": work / "x.npy", "work": work,
            "input": signature.inputs[0].name, "output": signature.outputs[0].name}


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
    assert f"output {host['output']!r}: shape [1, 4, 4, 16] float32" in done.stdout
    assert "saved the output to y.npy" in done.stdout
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
    assert f"random input {host['input']!r} float32 [1,7,7,64] (seed 0)\n" in done.stdout
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
    "missing input": (lambda tmp: ["--input", tmp / "nothing.npy"], "nothing.npy: No such file or directory"),
    "wrong shape": (lambda tmp: ["--input", _array(tmp, (1, 7, 7, 32), "float32")],
                    "is float32 [1,7,7,32], the model takes float32 [1,7,7,64]"),
    "wrong dtype": (lambda tmp: ["--input", _array(tmp, SHAPE, "int8")],
                    "is int8 [1,7,7,64], the model takes float32 [1,7,7,64] (x.astype('float32') converts it)"),
    "garbage .npy": (lambda tmp: ["--input", _garbage(tmp)],
                     "garbage.npy: is not a .npy file (np.save writes one): it starts with b'not nu'"),
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


# ---------------------------------------------------------------------- several inputs and outputs, by name

TWO = zoo.TwoInputCase()  # inputs 'features' [1,8,8,32] and 'image' [1,16,16,3]; outputs 'logits', 'refined'
TWO_OUTPUTS = ["logits", "refined"]


@pytest.fixture(scope="module")
def two(tmp_path_factory, host):
    """The two-input/two-output model compiled for the host, run by the host bundle's bnn-run; its inputs as one
    .npz and as one .npy each, and what Python (bnn_tvm.load) and LCE compute for them."""
    work = tmp_path_factory.mktemp("two")
    so = work / "two.so"
    bnn_tvm.compile(zoo.cached_tflite(TWO)).export_library(so)
    model = bnn_tvm.load(so)
    arrays = {s.name: zoo.random_input(s.shape, s.dtype, seed=5 + i) for i, s in enumerate(model.signature().inputs)}
    assert list(arrays) == ["features", "image"]
    np.savez(work / "x.npz", **arrays)
    for name, array in arrays.items():
        np.save(work / f"{name}.npy", array)
    return {"so": so, "model": model, "work": work, "arrays": arrays, "bnn_run": host["folder"] / "bnn-run",
            "python": model(**arrays),
            # LCE takes its inputs in the .tflite's order, which is the signature's
            "lce": zoo.lce_interpreter(zoo.cached_tflite(TWO)).predict(list(arrays.values()))}


def _saved(path):
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}


def _check_outputs(two, y):
    assert list(y) == TWO_OUTPUTS
    for name, python, lce in zip(TWO_OUTPUTS, two["python"], two["lce"], strict=True):
        np.testing.assert_array_equal(y[name], python)
        # LCE sums the dense layer in another order: float32 rounding, measured at most 2.1e-7 of the largest logit
        np.testing.assert_allclose(y[name], lce, rtol=0, atol=1e-6 * np.abs(lce).max())


FEEDS = {
    "--inputs": ["--inputs", "x.npz"],
    "--input NAME=": ["--input", "image=image.npy", "--input", "features=features.npy"],  # not the model's order
    "--input in order": ["--input", "features.npy", "--input", "image.npy"],
}


@pytest.mark.parametrize("feed", FEEDS)
def test_two_inputs_and_outputs_by_name(two, tmp_path, feed):
    """Inputs from an .npz or .npy files, outputs to an .npz keyed by output name (--output y.npy becomes y.npz):
    bit for bit what bnn_tvm.load computes in Python, and LCE's outputs within float rounding."""
    done = run([two["bnn_run"], two["so"], *FEEDS[feed], "--output", tmp_path / "y.npy"], two["work"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("output 'logits': shape [1, 10] float32; min "), done.stdout
    assert "\noutput 'refined': shape [1, 8, 8, 32] float32; min " in done.stdout
    assert f"\nsaved 2 outputs to {tmp_path / 'y.npz'}\n" in done.stdout and "random" not in done.stdout
    assert not (tmp_path / "y.npy").exists()
    _check_outputs(two, _saved(tmp_path / "y.npz"))


def test_zip64_npz_inputs(two, tmp_path, monkeypatch):
    """An .npz with ZIP64 central records and end record, as np.savez writes archives beyond 2 GiB: a lowered
    ZIP64_LIMIT makes Python's zipfile write them for small arrays."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 0)
    np.savez(tmp_path / "x64.npz", **two["arrays"])
    monkeypatch.undo()
    assert b"PK\x06\x06" in (tmp_path / "x64.npz").read_bytes()  # the ZIP64 end of central directory
    done = run([two["bnn_run"], two["so"], "--inputs", "x64.npz", "--output", "y.npz"], tmp_path)
    assert done.returncode == 0, done.stderr
    _check_outputs(two, _saved(tmp_path / "y.npz"))


def test_inputs_not_given_are_random(two):
    for given, line in (("image", "random input 'features' float32 [1,8,8,32] (seed 7)"),
                        ("features", "random input 'image' float32 [1,16,16,3] (seed 8)")):
        done = run([two["bnn_run"], two["so"], "--input", f"{given}={given}.npy", "--seed", "7"], two["work"])
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == line, done.stdout


def _write_mistakes(folder, arrays):
    features, image = arrays["features"], arrays["image"]
    np.save(folder / "image.npy", image)
    np.save(folder / "features.npy", features)
    np.save(folder / "image64.npy", image.astype(np.float64))
    np.save(folder / "image3d.npy", image[0])
    np.savez(folder / "x.npz", features=features, image=image)
    np.savez(folder / "extra.npz", image=image, mask=image)
    np.savez(folder / "x64.npz", features=features.astype(np.float64), image=image)
    np.savez_compressed(folder / "small.npz", features=features, image=image)
    (folder / "image.txt").write_text("0.5 0.25\n")


# (--inputs, --input values, the one error line after "error: ")
MISTAKES = {
    "unknown name": (None, ["imag=image.npy"],
                     "imag=image.npy: the model has no input 'imag'; it takes 'features', 'image'"),
    "unknown name in the .npz": ("extra.npz", [], "extra.npz: holds 'mask', which is no input of the model; it "
                                                 "takes 'features' float32 [1,8,8,32], 'image' float32 [1,16,16,3]"),
    "wrong dtype": (None, ["image=image64.npy"], "image64.npy: input 'image' is float64 [1,16,16,3], the model "
                                                 "takes float32 [1,16,16,3] (x.astype('float32') converts it)"),
    "wrong dtype in the .npz": ("x64.npz", [], "x64.npz[features]: input 'features' is float64 [1,8,8,32], the "
                                               "model takes float32 [1,8,8,32] (x.astype('float32') converts it)"),
    "missing batch dimension": (None, ["features.npy", "image3d.npy"],
                                "image3d.npy: input 'image' is float32 [16,16,3], the model takes float32 "
                                "[1,16,16,3] (the batch dimension is missing: x[None] adds it)"),
    "given twice": ("x.npz", ["image=image.npy"], "image.npy: input 'image' is given twice (also x.npz[image])"),
    "compressed .npz": ("small.npz", [], "small.npz: input 'features' is compressed (np.savez_compressed); "
                                         "bnn-run reads the uncompressed .npz of np.savez: save the inputs with "
                                         "np.savez"),
    "not a .npy file": (None, ["image=image.txt"],
                        "image.txt: is not a .npy file (np.save writes one): it starts with b'0.5 0.'"),
    ".npz given to --input": (None, ["x.npz"],
                              "x.npz: is an .npz archive of several arrays: pass it as --inputs x.npz"),
    ".npy given to --inputs": ("image.npy", [], "image.npy: is one .npy array, not an .npz archive: pass it as "
                                                "--input [NAME=]image.npy"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_input_mistakes_give_one_error_line(two, tmp_path, monkeypatch, mistake):
    """Exit status 2 and one line naming the file and the input, in the words of `bnn-tvm run`: its
    bnn_tvm.signature.read_inputs says the same (it reads compressed archives, which bnn-run refuses)."""
    npz, inputs, message = MISTAKES[mistake]
    _write_mistakes(tmp_path, two["arrays"])
    argv = (["--inputs", npz] if npz else []) + [arg for text in inputs for arg in ("--input", text)]
    done = run([two["bnn_run"], two["so"], *argv], tmp_path)
    assert (done.returncode, done.stderr, done.stdout) == (2, f"error: {message}\n", "")
    if mistake != "compressed .npz":
        monkeypatch.chdir(tmp_path)
        with pytest.raises(InputError) as raised:
            read_inputs(two["model"].signature(), npz, inputs)
        assert str(raised.value) == message


def test_names_beyond_identifiers(host, tmp_path):
    """Names are JSON in the signature: quotes, backslashes, ':' and non-ASCII (json.dumps's \\u escapes, a
    surrogate pair for the emoji) come through to the messages, the --input names and the .npz keys."""
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 4), "float32"))
    b = relax.Var("b", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            total = bb.emit(relax.op.add(a, b))
            out = bb.emit_output(relax.Tuple([total, bb.emit(relax.op.multiply(total, total))]))
        bb.emit_func_output(out)
    inputs, outputs = ["serving_default_x:0", 'it\'s "q"\\'], ["sum/0", "größe \U0001F600"]
    bnn_tvm.compile(with_names(bb.get(), inputs, outputs)).export_library(tmp_path / "odd.so")
    np.save(tmp_path / "a.npy", np.arange(4, dtype=np.float32)[None])
    done = run([host["folder"] / "bnn-run", tmp_path / "odd.so", "--input", f"{inputs[1]}=a.npy", "--output", "y"],
               tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("random input 'serving_default_x:0' float32 [1,4] (seed 0)\n"
                                  "output 'sum/0': shape [1, 4] float32;"), done.stdout
    assert "\noutput 'größe \U0001F600': shape [1, 4] float32;" in done.stdout
    assert list(_saved(tmp_path / "y.npz")) == outputs
    done = run([host["folder"] / "bnn-run", tmp_path / "odd.so", "--input", f"{inputs[1]}=a.npy", "--input",
                f"{inputs[1]}=a.npy"], tmp_path)
    assert done.stderr == "error: a.npy: input 'it\\'s \"q\"\\\\' is given twice (also a.npy)\n", done.stderr


def under_qemu(folder, cwd, *args, model=None):
    """The aarch64 runner under qemu-user with the emulated board's sysroot (its libc and libstdc++, no Python),
    running ``model`` (default: the bundle's) with ``args``; it must succeed."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    done = run([qemu, "-L", board.build_emulated_board() / "sysroot", folder / "bnn-run", model or folder / "model.so",
                *args], cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def on_board_python(so, x_paths, cwd):
    """What the emulated board's Python (the aarch64 TVM wheel) computes with ``so`` for the inputs at ``x_paths``
    (in the model's order): the list of its outputs."""
    folder = board.build_emulated_board()
    script = ("import numpy as np, tvm\n"
              "from tvm.runtime.vm import VirtualMachine\n"  # tvm.relax does not import with the runtime alone
              f"vm = VirtualMachine(tvm.runtime.load_module({str(so)!r}), tvm.cpu())\n"
              f"y = vm['main'](*[tvm.runtime.tensor(np.load(p)) for p in {[str(p) for p in x_paths]!r}])\n"
              "np.savez('y_board.npz', *[t.numpy() for t in ([y] if hasattr(y, 'numpy') else y)])\n")
    done = subprocess.run([str(folder / "python-aarch64"), "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(folder / "site"), "TVM_USE_RUNTIME_LIB": "1"})
    assert done.returncode == 0, done.stderr
    with np.load(cwd / "y_board.npz") as outputs:
        return [outputs[f"arr_{i}"] for i in range(len(outputs.files))]


def test_aarch64_bundle_matches_the_board_and_the_host(aarch64, host, tmp_path):
    """Bit for bit: what the same .so gives through the emulated board's Python, and what the host bundle gives
    (a binary model with LCE's output formula is exact on both)."""
    assert elf.machine(aarch64 / "bnn-run") == 183  # EM_AARCH64
    assert elf.machine(aarch64 / "libtvm_runtime.so") == 183
    stdout = under_qemu(aarch64, tmp_path, "--input", host["x_path"], "--output", "y_qemu.npy", "--repeat", "2")
    assert "median latency" in stdout
    y = np.load(tmp_path / "y_qemu.npy")
    done = run([host["folder"] / "bnn-run", host["folder"] / "model.so", "--input", host["x_path"],
                "--output", "y_host.npy"], tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(y, np.load(tmp_path / "y_host.npy"))
    np.testing.assert_array_equal(y, on_board_python(aarch64 / "model.so", [host["x_path"]], tmp_path)[0])


def test_aarch64_bundle_takes_inputs_by_name(aarch64, two, tmp_path):
    """Under qemu, the aarch64 bnn-run reads an .npz of two inputs and writes an .npz of two outputs: bit for bit
    what the emulated board's Python computes with the same .so."""
    so = bnn_tvm.compile(zoo.cached_tflite(TWO), target="rpi4").export_library(tmp_path / "two-rpi4.so")
    under_qemu(aarch64, two["work"], "--inputs", "x.npz", "--output", tmp_path / "y.npz", model=so)
    y = _saved(tmp_path / "y.npz")
    assert list(y) == TWO_OUTPUTS
    on_board = on_board_python(so, [two["work"] / f"{name}.npy" for name in two["arrays"]], tmp_path)
    for name, expected in zip(TWO_OUTPUTS, on_board, strict=True):
        np.testing.assert_array_equal(y[name], expected)


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
