"""Hostile, malformed and awkward Keras models: code in model files runs only when trusted, open input
dimensions are refused unless --input-shapes gives them (which also sets the batch), and every loading
failure is one error naming the file and what is missing."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import bnn_tvm
from bnn_tvm import zoo  # noqa: F401 - sets TF_USE_LEGACY_KERAS before TensorFlow is imported
from bnn_tvm.build import load_model
from bnn_tvm.frontend import UnsupportedModelError, from_keras
from bnn_tvm.frontend.errors import InputShapesError, KerasLoadError, ModelCodeError

tf = pytest.importorskip("tensorflow")
lq = pytest.importorskip("larq")

# Binary layers on the model input: exact signs and integer MACs; only the float scale and batch-norm
# round (a few float32 ulps of the output's magnitude), as in tests/test_keras.py.
RTOL = 1e-5


def bnn_tvm_cli(*args):
    return subprocess.run([sys.executable, "-m", "bnn_tvm.cli", *args], capture_output=True, text=True, timeout=600)


def _binary_block(x, name="binary"):
    y = lq.layers.QuantConv2D(32, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                              kernel_quantizer="ste_sign", use_bias=False, name=name)(x)
    return tf.keras.layers.BatchNormalization()(y)


def _randomized(model):
    zoo._randomize_batch_norm(model, np.random.default_rng(0))
    return model


def _check(compiled, model, x):
    expected = model.predict(x, verbose=0)
    got = compiled(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL * max(1.0, float(np.abs(expected).max())))


# ---------------------------------------------------------------- code in model files


def _file_writing_model(marker):
    """A model whose Lambda layer writes ``marker`` whenever its function runs: at build, load or trace."""
    tf.keras.utils.set_random_seed(7)
    x = tf.keras.Input((8, 8, 32))
    y = tf.keras.layers.Lambda(lambda t, path=str(marker): (open(path, "w").close(), t * 2.0)[1], name="writer")(x)
    return _randomized(tf.keras.Model(x, _binary_block(y)))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_file_code_runs_only_when_trusted(suffix, tmp_path, build_and_load):
    marker = tmp_path / "the-model-ran-code"
    model = _file_writing_model(marker)
    path = tmp_path / f"model{suffix}"
    model.save(path)
    marker.unlink()

    with pytest.raises(ModelCodeError, match=r"layer writer \(Lambda\).*trust_model_code=True"):
        bnn_tvm.compile(path)
    assert not marker.exists()

    compiled = build_and_load(path, trust_model_code=True)
    assert marker.exists()  # the opt-in is the only difference
    _check(compiled, model, zoo.random_input((1, 8, 8, 32)))


def test_cli_refuses_code_unless_trust_model_code(tmp_path):
    marker = tmp_path / "the-model-ran-code"
    path = tmp_path / "model.keras"
    _file_writing_model(marker).save(path)
    marker.unlink()
    done = bnn_tvm_cli("compile", str(path), "-o", str(tmp_path / "m.so"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{path}: " in done.stderr and "layer writer (Lambda)" in done.stderr, done.stderr
    assert "--trust-model-code" in done.stderr and not marker.exists()
    done = bnn_tvm_cli("compile", str(path), "-o", str(tmp_path / "m.so"), "--trust-model-code")
    assert done.returncode == 0, done.stderr
    assert marker.exists() and (tmp_path / "m.so").stat().st_size > 0


def test_savedmodel_with_code_is_not_revived_by_keras_unless_trusted(tmp_path):
    """Keras revives a SavedModel's Lambda from its config (bytecode): refused by default, like .keras/.h5."""
    marker = tmp_path / "the-model-ran-code"
    _file_writing_model(marker).save(tmp_path / "saved")
    marker.unlink()
    with pytest.raises(ModelCodeError, match=r"saved: .*layer writer \(Lambda\)"):
        from_keras(tmp_path / "saved")
    assert not marker.exists()
    from_keras(tmp_path / "saved", trust_model_code=True)
    assert marker.exists()


def test_a_keras_file_naming_a_module_to_import_is_code(tmp_path):
    """The .keras format imports the module a custom object names: a module beside the model runs."""
    (tmp_path / "planted.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2, name="head")])
    model.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["config.json"] = files["config.json"].replace(b'"module": "keras.layers", "class_name": "Dense"',
                                                        b'"module": "planted", "class_name": "Dense"')
    assert b'"planted"' in files["config.json"]
    with zipfile.ZipFile(tmp_path / "planted.keras", "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModelCodeError, match=r"layer head \(Dense\) names Dense from module planted"):
            from_keras(tmp_path / "planted.keras")
    finally:
        sys.path.remove(str(tmp_path))
    assert not (tmp_path / "imported").exists()


# ---------------------------------------------------------------- input shapes


def _variable_size_model():
    tf.keras.utils.set_random_seed(8)
    x = tf.keras.Input((None, None, 32), name="features")
    y = tf.keras.layers.GlobalAveragePooling2D()(_binary_block(x))
    return _randomized(tf.keras.Model(x, y))


def test_open_height_and_width_are_refused_naming_the_input():
    with pytest.raises(InputShapesError, match=r"model .*: input features has unknown height and width "
                                               r"\(shape \[\?, \?, \?, 32\]\); give its shape with "
                                               r"--input-shapes features:\[1,H,W,32\]"):
        from_keras(_variable_size_model())


def test_input_shapes_compile_a_variable_size_model_at_any_batch(build_and_load):
    model = _variable_size_model()
    compiled = build_and_load(model, input_shapes={"features": [3, 6, 5, 32]})
    _check(compiled, model, zoo.random_input((3, 6, 5, 32)))
    compiled = build_and_load(model, input_shapes="[1,9,9,32]")  # tvmc's text; unnamed: the only input
    _check(compiled, model, zoo.random_input((1, 9, 9, 32)))


def test_cli_input_shapes(tmp_path):
    path = tmp_path / "variable.h5"
    _variable_size_model().save(path)
    so = tmp_path / "m.so"
    done = bnn_tvm_cli("compile", str(path), "-o", str(so), "--input-shapes", "features:[2, 6, 6, 32]")
    assert done.returncode == 0, done.stderr
    done = bnn_tvm_cli("run", str(so))
    assert done.returncode == 0 and "float32 [2,6,6,32] (seed 0)" in done.stdout, done.stdout + done.stderr


def _two_input_model():
    a, b = tf.keras.Input((None, None, 32), name="left"), tf.keras.Input((4, 4, 32), name="right")
    return tf.keras.Model([a, b], tf.keras.layers.Add()([_binary_block(a), b]))


BAD_SHAPES = {
    "unknown name": ({"lefty": [1, 4, 4, 32]}, r"no input named 'lefty'; its inputs: left \[\?, \?, \?, 32\], "
                                               r"right \[\?, 4, 4, 32\]"),
    "wrong rank": ({"left": [1, 4, 32]}, r"input left: the shape given, \[1, 4, 32\], has 3 dimensions"),
    "fixed dimension changed": ({"left": [1, 4, 4, 32], "right": [1, 5, 4, 32]},
                                r"input right: dimension 1 \(height\) is 4 in the model .* says 5"),
    "zero": ({"left": [1, 0, 4, 32]}, r"input 'left': \[1, 0, 4, 32\] has dimension 1 = 0"),
    "not integers": ({"left": [1, 4.0, 4, 32]}, r"input 'left': the shape must be a list of integers"),
    "unnamed, two inputs": ([1, 4, 4, 32], r"an unnamed input shape fits a model with one input; this one has 2"),
    "unreadable text": ("left:[1,4,4,32] right:(1,4,4,32)", r"cannot read 'right:\(1,4,4,32\)'"),
    "text not integers": ("left:[1,4,x,32]", r"input 'left': \[1,4,x,32\] is not a list of integers"),
    "name given twice": ("left:[1,4,4,32] left:[1,4,4,32]", r"input 'left' is given twice"),
    "left open": ({"right": [1, 4, 4, 32]}, r"input left has unknown height and width"),
}


@pytest.mark.parametrize("case", BAD_SHAPES)
def test_bad_input_shapes_name_the_input(case):
    shapes, message = BAD_SHAPES[case]
    with pytest.raises(InputShapesError, match=message):
        from_keras(_two_input_model(), input_shapes=shapes)


def test_two_named_inputs_compile(build_and_load):
    tf.keras.utils.set_random_seed(9)
    model = _randomized(_two_input_model())
    compiled = build_and_load(model, input_shapes="left:[2,4,4,32], right:[2,4,4,32]")
    x = [zoo.random_input((2, 4, 4, 32), seed=s) for s in (1, 2)]
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(compiled(*x), expected, rtol=0, atol=RTOL * max(1.0, np.abs(expected).max()))


def test_a_layer_that_does_not_fit_the_given_shape_is_named():
    """Converter errors from TVM (ValueError on shape inference) come out naming the layer."""
    x = tf.keras.Input((None, None, 3))
    model = tf.keras.Model(x, tf.keras.layers.Reshape((4, 4, 3), name="to_4x4")(x))
    with pytest.raises(UnsupportedModelError, match=r"layer to_4x4 \(Reshape\): "):
        from_keras(model, input_shapes=[1, 8, 8, 3])


def test_tflite_input_shapes_must_repeat_the_files():
    case = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)
    path = zoo.cached_tflite(case)
    name = load_model(path)["main"].params[0].name  # the converter's (Keras numbers inputs per process)
    params = load_model(path, input_shapes=f"{name}:[1,7,7,64]")["main"].params
    assert [int(d) for d in params[0].ty.shape.values] == [1, 7, 7, 64]
    with pytest.raises(InputShapesError, match=r"input serving_default_input_\d+:0: dimension 0 \(batch\) is 1 in "
                                               r"the model .* says 4; a \.tflite model has its shapes baked in"):
        load_model(path, input_shapes=[4, 7, 7, 64])


def test_quicknet_small_at_batch_4_matches_batch_1_row_by_row(build_and_load):
    case = zoo.ZooCase("QuickNetSmall-64-logits", "QuickNetSmall", size=64)
    model = zoo.keras_logits_model(case)
    one, four = build_and_load(model), build_and_load(model, input_shapes=[4, 64, 64, 3])
    x = np.concatenate([zoo.random_input((1, 64, 64, 3), seed=seed) for seed in range(4)])
    rows = four(x)
    assert rows.shape == (4, 1000)
    # Each row goes through the same kernels in the same order of float sums: measured bit-exact.
    np.testing.assert_array_equal(rows, np.concatenate([one(x[i:i + 1]) for i in range(4)]))
    expected = model.predict(x, verbose=0)
    # As tests/test_keras_zoo.py: TVM's float kernels and folded batch-norms against TF's, ~1e-6 measured.
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert (rows.argmax(axis=1) == expected.argmax(axis=1)).all()


# ---------------------------------------------------------------- files Keras cannot load


def _custom_layer_model():
    class Doubler(tf.keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    Doubler.__module__ = "bnn_tvm_missing_layers"  # as saved by code this machine does not have
    x = tf.keras.Input((8, 8, 3))
    return tf.keras.Model(x, Doubler(name="twice")(x))


def _function_quantizer_model():
    def my_sign(t):
        return tf.sign(t)

    x = tf.keras.Input((8, 8, 3))
    return tf.keras.Model(x, lq.layers.QuantConv2D(4, 3, kernel_quantizer=my_sign, name="fq")(x))


LOAD_FAILURES = {
    "not HDF5": ("model.h5", b"definitely not HDF5", r"model\.h5: not an HDF5 file"),
    "not a zip": ("model.keras", b"PK but not a zip", r"model\.keras: not a \.keras archive"),
    "zip without config": ("model.keras", "zip", r"model\.keras: a \.keras archive without a readable config"),
    "unknown layer (.h5)": ("model.h5", _custom_layer_model,
                            r"layer twice \(Doubler\) uses Doubler, an unknown layer"),
    "unknown layer (.keras)": ("model.keras", _custom_layer_model,
                               r"layer twice \(Doubler\) uses Doubler from module bnn_tvm_missing_layers, which "
                               r"is not installed"),
    "function quantizer (.h5)": ("model.h5", _function_quantizer_model,
                                 r"layer fq \(QuantConv2D\) uses the function my_sign, which Keras's \.h5 reader "
                                 r"cannot look up"),
    "function quantizer (.keras)": ("model.keras", _function_quantizer_model,
                                    r"layer fq \(QuantConv2D\) uses the function my_sign, which Keras does not "
                                    r"define"),
}


@pytest.mark.parametrize("case", LOAD_FAILURES)
def test_files_keras_cannot_load_name_file_and_object(case, tmp_path):
    name, content, message = LOAD_FAILURES[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("metadata.json", "{}")
    else:
        content().save(path)
    with pytest.raises(KerasLoadError, match=message) as caught:
        bnn_tvm.compile(path)
    assert str(path) in str(caught.value)
    if callable(content):
        assert "save it as a SavedModel" in str(caught.value) and "pass the Keras model object" in str(caught.value)


def _edited_keras_file(tmp_path, model, edit):
    """``model`` saved as model.keras with its config.json passed through ``edit``."""
    complete = tmp_path / "complete.keras"
    model.save(complete)
    with zipfile.ZipFile(complete) as archive:
        files = {info.filename: archive.read(info) for info in archive.infolist()}
    config = json.loads(files["config.json"])
    edit(config["config"]["layers"])
    files["config.json"] = json.dumps(config).encode()
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


def test_a_layer_missing_from_a_keras_file_is_named(tmp_path):
    """Keras meets an output naming a layer the config lacks with a bare AssertionError."""
    x = tf.keras.Input((4,))
    model = tf.keras.Model(x, tf.keras.layers.Dense(2, name="last")(x))
    path = _edited_keras_file(tmp_path, model, lambda layers: layers.remove(layers[-1]))
    with pytest.raises(KerasLoadError, match=r"model\.keras: .*the model's output_layers name layer 'last', which "
                                             r"the file does not define"):
        bnn_tvm.compile(path)


def test_a_damaged_compressed_config_is_named(tmp_path):
    """zlib's and zipfile's mid-stream errors (zlib.error, EOFError) are the file's fault, not a bug."""
    x = tf.keras.Input((4,))
    complete = tmp_path / "complete.keras"
    tf.keras.Model(x, tf.keras.layers.Dense(2)(x)).save(complete)
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(complete) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            archive.writestr(info.filename, source.read(info))
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("config.json")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the local header's fixed 30 bytes
    data[start + 5:start + info.compress_size] = bytes(b ^ 0xFF for b in data[start + 5:start + info.compress_size])
    path.write_bytes(bytes(data))
    done = subprocess.run([sys.executable, "-m", "bnn_tvm.cli", "compile", str(path), "-o", str(tmp_path / "m.so")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"error: {path}: a .keras archive without a readable config.json" in done.stderr, done.stderr


def test_an_unknown_quantizer_names_its_layer(tmp_path):
    x = tf.keras.Input((8, 8, 3))
    model = tf.keras.Model(x, lq.layers.QuantConv2D(4, 3, input_quantizer="ste_sign", name="qc")(x))
    path = _edited_keras_file(tmp_path, model, lambda layers: layers[-1]["config"].update(input_quantizer="fuzz_sign"))
    with pytest.raises(KerasLoadError, match=r"model\.keras: .*layer qc \(QuantConv2D\): input_quantizer 'fuzz_sign' "
                                             r"is an unknown quantization function"):
        bnn_tvm.compile(path)


def test_cli_names_a_damaged_hdf5_file(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    done = bnn_tvm_cli("compile", str(path), "-o", str(tmp_path / "m.so"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{path}: a damaged HDF5 file (truncated?)" in done.stderr
