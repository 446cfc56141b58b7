"""Real Larq models converted by LCE, cached by a hash of their recipe.

Used by the tests, ``make demo`` and the benchmarks. Needs the ``larq`` extra
(TensorFlow, larq, larq-zoo, LCE). larq-zoo weights cannot be downloaded here,
so models keep their random initialisation (seeded, so a recipe always gives
the same model).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .cache import cache_dir

# larq and LCE's converter need Keras 2; this must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

CACHE_DIR = cache_dir() / "models"
RECIPE_VERSION = 3  # bump when the way models are built changes


def _tf():
    import tensorflow as tf

    return tf


def _built(builder, case):
    """``builder(case)`` named as in a fresh process: Keras numbers unnamed layers (``input_1``...) per process,
    and the names end up in the converted file, its signature and the messages that quote it."""
    _tf().keras.backend.clear_session()
    return builder(case)


@dataclass(frozen=True)
class ConvCase:
    """One binary-conv test model: quantize -> bconv (-> second bconv for packed hand-off)."""

    name: str
    channels_in: int = 32
    channels_out: int = 32
    size: int = 7
    kernel: int = 3
    strides: int = 1
    dilation: int = 1
    padding: str = "same"
    pad_values: float = 1.0
    activation: str = "none"  # none | relu | relu6 | relu_n1_to_1 (fused by LCE when there is no batch-norm)
    output: str = "float"  # float | int8 | packed (a second bconv reads the packed output)
    groups: int = 1
    batch_norm: bool = True
    maxpool: bool = False  # binary max-pool between two bconvs (needs output="packed")

    def recipe(self) -> dict:
        return {"kind": "conv", **asdict(self)}


@dataclass(frozen=True)
class ZooCase:
    """A larq-zoo architecture at a given input size."""

    name: str
    architecture: str
    size: int = 224
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def recipe(self) -> dict:
        return {"kind": "zoo", **asdict(self)}


@dataclass(frozen=True)
class TwoInputCase:
    """A model of two inputs and two outputs (an image and a feature map in; logits and the feature map
    the binary convolution refines out), as users' own models have: for feeding and naming inputs."""

    name: str = "two-inputs"
    size: int = 16
    channels: int = 32

    def recipe(self) -> dict:
        return {"kind": "two-inputs", **asdict(self)}


def recipe_hash(recipe: dict) -> str:
    text = json.dumps({"version": RECIPE_VERSION, **recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _recipe_hash(case, builder) -> str:
    """The cache key of ``case`` made by ``builder``: another builder, or the same one edited, makes another model.

    The builder's source is part of the key because a test's builder changes with the test (a renamed input
    once met a warm CI cache holding the model its old source had made)."""
    if builder is None:
        return recipe_hash(case.recipe())
    return recipe_hash({**case.recipe(), "builder": builder.__qualname__, "source": inspect.getsource(builder)})


def cached_tflite(case, builder=None) -> Path:
    """The .tflite of ``case``, converted by LCE once and cached under CACHE_DIR."""
    path = CACHE_DIR / f"{case.name}-{_recipe_hash(case, builder)}.tflite"
    if not path.exists():
        model = _built(builder or keras_model, case)
        _write_atomically(path, convert(model, int8=getattr(case, "output", "") == "int8"))
    return path


def convert(model, int8: bool = False) -> bytes:
    """Convert a Keras model with LCE's converter (int8 inputs/outputs for fake-quantized models)."""
    tf = _tf()
    import larq_compute_engine as lce

    if int8:
        return lce.convert_keras_model(model, inference_input_type=tf.int8, inference_output_type=tf.int8)
    return lce.convert_keras_model(model)


def keras_model(case):
    """The Keras model of a case (random, seeded initialisation)."""
    tf = _tf()
    tf.keras.utils.set_random_seed(int(recipe_hash(case.recipe())[:8], 16) % (2**31))
    if isinstance(case, ZooCase):
        return _zoo_model(case)
    if isinstance(case, TwoInputCase):
        return _two_input_model(case)
    return _conv_model(case)


def logits_model(model):
    """``model`` without its final softmax: random weights saturate the softmax, which hides differences."""
    tf = _tf()
    last = model.layers[-1]
    if type(last).__name__ in ("Activation", "Softmax"):
        return tf.keras.Model(model.inputs, last.input)
    return model


def keras_logits_model(case):
    """``keras_model(case)`` without its final softmax (a builder for ``cached_tflite``)."""
    return logits_model(keras_model(case))


def _zoo_model(case: ZooCase):
    import larq_zoo

    tf = _tf()
    family = larq_zoo.sota if case.architecture.startswith("QuickNet") else larq_zoo.literature
    builder = getattr(family, case.architecture)
    model = builder(input_shape=(case.size, case.size, 3), weights=None, **case.extra)
    _randomize_batch_norm(model, np.random.default_rng(case.seed))
    return tf.keras.Model(model.inputs, model.outputs)


def _randomize_batch_norm(model, rng) -> None:
    """Give batch-norms non-trivial statistics, so that thresholds and multipliers are exercised.

    Left at their initial statistics, batch-norms without a scale (XNOR-Net's) map 0 to exactly 0, and a
    binary conv's zero dot products then sit on the sign's tie, where float rounding decides the bit.
    """
    import tensorflow as tf

    draws = {
        "gamma": lambda shape: rng.uniform(0.5, 1.5, shape),
        "beta": lambda shape: rng.normal(0, 0.3, shape),
        "moving_mean": lambda shape: rng.normal(0, 1.0, shape),
        "moving_variance": lambda shape: rng.uniform(0.5, 2.0, shape),
    }
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            for weight in layer.weights:
                role = weight.name.split("/")[-1].split(":")[0]
                weight.assign(draws[role](weight.shape).astype("float32"))


def _conv_model(case: ConvCase):
    import larq as lq

    tf = _tf()
    quantized = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                     use_bias=False)
    fake_quant = tf.keras.layers.Lambda(lambda t: tf.quantization.fake_quant_with_min_max_args(t, -3.0, 3.0))
    x = tf.keras.Input((case.size, case.size, case.channels_in))
    y = fake_quant(x) if case.output == "int8" else x

    def bconv(t, channels, groups=1):
        return lq.layers.QuantConv2D(
            channels, case.kernel, strides=case.strides, dilation_rate=case.dilation, padding=case.padding,
            pad_values=case.pad_values, groups=groups, **quantized)(t)

    y = bconv(y, case.channels_out, case.groups)
    if case.batch_norm:
        y = tf.keras.layers.BatchNormalization()(y)
    activation = {
        "none": None,
        "relu": tf.keras.layers.ReLU(),
        "relu6": tf.keras.layers.ReLU(6.0),
        "relu_n1_to_1": tf.keras.layers.Lambda(lambda t: tf.clip_by_value(t, -1.0, 1.0)),
    }[case.activation]
    if activation is not None:
        y = activation(y)
    if case.output == "packed":
        if case.maxpool:
            y = tf.keras.layers.MaxPool2D(2, strides=2, padding="same")(y)
        y = lq.layers.QuantConv2D(16, 1, **quantized)(y)  # reads the bitpacked hand-off
        y = tf.keras.layers.BatchNormalization()(y)
    if case.output == "int8":
        y = fake_quant(y)
    model = tf.keras.Model(x, y)
    _randomize_batch_norm(model, np.random.default_rng(0))
    return model


def _two_input_model(case: TwoInputCase):
    import larq as lq

    tf = _tf()
    image = tf.keras.Input((case.size, case.size, 3), name="image")
    features = tf.keras.Input((case.size // 2, case.size // 2, case.channels), name="features")
    x = tf.keras.layers.Conv2D(case.channels, 3, strides=2, padding="same")(image)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(case.channels, 3, padding="same", input_quantizer="ste_sign",
                              kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    refined = tf.keras.layers.Add(name="refined")([x, features])
    logits = tf.keras.layers.Dense(10, name="logits")(tf.keras.layers.GlobalAveragePooling2D()(refined))
    model = tf.keras.Model([image, features], [logits, refined])
    _randomize_batch_norm(model, np.random.default_rng(0))
    return model


def lce_interpreter(path: Path, num_threads: int = 1):
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    return Interpreter(Path(path).read_bytes(), num_threads=num_threads)


def random_input(shape, dtype="float32", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "int8":
        return rng.integers(-128, 128, size=shape, dtype=np.int8)
    return rng.standard_normal(shape).astype(dtype)


def convert_stock(model) -> bytes:
    """Convert a Keras model with TensorFlow's own TFLite converter: float ops only, no LCE.

    Larq layers come out as SIGN, PADV2 and CONV_2D / FULLY_CONNECTED with +-1 (or, with a batch-norm
    folded in, +-s) filters, which ``bnn_tvm.transform.recognize_binary_layers`` turns back into
    binary ops.
    """
    return _tf().lite.TFLiteConverter.from_keras_model(model).convert()


def cached_stock_tflite(case, builder=None) -> Path:
    """The .tflite of ``case`` converted by ``convert_stock`` once and cached under CACHE_DIR.

    Named ``<name>-float-<recipe hash>``.
    """
    path = CACHE_DIR / f"{case.name}-float-{_recipe_hash(case, builder)}.tflite"
    if not path.exists():
        _write_atomically(path, convert_stock(_built(builder or keras_model, case)))
    return path


def cached_saved_model(case, builder=None, model=None) -> Path:
    """The SavedModel folder of ``case`` (``model.save``, TensorFlow format), written once and cached under CACHE_DIR.

    Named ``<name>-savedmodel-<recipe hash>``. Saving traces every layer's call and takes longer than building
    the model (MeliusNet22: ~40 s), so the tests that import SavedModels share the folders through the cache.
    The model is seeded by its recipe: ``(builder or keras_model)(case)`` rebuilds the same weights in any process.
    ``model``, if given, is that model, built by the caller already: it is saved instead of building another.
    """
    path = CACHE_DIR / f"{case.name}-savedmodel-{_recipe_hash(case, builder)}"
    if path.exists():
        return path
    model = model if model is not None else _built(builder or keras_model, case)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Saved beside the entry and renamed into place: an interrupted save never leaves a torn folder at ``path``.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save(partial, save_format="tf")
        try:
            os.replace(partial, path)
        except OSError:
            if not path.exists():  # else another process saved the same model first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return path


def _write_atomically(path: Path, data: bytes) -> None:
    """Write through a temporary file, so that an interrupted conversion never leaves a broken cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
