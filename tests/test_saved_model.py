"""SavedModels through their traced serving graph (``bnn_tvm.frontend.saved_model``), binary layers recognized.

Tolerances: a model whose binary convolutions see only +-1 data and +-1 weights computes integers below 2^24,
exact in float32 in any summation order, so bnn-tvm must equal Keras bit for bit. MeliusNet22 has float
layers and batch-norms, which TVM computes with its own kernels and the graph passes fold into the binary
ops' multipliers: logits agree to float rounding, as in tests/test_keras_zoo.py (RTOL there, measured up to
~1e-5 of the largest logit; the graph route folds batch-norms the same way).
"""

import os
import shutil

import numpy as np
import pytest
import tvm
from tvm import relax

import bnn_tvm
from bnn_tvm import zoo
from bnn_tvm.build import import_model
from bnn_tvm.frontend import UnsupportedModelError
from bnn_tvm.frontend.saved_model import from_saved_model
from bnn_tvm.transform import optimize

from .helpers import compare_logits
from .test_keras_zoo import RTOL

tf = pytest.importorskip("tensorflow")
lq = pytest.importorskip("larq")


def count_calls(mod: tvm.IRModule, name: str) -> int:
    found = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: found.append(e) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)
        and e.op.name == name else None)
    return len(found)


def save_atomically(model, folder):
    """``model.save(folder)`` through a temporary folder, so an interrupted save never leaves a cache entry."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    os.replace(tmp, folder)
    return folder


def small_model():
    """Two binary convolutions (one-padded SAME, then zero-padded SAME with stride 2) and a binary dense:
    every sum is an integer, exact in float32."""
    tf.keras.utils.set_random_seed(0)
    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                  use_bias=False)
    x = tf.keras.Input((9, 9, 40), name="image")
    y = lq.layers.QuantConv2D(36, 3, padding="same", pad_values=1.0, **binary)(x)
    y = lq.layers.QuantConv2D(64, 3, strides=2, padding="same", **binary)(y)
    y = tf.keras.layers.Flatten()(y)
    y = lq.layers.QuantDense(10, **binary)(y)
    return tf.keras.Model(x, y)


def with_zeros(x: np.ndarray) -> np.ndarray:
    """``x`` with some 0.0 and -0.0, which larq's sign maps to +1."""
    x = x.copy()
    x.reshape(-1)[::7] = 0.0
    x.reshape(-1)[3::11] = -0.0
    return x


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = small_model()
    return model, save_atomically(model, tmp_path_factory.mktemp("saved") / "small")


def test_small_model_through_the_graph_is_exact(small, tmp_path, build_and_load):
    model, folder = small
    mod = from_saved_model(folder)  # the graph route, forced
    optimized = optimize(mod)
    assert (count_calls(optimized, "relax.bnn.bconv2d"), count_calls(optimized, "relax.bnn.bdense")) == (2, 1)
    assert count_calls(optimized, "relax.nn.conv2d") == count_calls(optimized, "relax.matmul") == 0
    compiled = build_and_load(mod)
    for seed in range(3):
        x = with_zeros(zoo.random_input((1, 9, 9, 40), seed=seed))
        np.testing.assert_array_equal(compiled(x), model.predict(x, verbose=0))

    # Without Keras metadata, compiling the folder takes the graph route by itself.
    bare = shutil.copytree(folder, tmp_path / "bare", ignore=shutil.ignore_patterns("keras_metadata.pb"))
    compiled = build_and_load(bare)
    x = with_zeros(zoo.random_input((1, 9, 9, 40), seed=5))
    np.testing.assert_array_equal(compiled(x), model.predict(x, verbose=0))


def test_batch_from_input_shapes(small):
    _, folder = small
    mod = from_saved_model(folder, input_shapes={"image": [4, 9, 9, 40]})
    assert [int(d) for d in mod["main"].params[0].ty.shape] == [4, 9, 9, 40]
    with pytest.raises(ValueError, match=r"image.*dimension 1 \(height\) is 9"):
        from_saved_model(folder, input_shapes={"image": [1, 8, 9, 40]})


def test_errors_name_what_and_where(tmp_path):
    class Cumulative(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def __call__(self, x):
            return tf.math.cumsum(x, axis=1)

    module = Cumulative()
    tf.saved_model.save(module, str(tmp_path / "cumsum"), signatures={"serving_default": module.__call__})
    with pytest.raises(UnsupportedModelError, match=r"cumsum: signature 'serving_default'.*TensorFlow op Cumsum "
                                                     r"\(Cumsum\) is not supported"):
        from_saved_model(tmp_path / "cumsum")
    with pytest.raises(UnsupportedModelError, match=r"no signature 'predict'; the SavedModel has serving_default"):
        from_saved_model(tmp_path / "cumsum", signature="predict")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "saved_model.pb").write_bytes(b"\x12\xff\xff\xff\x7f")
    with pytest.raises(UnsupportedModelError, match=r"broken/saved_model.pb: not a SavedModel protocol buffer"):
        from_saved_model(tmp_path / "broken")


MELIUS = zoo.ZooCase("MeliusNet22-64-logits", "MeliusNet22", size=64)


def test_meliusnet22_saved_model_compiles_and_matches_keras(build_and_load):
    """Keras cannot revive this SavedModel (a Lambda's closure fails: "'str' object is not callable"), and its
    Lambdas carry code: the folder compiles from its traced graph."""
    model = zoo.keras_logits_model(MELIUS)  # seeded: the same model as the cached folder's
    folder = zoo.CACHE_DIR / f"{MELIUS.name}-savedmodel-{zoo.recipe_hash(MELIUS.recipe())}"
    if not folder.exists():
        save_atomically(model, folder)
    binary_layers = sum(type(layer).__name__ == "QuantConv2D" for layer in model.layers)
    assert count_calls(import_model(folder), "relax.bnn.bconv2d") == binary_layers == 34
    compiled = build_and_load(folder)
    # model(x) computes what model.predict does, without tracing predict's function (half a minute here).
    compare_logits(compiled, lambda x: model(x, training=False).numpy(), (1, 64, 64, 3), "MeliusNet22 SavedModel",
                   RTOL)
