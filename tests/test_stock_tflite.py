"""Larq models converted by the stock TFLite converter (float ops, no LCE) compile to binary ops.

The converter writes a binary layer as SIGN(ADD(SIGN(x), 0.1)), PADV2 with 1.0 for one-padding and a
CONV_2D / FULLY_CONNECTED whose filter is +-1, or +-s per output channel when a batch-norm follows
and is folded in; ``RecognizeBinaryLayers`` turns that back into quantize + bconv2d / bdense.

Tolerances against ``tf.lite.Interpreter``: with +-1 filters every partial sum of the float
convolution is an integer below 2^24, so TFLite's float result is exact whatever its summation order
and bnn-tvm's must equal it bit for bit. With +-s filters TFLite sums K products of magnitude s in
float32, off from the exact s * dot by at most (K - 1) u K s (u = 2^-24, the bound of any summation
order); bnn-tvm's LCE formula adds about 2 u K s. Larger differences would be a wrong bit.
"""

from dataclasses import asdict, dataclass

import numpy as np
import pytest
import tvm
from tvm import relax

from bnn_tvm import zoo
from bnn_tvm.frontend import from_tflite
from bnn_tvm.transform import optimize
from bnn_tvm.transform.recognize_binary_layers import RecognizeBinaryLayers
from tests.helpers import Built, single_op_module

R = relax.op
UNIT_ROUNDOFF = 2.0**-24
BINARY_OPS = ("relax.bnn.bconv2d", "relax.bnn.bdense")


def calls(mod, name: str) -> list[relax.Call]:
    found = []
    relax.analysis.post_order_visit(
        mod["main"],
        lambda e: found.append(e) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)
        and e.op.name == name else None,
    )
    return found


def recognize(mod):
    """RecognizeBinaryLayers alone, after FoldConstant as in ``optimize``, on a copy of ``mod`` (the
    pass plumbing updates the module it is given in place)."""
    copy = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    return RecognizeBinaryLayers()(relax.transform.FoldConstant()(copy))


def with_zeros(x: np.ndarray) -> np.ndarray:
    """``x`` with some 0.0 and -0.0, which binarize to +1 (bit 0), as x >= 0 does."""
    x = x.copy()
    x.reshape(-1)[::7] = 0.0
    x.reshape(-1)[3::11] = -0.0
    return x


# ---------------------------------------------------------------- the pass on small graphs

SIZE, CHANNELS_IN, CHANNELS_OUT = 6, 40, 36


def larq_sign(x, offset=0.1):
    return R.sign(R.add(R.sign(x), relax.const(offset, "float32")))


def plus_minus_one(rng, shape, scales=None):
    """A +-1 filter (HWIO), times ``scales`` per output channel (the last axis)."""
    signs = np.where(rng.standard_normal(shape) < 0, -1.0, 1.0).astype("float32")
    return signs if scales is None else (signs * scales).astype("float32")


def conv(data, weights, padding=(0, 0, 0, 0), strides=(1, 1), groups=1, kernel_layout="HWIO"):
    return R.nn.conv2d(data, relax.const(weights), strides=strides, padding=padding, groups=groups,
                       data_layout="NHWC", kernel_layout=kernel_layout)


def compile_and_run(mod, x, graph_passes=True):
    """``mod`` through bnn-tvm (optionally without graph passes: TVM's own float ops) on ``x``."""
    import bnn_tvm

    executable = bnn_tvm.compile(mod, graph_passes=graph_passes).executable
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.fixture
def x(rng):
    return with_zeros(rng.standard_normal((1, SIZE, SIZE, CHANNELS_IN)).astype("float32"))


@pytest.fixture
def filter_hwio(rng):
    return plus_minus_one(rng, (3, 3, CHANNELS_IN, CHANNELS_OUT))


@pytest.mark.parametrize("layer, padding, pad_value", [
    (lambda x, w: conv(R.nn.pad(larq_sign(x), [0, 0, 1, 1, 1, 1, 0, 0], "constant", 1.0), w), "SAME", 1),
    (lambda x, w: conv(R.nn.pad(larq_sign(x), [0, 0, 0, 1, 0, 1, 0, 0], "constant", 1.0), w, strides=(2, 2)),
     "SAME", 1),
    (lambda x, w: conv(larq_sign(x), w, padding=(1, 1, 1, 1)), "SAME", 0),
    (lambda x, w: conv(larq_sign(x), w), "VALID", 1),
    # More one-padding than SAME's: the pad stays, on the float input, before a VALID bconv2d.
    (lambda x, w: conv(R.nn.pad(larq_sign(x), [0, 0, 2, 1, 0, 2, 0, 0], "constant", 1.0), w), "VALID", 1),
    (lambda x, w: conv(R.nn.pad(larq_sign(x), [0, 0, 1, 1, 1, 1, 0, 0], "constant", -1.0), w), "VALID", 1),
], ids=["one-padding", "one-padding-stride2", "zero-padding", "valid", "wider-one-padding", "minus-one-padding"])
def test_binary_conv_becomes_bconv2d_with_the_same_result(layer, padding, pad_value, x, filter_hwio):
    mod = single_op_module(lambda v: layer(v, filter_hwio), x)
    optimized = optimize(mod)
    (bconv,) = calls(optimized, "relax.bnn.bconv2d")
    assert (bconv.attrs["padding"], bconv.attrs["pad_value"]) == (padding, pad_value)
    assert not calls(optimized, "relax.nn.conv2d") and not calls(optimized, "relax.sign")
    np.testing.assert_array_equal(compile_and_run(mod, x), compile_and_run(mod, x, graph_passes=False))


def test_filter_of_plus_minus_s_per_channel_gives_the_multiplier(rng, x):
    scales = rng.uniform(0.5, 2.0, CHANNELS_OUT).astype("float32")
    weights = plus_minus_one(rng, (3, 3, CHANNELS_IN, CHANNELS_OUT), scales)
    mod = single_op_module(lambda v: conv(larq_sign(v), weights), x)
    (bconv,) = calls(recognize(mod), "relax.bnn.bconv2d")
    np.testing.assert_array_equal(bconv.args[2].value.numpy(), scales)
    depth = 9 * CHANNELS_IN
    np.testing.assert_allclose(compile_and_run(mod, x), compile_and_run(mod, x, graph_passes=False), rtol=0,
                               atol=(depth + 2) * depth * scales.max() * UNIT_ROUNDOFF)


def test_grouped_conv_with_whole_words_per_group(rng):
    x = rng.standard_normal((1, SIZE, SIZE, 128)).astype("float32")
    weights = plus_minus_one(rng, (3, 3, 64, 32))
    mod = single_op_module(lambda v: conv(larq_sign(v), weights, groups=2), x)
    assert len(calls(optimize(mod), "relax.bnn.bconv2d")) == 1
    np.testing.assert_array_equal(compile_and_run(mod, x), compile_and_run(mod, x, graph_passes=False))


def test_binary_matmul_becomes_bdense(rng):
    x = with_zeros(rng.standard_normal((1, 100)).astype("float32"))
    weights = plus_minus_one(rng, (100, 10))
    mod = single_op_module(lambda v: R.matmul(larq_sign(v), relax.const(weights)), x)
    assert len(calls(optimize(mod), "relax.bnn.bdense")) == 1
    np.testing.assert_array_equal(compile_and_run(mod, x), compile_and_run(mod, x, graph_passes=False))


def one_weight_changed(w):
    changed = w.copy()
    changed[0, 0, 0, 0] = 0.5 * np.sign(changed[0, 0, 0, 0])
    return changed


@pytest.mark.parametrize("layer", [
    lambda x, w: conv(R.sign(x), w),  # sign(0) is 0, not +1
    lambda x, w: conv(larq_sign(x, offset=1.0), w),  # sign(-1 + 1) is 0
    lambda x, w: conv(larq_sign(x, offset=-0.1), w),  # sign(0 - 0.1) is -1, where quantize gives +1
    lambda x, w: conv(larq_sign(x), one_weight_changed(w)),  # one output channel not +-s
    lambda x, w: conv(R.nn.pad(larq_sign(x), [0, 0, 1, 1, 1, 1, 0, 0], "constant", 0.0), w),  # 0 is not +-1
    lambda x, w: conv(larq_sign(x), w, padding=(1, 1, 0, 0)),  # zero padding that is not SAME's
    lambda x, w: conv(larq_sign(x), w[:, :, :CHANNELS_IN // 2, :], groups=2),  # 20 channels a group: no whole words
    lambda x, w: conv(larq_sign(x), w[..., :1], groups=CHANNELS_IN, kernel_layout="HWOI"),  # depthwise
], ids=["bare-sign", "offset-1", "negative-offset", "not-plus-minus-s", "zero-pad-op", "zero-padding-not-same",
        "partial-words-per-group", "depthwise"])
def test_what_is_not_provably_binary_stays_float(layer, x, filter_hwio):
    mod = single_op_module(lambda v: layer(v, filter_hwio), x)
    optimized = optimize(mod)
    assert not any(calls(optimized, name) for name in BINARY_OPS)
    assert len(calls(optimized, "relax.nn.conv2d")) == 1


# ---------------------------------------------------------------- stock-converted Larq models


@dataclass(frozen=True)
class DenseCase:
    """Flatten, QuantDense, batch-norm, QuantDense: two FULLY_CONNECTED layers, one with BN folded in."""

    name: str
    size: int = 4
    channels: int = 40
    hidden: int = 64
    units: int = 10

    def recipe(self) -> dict:
        return {"kind": "stock-dense", **asdict(self)}


def dense_model(case: DenseCase):
    import larq as lq
    import tensorflow as tf

    tf.keras.utils.set_random_seed(int(zoo.recipe_hash(case.recipe())[:8], 16) % (2**31))
    quantized = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                     use_bias=False)
    x = tf.keras.Input((case.size, case.size, case.channels))
    y = tf.keras.layers.Flatten()(x)
    y = lq.layers.QuantDense(case.hidden, **quantized)(y)
    y = tf.keras.layers.BatchNormalization()(y)
    y = lq.layers.QuantDense(case.units, **quantized)(y)
    model = tf.keras.Model(x, y)
    zoo._randomize_batch_norm(model, np.random.default_rng(0))
    return model


C = zoo.ConvCase
# (case, binary layers expected). ConvCase's binary conv reads the model input directly and is
# followed by a batch-norm, which the converter folds into the filter (+-s) unless batch_norm=False.
STOCK_CASES = [
    (C("stock-one-padding"), 1),
    (C("stock-one-padding-stride2", strides=2, channels_in=33, channels_out=40), 1),
    (C("stock-zero-padding", pad_values=0.0, channels_in=33), 1),
    (C("stock-zero-padding-stride2", pad_values=0.0, strides=2, size=10, kernel=5), 1),
    (C("stock-valid-97", padding="valid", channels_out=97), 1),
    (C("stock-relu", activation="relu", batch_norm=False), 1),
    (C("stock-groups2", channels_in=128, channels_out=64, groups=2), 1),
    (C("stock-two-layers", output="packed", channels_in=64, channels_out=33, strides=2), 2),
    (DenseCase("stock-dense"), 2),
    # TF writes a dilated conv as SPACE_TO_BATCH_ND (padding with zeros), CONV_2D, BATCH_TO_SPACE_ND.
    (C("stock-dilation2", dilation=2, size=9), 0),
]


def stock_tflite(case):
    return zoo.cached_stock_tflite(case, dense_model if isinstance(case, DenseCase) else None)


def tflite_predict(path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def depth(call: relax.Call) -> int:
    """K: the +-1 products summed per output of a bconv2d or bdense."""
    input_words = int(call.args[0].ty.shape[-1])
    filter_shape = [int(d) for d in call.args[1].ty.shape]  # [Cout, (kh, kw,) words per group]
    groups = input_words // filter_shape[-1]
    taps = int(np.prod(filter_shape[1:-1]))
    return taps * int(call.attrs["channels_in"]) // groups


def tolerance(recognized) -> float:
    """The summation bound of the module docstring, over the binary layers with +-s filters."""
    bounds = [0.0]
    for name in BINARY_OPS:
        for call in calls(recognized, name):
            scales = call.args[2].value.numpy()
            if np.any(scales != 1):  # +-1 filters are exact
                bounds.append((depth(call) + 2) * depth(call) * float(scales.max()) * UNIT_ROUNDOFF)
    return max(bounds)


@pytest.mark.parametrize("case, binary_layers", STOCK_CASES, ids=lambda c: getattr(c, "name", ""))
def test_stock_converted_model_compiles_to_binary_ops_and_agrees_with_tflite(case, binary_layers, build_and_load):
    path = stock_tflite(case)
    imported = from_tflite(path)
    shape = [int(d) for d in imported["main"].params[0].ty.shape]
    recognized = recognize(imported)
    assert sum(len(calls(recognized, name)) for name in BINARY_OPS) == binary_layers
    assert sum(len(calls(optimize(imported), name)) for name in BINARY_OPS) == binary_layers
    compiled = build_and_load(imported)
    for seed in range(2):
        x = with_zeros(zoo.random_input(shape, seed=seed))
        got, expected = compiled(x), tflite_predict(path, x)
        assert got.shape == expected.shape
        # Without binary layers both sides are float convolutions (TVM's, XNNPACK's): rounding only.
        atol = tolerance(recognized) if binary_layers else 1e-5 * np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


def test_stock_converted_zoo_model_runs_binary_and_agrees_with_tflite(build_and_load):
    """QuickNetSmall: its 16 binary convolutions (4 sections of 4 blocks) become bconv2d; float stem,
    depthwise and classifier stay float (computed by TVM, not XNNPACK: rounding differs, so an
    activation within rounding of 0 could binarize differently; the top-1 class must not change)."""
    case = zoo.ZooCase("QuickNetSmall-64", "QuickNetSmall", size=64)
    path = zoo.cached_stock_tflite(case)
    imported = from_tflite(path)
    assert len(calls(optimize(imported), "relax.bnn.bconv2d")) == 16
    compiled = build_and_load(imported)
    worst = 0.0
    for seed in range(3):
        x = zoo.random_input((1, case.size, case.size, 3), seed=seed)
        got, expected = compiled(x), tflite_predict(path, x)
        assert got.argmax() == expected.argmax(), f"top-1 differs on input {seed}"
        worst = max(worst, float(np.abs(got - expected).max()))
    print(f"{case.name} (stock converter): max abs difference {worst:.3g} over 3 inputs")


@dataclass(frozen=True)
class SpaceToBatchCase:
    """SPACE_TO_BATCH_ND then BATCH_TO_SPACE_ND with other blocks, padding and crops on both sides."""

    name: str = "stock-space-to-batch"

    def recipe(self) -> dict:
        return {"kind": "stock-space-to-batch", **asdict(self)}


def space_to_batch_model(_case):
    import tensorflow as tf

    x = tf.keras.Input((7, 8, 3))
    y = tf.keras.layers.Lambda(lambda t: tf.space_to_batch_nd(t, [2, 3], [[1, 0], [0, 1]]))(x)  # [6, 4, 3, 3]
    y = tf.keras.layers.Lambda(lambda t: t * 2.0)(y)
    y = tf.keras.layers.Lambda(lambda t: tf.batch_to_space(t, [3, 2], [[1, 2], [0, 1]]))(y)  # [1, 9, 5, 3]
    return tf.keras.Model(x, y)


def test_space_to_batch_and_back_run_as_tflite_does(build_and_load):
    """TVM's own converters of these (which TF emits for dilated convolutions) fail at run time."""
    path = zoo.cached_stock_tflite(SpaceToBatchCase(), space_to_batch_model)
    x = zoo.random_input((1, 7, 8, 3))
    np.testing.assert_array_equal(build_and_load(path)(x), tflite_predict(path, x))


def _cumsum_model(_case):
    import tensorflow as tf

    x = tf.keras.Input((8, 8, 3))
    y = tf.keras.layers.Lambda(lambda t: tf.math.cumsum(t, axis=1))(x)
    return tf.keras.Model(x, tf.keras.layers.Conv2D(4, 3)(y))


def test_an_op_whose_tir_tvm_writes_by_hand_compiles(build_and_load):
    """TVM writes cumsum's TIR already scheduled, without the root block schedules look for: it used to end in
    "ScheduleError: Cannot find a block with the name: root" (reported as a bug in bnn-tvm)."""
    path = zoo.cached_tflite(Built("cumsum"), builder=_cumsum_model)
    x = zoo.random_input((1, 8, 8, 3))
    expected = zoo.lce_interpreter(path).predict(x)
    # One float convolution after an exact scan: within float rounding of the outputs' scale.
    np.testing.assert_allclose(build_and_load(path)(x), expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))
