"""SavedModels through their traced serving graph (``bnn_tvm.frontend.saved_model``), binary layers recognized.

Tolerances: a model whose binary convolutions see only +-1 data and +-1 weights computes integers below 2^24,
exact in float32 in any summation order, so bnn-tvm must equal Keras bit for bit; so must graphs that only move
data (reshapes, slices, gathers). The larq-zoo architectures have float layers and batch-norms, which TVM
computes with its own kernels and the graph passes fold into the binary ops' multipliers: logits agree to float
rounding, as in tests/test_keras_zoo.py (RTOL there; measured here on the graph route: MeliusNet22 1.2e-6,
RealToBinaryNet 7.8e-6 of the largest logit).
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
    # Named by the serving signature's keys, which Keras takes from the model's input and output layers.
    signature = compiled.signature()
    assert ([s.name for s in signature.inputs], [s.name for s in signature.outputs]) == (["image"], model.output_names)


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


def save_signature(function, folder, shape, dtype=tf.float32):
    """A SavedModel of ``function`` on one input ``x`` of ``shape`` (None: left open), as ``serving_default``."""
    module = tf.Module()
    module.f = tf.function(function, input_signature=[tf.TensorSpec(shape, dtype, name="x")])
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.f})
    return folder


def reshape_model():
    """Binary layers around Keras's Reshape and Flatten, whose shapes the graph computes from ``tf.shape`` (Shape ->
    StridedSlice -> Pack), and a Lambda that Keras refuses untrusted, so that the folder goes through its graph.
    Every sum is an integer, exact in float32."""
    tf.keras.utils.set_random_seed(1)
    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                  use_bias=False)
    x = tf.keras.Input((6, 6, 40), name="image")
    y = lq.layers.QuantConv2D(32, 3, padding="same", pad_values=1.0, **binary)(x)
    y = tf.keras.layers.Reshape((3, 2, 6, 32))(y)
    # The batch from tf.shape again (Shape, StridedSlice, Pack), after a reversing slice of the tensor.
    y = tf.keras.layers.Lambda(lambda t: tf.reshape(t[:, ::-1], tf.stack([tf.shape(t)[0], 6, 192])))(y)
    y = tf.keras.layers.Flatten()(y)
    y = lq.layers.QuantDense(10, **binary)(y)
    return tf.keras.Model(x, y)


def test_computed_reshape_shape_compiles_untrusted_and_is_exact(tmp_path, build_and_load):
    """Issue 20: Keras refuses the folder untrusted (a Lambda), its graph computes Reshape shapes from tf.shape:
    they fold to constants once the input shape is fixed, here with a batch of 3."""
    from bnn_tvm.frontend.errors import ModelCodeError
    from bnn_tvm.frontend.keras import from_keras

    model = reshape_model()
    folder = save_atomically(model, tmp_path / "reshape")
    with pytest.raises(ModelCodeError):
        from_keras(folder)  # so compiling goes through the graph
    shape = (3, 6, 6, 40)
    mod = import_model(folder, input_shapes={"image": list(shape)})
    assert (count_calls(mod, "relax.bnn.bconv2d"), count_calls(mod, "relax.bnn.bdense")) == (1, 1)
    compiled = build_and_load(folder, input_shapes={"image": list(shape)})
    for seed in range(2):
        x = with_zeros(zoo.random_input(shape, seed=seed))
        np.testing.assert_array_equal(compiled(x), model.predict(x, verbose=0))


def shape_arithmetic(x):
    """Reshapes to shapes computed from ``tf.shape`` (the batch is left open: Shape is not folded by TF), with
    every shape op the importer folds, and slices of tensors with ellipsis, new axes and negative strides."""
    s = tf.shape(x)
    n, c = s[0], s[-1]
    y = tf.reshape(x, tf.stack([n, tf.reduce_prod(s[1:3]), tf.cast(tf.cast(c, tf.float32) / 2.0, tf.int32), -1]))
    y = y[..., ::-1, tf.newaxis, 1:] + tf.zeros_like(y[..., ::-1, tf.newaxis, 1:])  # [n, 24, 4, 1, 1]
    y = tf.reshape(y, tf.concat([s[:1], tf.fill([1], -1)], axis=0))
    reversed_shape = tf.gather(s, tf.range(tf.rank(x) - 1, -1, -1))  # [8, 6, 4, n]
    z = tf.reshape(x, reversed_shape)[::-2, 1::2, -1]  # [4, 3, 2]
    z = tf.reshape(z, [n, tf.size(z) // n])
    w = tf.slice(x, [0, 1, 0, 2], [-1, s[1] // 2, tf.math.floormod(s[2], 4), -1])
    w = tf.reshape(w, [s[0] * 1, -1])
    return tf.concat([y, z, w], axis=1)


def test_shape_arithmetic_folds_to_constants(tmp_path, build_and_load):
    folder = save_signature(shape_arithmetic, tmp_path / "shapes", [None, 4, 6, 8])
    mod = from_saved_model(folder, input_shapes={"x": [2, 4, 6, 8]})
    # The shapes are constants, not vectors stacked and concatenated at run time: one concat is left, the data's.
    assert (count_calls(mod, "relax.stack"), count_calls(mod, "relax.concat")) == (0, 1)
    compiled = build_and_load(mod)
    x = zoo.random_input((2, 4, 6, 8))
    # Data movement only: exact.
    np.testing.assert_array_equal(compiled(x), shape_arithmetic(tf.constant(x)).numpy())


def data_dependent_reshape(x):
    return tf.reshape(x, tf.stack([tf.cast(tf.reduce_max(tf.abs(x)) * 0.0 + 2.0, tf.int32), -1]))


def data_dependent_slice(x):
    return x[tf.cast(tf.reduce_max(x) * 0.0, tf.int32):]


@pytest.mark.parametrize("function,message", [
    (data_dependent_reshape, r"TensorFlow op Reshape \(Reshape\): its shape \(input 1, stack:output:0\) is computed "
                             r"from the model's input data, not from shapes and constants only"),
    (data_dependent_slice, r"TensorFlow op StridedSlice \(strided_slice\): its begin \(input 1, "
                           r"strided_slice/stack:output:0\) is computed from the model's input data"),
])
def test_a_shape_computed_from_data_is_named(function, message, tmp_path):
    folder = save_signature(function, tmp_path / function.__name__, [4, 6])
    with pytest.raises(UnsupportedModelError, match=message):
        from_saved_model(folder)


def dilated_model():
    """Dilated binary convolutions, zero- and one-padded, and a dilated float depthwise one: TF computes each as
    SpaceToBatchND -> Conv2D -> BatchToSpaceND."""
    tf.keras.utils.set_random_seed(2)
    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                  use_bias=False)
    x = tf.keras.Input((9, 9, 16), name="image")
    y = lq.layers.QuantConv2D(32, 3, dilation_rate=2, padding="same", **binary)(x)
    y = lq.layers.QuantConv2D(32, 3, dilation_rate=3, padding="same", pad_values=1.0, **binary)(y)
    y = lq.layers.QuantConv2D(32, 3, dilation_rate=2, padding="valid", **binary)(y)
    return tf.keras.Model(x, tf.keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same")(y))


def test_dilated_convolutions_through_the_graph(tmp_path, build_and_load):
    model = dilated_model()
    folder = save_atomically(model, tmp_path / "dilated")
    mod = from_saved_model(folder)
    # Fused back into dilated convolutions: binary layers, no space-to-batch shuffles left.
    assert count_calls(mod, "relax.permute_dims") == 0
    assert count_calls(optimize(mod), "relax.bnn.bconv2d") == 3
    compiled = build_and_load(mod)
    # The binary layers are exact; the float depthwise layer sums 9 products per output in an order of TVM's
    # choosing: float rounding, a few ulps of the largest output at most (measured: equal).
    for seed in range(2):
        x = with_zeros(zoo.random_input((1, 9, 9, 16), seed=seed))
        expected = model.predict(x, verbose=0)
        np.testing.assert_allclose(compiled(x), expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def shuffle(x):
    """SpaceToBatchND and BatchToSpaceND that make no dilated convolution (other blocks, a relu between)."""
    y = tf.space_to_batch_nd(x, [2, 3], [[1, 1], [0, 1]])  # [6, 4, 3, 5]
    return tf.batch_to_space(tf.nn.relu(y), [3, 2], [[1, 2], [0, 1]])  # [1, 9, 5, 5]


def cropped_atrous(x):
    """A dilated convolution built by hand, cropping more than SpaceToBatchND padded (tf.nn.convolution never
    does): the fused convolution is sliced."""
    filters = tf.constant(np.random.default_rng(3).standard_normal((3, 3, 5, 4)).astype(np.float32))
    y = tf.nn.conv2d(tf.space_to_batch_nd(x, [2, 2], [[2, 2], [2, 2]]), filters, 1, "VALID")  # [4, 3, 4, 4]
    return tf.batch_to_space(y, [2, 2], [[0, 3], [1, 3]])  # [1, 3, 4, 4]


@pytest.mark.parametrize("function,permutes", [(shuffle, 2), (cropped_atrous, 0)], ids=["shuffle", "cropped"])
def test_space_to_batch_as_itself_or_as_a_dilated_convolution(function, permutes, tmp_path, build_and_load):
    folder = save_signature(function, tmp_path / function.__name__, [1, 6, 8, 5])
    mod = from_saved_model(folder)
    assert count_calls(mod, "relax.permute_dims") == permutes  # the cropped one is fused
    compiled = build_and_load(mod)
    x = zoo.random_input((1, 6, 8, 5))
    expected = function(tf.constant(x)).numpy()
    # The shuffle moves data: exact. The convolution sums 45 products in TVM's order: float rounding (measured:
    # equal).
    np.testing.assert_allclose(compiled(x), expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    if function is shuffle:
        np.testing.assert_array_equal(compiled(x), expected)


# The larq-zoo architectures whose SavedModel Keras refuses untrusted (their Lambda layers are Python code), so
# that the folder compiles from its traced graph, with their binary convolutions; every other one Keras rebuilds
# without running code (measured on larq-zoo 2.4.0; QuickNet's TFOpLambda layers name TensorFlow ops, no code).
# 64x64 is the smallest input both accept. RealToBinaryNet's attention branch reshapes its dense output to
# [batch, 1, 1, C] through Shape -> StridedSlice -> Pack (issue 20).
GRAPH_ROUTE = {"MeliusNet22": 34, "RealToBinaryNet": 16}


@pytest.mark.parametrize("architecture", GRAPH_ROUTE)
def test_zoo_saved_model_compiles_untrusted_and_matches_keras(architecture, build_and_load):
    """The folder (cached by its recipe) compiles without trust_model_code, every binary convolution recognized."""
    from bnn_tvm.frontend.errors import ModelCodeError
    from bnn_tvm.frontend.keras import from_keras

    case = zoo.ZooCase(f"{architecture}-64-logits", architecture, size=64)
    model = zoo.keras_logits_model(case)  # seeded: the same model as the cached folder's
    folder = zoo.cached_saved_model(case, builder=zoo.keras_logits_model, model=model)
    with pytest.raises(ModelCodeError):
        from_keras(folder)
    binary_layers = sum(type(layer).__name__ == "QuantConv2D" for layer in model.layers)
    assert count_calls(import_model(folder), "relax.bnn.bconv2d") == binary_layers == GRAPH_ROUTE[architecture]
    compiled = build_and_load(folder)
    # model(x) computes what model.predict does, without tracing predict's function (half a minute here).
    compare_logits(compiled, lambda x: model(x, training=False).numpy(), (1, 64, 64, 3),
                   f"{architecture} SavedModel", RTOL)
