"""Every input and output of a model, and the user's mistakes named as theirs.

A model of two inputs and two outputs (``zoo.TwoInputCase``: an image and a feature map in, logits and the
refined feature map out) through compile, ``run --inputs`` / ``--input NAME=``, the Python API and the
emulated board; then each mistake a user can make with inputs and flags, each one ``error:`` line that
names the file or input and what is expected, never a traceback or "This is a bug".
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bnn_tvm
from bnn_tvm import zoo
from bnn_tvm.runtime import load_remote
from bnn_tvm.signature import InputError

from .helpers import Built
from .test_zoo import RTOL

TWO = zoo.TwoInputCase()


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bnn_tvm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def one_error_line(done) -> str:
    """The single ``error:`` line of a failed command, after checking it is a user's mistake, said once."""
    assert done.returncode != 0, done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "This is a bug" not in done.stderr and "Traceback" not in done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The two-input model compiled for the host, its inputs saved, and LCE's outputs for them."""
    folder = tmp_path_factory.mktemp("two-inputs")
    model = zoo.cached_tflite(TWO)
    so = folder / "two.so"
    done = cli("compile", model, "-o", so)
    assert done.returncode == 0, done.stderr
    arrays = {"image": zoo.random_input((1, TWO.size, TWO.size, 3), seed=1),
              "features": zoo.random_input((1, TWO.size // 2, TWO.size // 2, TWO.channels), seed=2)}
    np.savez(folder / "both.npz", **arrays)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    # LCE takes the inputs in the .tflite's order, which is the signature's: features, then image.
    lce = zoo.lce_interpreter(model).predict([arrays["features"], arrays["image"]])
    return folder, model, so, arrays, dict(zip(["logits", "refined"], lce, strict=True))


def test_the_signature_names_every_input_and_output_as_the_model_does(two):
    _, _, so, _, _ = two
    signature = bnn_tvm.load(so).signature()
    assert [(s.name, s.shape) for s in signature.inputs] == [("features", (1, 8, 8, 32)), ("image", (1, 16, 16, 3))]
    assert [(s.name, s.shape) for s in signature.outputs] == [("logits", (1, 10)), ("refined", (1, 8, 8, 32))]


def test_run_inputs_npz_and_named_inputs_give_every_output_keyed_by_name(two):
    folder, _, so, arrays, lce = two
    done = cli("run", so, "--inputs", folder / "both.npz", "--output", folder / "y.npy")
    assert done.returncode == 0, done.stderr
    assert f"saved 2 outputs to {folder / 'y.npz'}" in done.stdout and "output 'refined': shape [1, 8, 8, 32]" in \
        done.stdout
    by_npz = np.load(folder / "y.npz")
    assert sorted(by_npz.files) == ["logits", "refined"]
    done = cli("run", so, "--input", f"image={folder / 'image.npy'}", "--input", f"features={folder / 'features.npy'}",
               "--output", folder / "named.npz")
    assert done.returncode == 0 and "random input" not in done.stdout, done.stdout + done.stderr
    by_name = np.load(folder / "named.npz")
    python = bnn_tvm.load(so)(**arrays)
    for i, name in enumerate(["logits", "refined"]):
        np.testing.assert_array_equal(by_npz[name], by_name[name])  # the same arrays, however they were given
        np.testing.assert_array_equal(by_npz[name], python[i])
        # The binary convolution is bit-exact with LCE; the float stem convolution, the add and the dense layer
        # round as XNNPACK's kernels do not: within float32 rounding of the outputs' scale.
        scale = max(1.0, float(np.abs(lce[name]).max()))
        np.testing.assert_allclose(by_npz[name], lce[name], rtol=0, atol=RTOL * scale)


def test_inputs_not_given_are_random_and_said(two):
    folder, _, so, arrays, _ = two
    done = cli("run", so, "--input", f"image={folder / 'image.npy'}", "--seed", "7", "--output", folder / "r.npz")
    assert done.returncode == 0, done.stderr
    assert "random input 'features' float32 [1,8,8,32] (seed 7)" in done.stdout and "'image'" not in \
        done.stdout.split("output")[0]
    # An unnamed --input is the next input not given yet: features first, in the model's order.
    done = cli("run", so, "--input", folder / "features.npy", "--output", folder / "u.npz")
    assert done.returncode == 0 and "random input 'image' float32 [1,16,16,3] (seed 1)" in done.stdout, done.stderr
    expected = bnn_tvm.load(so)(arrays["features"], zoo.random_input((1, 16, 16, 3), seed=1))
    np.testing.assert_array_equal(np.load(folder / "u.npz")["logits"], expected[0])


def test_a_single_output_stays_npy(tmp_path):
    model = zoo.cached_tflite(zoo.ConvCase("channels32"))
    assert cli("compile", model, "-o", tmp_path / "m.so").returncode == 0
    done = cli("run", tmp_path / "m.so", "--output", tmp_path / "y.npy")
    assert done.returncode == 0 and "random input 'input_1' float32 [1,7,7,32] (seed 0)" in done.stdout, done.stdout
    assert np.load(tmp_path / "y.npy").shape == (1, 7, 7, 32)


def test_two_inputs_on_the_board(two, emulated_board, tmp_path):
    _, model, _, arrays, lce = two
    so = tmp_path / "two-aarch64.so"
    bnn_tvm.compile(model, target="rpi4").export_library(so)
    remote = load_remote(so, *emulated_board)
    assert [s.name for s in remote.signature().inputs] == ["features", "image"]
    logits, refined = remote(image=arrays["image"], features=arrays["features"])
    host = bnn_tvm.load(two[2])(**arrays)
    np.testing.assert_allclose(logits, lce["logits"], rtol=0, atol=RTOL * max(1.0, float(np.abs(logits).max())))
    np.testing.assert_allclose(refined, host[1], rtol=0, atol=RTOL * max(1.0, float(np.abs(refined).max())))


# ---------------------------------------------------------------------------------------- the user's mistakes


@pytest.fixture(scope="module")
def mistakes(two):
    folder = two[0]
    np.save(folder / "image64.npy", np.zeros((1, 16, 16, 3)))
    np.save(folder / "image-unbatched.npy", np.zeros((16, 16, 3), np.float32))
    np.save(folder / "image-small.npy", np.zeros((1, 8, 8, 3), np.float32))
    (folder / "notes.npy").write_text("hello")
    np.savez(folder / "extra.npz", image=np.zeros((1, 16, 16, 3), np.float32), mask=np.zeros(3))
    return folder


@pytest.mark.parametrize("flags, says", [
    (["--input", "image=image64.npy"],
     "image64.npy: input 'image' is float64 [1,16,16,3], the model takes float32 [1,16,16,3] "
     "(x.astype('float32') converts it)"),
    (["--input", "image=image-unbatched.npy"],
     "image-unbatched.npy: input 'image' is float32 [16,16,3], the model takes float32 [1,16,16,3] "
     "(the batch dimension is missing: x[None] adds it)"),
    (["--input", "image=image-small.npy"],
     "image-small.npy: input 'image' is float32 [1,8,8,3], the model takes float32 [1,16,16,3]"),
    (["--input", "mask=image.npy"], "mask=image.npy: the model has no input 'mask'; it takes 'features', 'image'"),
    (["--input", "notes.npy"], "notes.npy: is not a .npy file (np.save writes one)"),
    (["--input", "both.npz"], "both.npz: is an .npz archive of several arrays: pass it as --inputs both.npz"),
    (["--inputs", "image.npy"], "image.npy: is one .npy array, not an .npz archive"),
    (["--inputs", "extra.npz"], "extra.npz: holds 'mask', which is no input of the model"),
    (["--inputs", "both.npz", "--input", "image=image.npy"], "image.npy: input 'image' is given twice"),
    (["--input", "missing.npy"], "missing.npy: no such file"),
], ids=["dtype", "batch", "shape", "unknown-name", "not-npy", "npz-as-input", "npy-as-inputs", "unknown-key",
        "twice", "missing"])
def test_input_mistakes_are_one_line_naming_file_and_input(two, mistakes, flags, says):
    line = one_error_line(cli("run", two[2], *flags, cwd=mistakes))
    assert line.startswith(f"error: {says}"), line


def test_the_python_api_raises_value_error_naming_the_input(two):
    _, _, so, arrays, _ = two
    model = bnn_tvm.load(so)
    with pytest.raises(InputError, match=r"input 'image' is float32 \[1,8,8,3\], the model takes float32 \[1,16,16,3\]"):
        model(features=arrays["features"], image=arrays["image"][:, :8, :8])
    with pytest.raises(ValueError, match=r"input 'image' is not given; the model takes 'features' float32 \[1,8,8,32\]"):
        model(arrays["features"])
    with pytest.raises(ValueError, match="the model has no input 'img'"):
        model(features=arrays["features"], img=arrays["image"])


def test_a_tuning_records_folder_that_is_not_one_is_named(two, tmp_path):
    model = two[1]
    line = one_error_line(cli("compile", model, "-o", tmp_path / "m.so", "--tuning-records", tmp_path / "nowhere"))
    assert f"{tmp_path / 'nowhere'}: no such folder: --tuning-records takes the folder that `bnn-tvm tune --log`" \
           in line, line
    (tmp_path / "empty").mkdir()
    line = one_error_line(cli("compile", model, "-o", tmp_path / "m.so", "--tuning-records", tmp_path / "empty"))
    assert "empty: holds no tuning records (database_tuning_record.json)" in line, line


def _open_size_model(_case):
    import larq as lq
    import tensorflow as tf

    image = tf.keras.Input((None, None, 3), name="image")  # named: Keras numbers unnamed inputs per process
    x = tf.keras.layers.Conv2D(32, 3, padding="same")(image)
    x = lq.layers.QuantConv2D(32, 3, padding="same", input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                              use_bias=False)(x)
    return tf.keras.Model(image, tf.keras.layers.Dense(10)(tf.keras.layers.GlobalAveragePooling2D()(x)))


def _float_model(_case):
    import tensorflow as tf

    return tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.Conv2D(4, 3), tf.keras.layers.Flatten(),
                                tf.keras.layers.Dense(3)])


def test_an_open_size_tflite_is_refused_saying_the_size_is_open(tmp_path):
    model = zoo.cached_tflite(Built("open-size"), builder=_open_size_model)
    line = one_error_line(cli("compile", model, "-o", tmp_path / "m.so"))
    assert "input 'image' has an open size (shape signature [1, -1, -1, 3]; the file's shapes are for " \
           "[1, 1, 1, 3]): bnn-tvm compiles fixed shapes" in line, line


def test_a_model_without_binary_layers_compiles_with_a_note(tmp_path):
    model = zoo.cached_tflite(Built("float-only"), builder=_float_model)
    done = cli("compile", model, "-o", tmp_path / "m.so")
    assert done.returncode == 0, done.stderr
    assert f"note: {model} has no binary layer: compiled as a float model" in done.stdout, done.stdout
    done = cli("compile", zoo.cached_tflite(TWO), "-o", tmp_path / "b.so")
    assert done.returncode == 0 and "note:" not in done.stdout, done.stdout


def test_an_unsupported_layer_is_the_only_line(tmp_path):
    """TVM's BlockBuilder used to add "BlockBuilder destroyed with remaining blocks!" after the error."""
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.Reshape((16, 12)),
                                 tf.keras.layers.LSTM(3)])
    model.save(tmp_path / "lstm.h5")
    line = one_error_line(cli("compile", tmp_path / "lstm.h5", "-o", tmp_path / "m.so"))
    assert "layer lstm (LSTM): unsupported layer" in line, line


def test_a_library_that_is_not_a_bnn_tvm_model_is_named(tmp_path):
    """A Relax executable TVM built itself records no signature; a shared library of something else has no VM."""
    import tvm
    from tvm import relax

    x = relax.Var("x", relax.TensorType([1, 2], "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.add(x, x))
        bb.emit_func_output(out)
    tvm.compile(bb.get(), "llvm").export_library(tmp_path / "stock.so")
    line = one_error_line(cli("run", tmp_path / "stock.so"))
    assert "stock.so: is not a bnn-tvm model (it records no signature" in line, line
    other = next(p for p in ("/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1")
                 if Path(p).exists())
    line = one_error_line(cli("run", other))
    assert "is not a bnn-tvm model (a shared library without a Relax executable)" in line, line


def _rfft_model(_case):
    import tensorflow as tf

    image = tf.keras.Input((8, 8, 3))
    spectrum = tf.keras.layers.Lambda(lambda t: tf.math.real(tf.signal.rfft2d(t)))(image)
    return tf.keras.Model(image, spectrum)


def test_an_operator_refused_in_a_tflite_is_the_only_line(tmp_path):
    model = zoo.cached_tflite(Built("rfft2d"), builder=_rfft_model)
    line = one_error_line(cli("compile", model, "-o", tmp_path / "m.so"))
    assert "operator 0 (RFFT2D)" in line, line
