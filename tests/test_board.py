"""aarch64 builds run on the emulated board (qemu-user, stock TVM RPC server) through a real tracker.

Few and short: a handful of bconv variants that exercise the NEON kernel's paths
(chunks shared by pixels or padded, odd channels, packed hand-off, zero padding, max-pool, int8) and QuickNetSmall, from LCE and from Keras.
qemu's timings are not reported: they rank nothing here.
"""

import numpy as np
import pytest

import bnn_tvm
from bnn_tvm import zoo
from bnn_tvm.runtime import load_remote

from .helpers import compare_logits
from .test_keras_zoo import RTOL as KERAS_RTOL
from .test_lce import CASES, input_for
from .test_zoo import RTOL

# channels32 and channels64 share 128-bit chunks among 4 and 2 pixels (pixel_halfwords), with a remainder
# (7 columns); channels97 and stride2 pad each pixel's words to whole chunks (halfwords).
BOARD_CASES = [case for case in CASES if case.name in {
    "channels32", "channels33", "channels64", "channels97", "stride2", "zero-padding", "packed-handoff", "bmaxpool",
    "int8", "relu6"}]


def on_board(model_path, board, tmp_path, name):
    so = tmp_path / f"{name}-aarch64.so"
    bnn_tvm.compile(model_path, target="rpi4").export_library(so)
    return load_remote(so, *board)


@pytest.mark.parametrize("case", BOARD_CASES, ids=lambda c: c.name)
def test_board_is_bitexact_with_host(case, emulated_board, build_and_load, tmp_path):
    path = zoo.cached_tflite(case)
    x = input_for(case)
    remote = on_board(path, emulated_board, tmp_path, case.name)(x)
    host = build_and_load(path)(x)
    np.testing.assert_array_equal(remote, host)
    np.testing.assert_array_equal(remote, zoo.lce_interpreter(path).predict(x))


@pytest.mark.parametrize("case", [zoo.ConvCase("groups2-stride2", channels_in=128, channels_out=6, groups=2, strides=2),
                                  zoo.ConvCase("channels64-dilation2", channels_in=64, channels_out=40, dilation=2,
                                               size=11)], ids=lambda c: c.name)
def test_chunks_shared_across_strides_are_bitexact_with_host(case, emulated_board, build_and_load, tmp_path):
    """Two groups of 3 output channels at stride 2 (no quad of 4 channels within a group: a register per channel),
    and 2 pixels sharing chunks at dilation 2 (quad registers). LCE refuses grouped convolutions: the host's
    build, on other kernels entirely, is the reference."""
    path = zoo.cached_tflite(case)
    x = input_for(case)
    np.testing.assert_array_equal(on_board(path, emulated_board, tmp_path, case.name)(x), build_and_load(path)(x))


def test_quicknet_small_on_board_matches_lce(emulated_board, tmp_path):
    case = zoo.ZooCase("QuickNetSmall-64-logits", "QuickNetSmall", size=64)  # test_zoo's model
    path = zoo.cached_tflite(case, builder=zoo.keras_logits_model)
    model = on_board(path, emulated_board, tmp_path, case.name)
    compare_logits(model, zoo.lce_interpreter(path).predict, (1, 64, 64, 3), f"{case.name} on the board vs LCE",
                   RTOL, inputs=3)


def test_keras_quicknet_small_on_board_matches_keras(emulated_board, tmp_path):
    """The Keras import's rpi4 build, run on the board (test_keras_zoo compiles every architecture for rpi4)."""
    case = zoo.ZooCase("QuickNetSmall-64-logits", "QuickNetSmall", size=64)
    keras = zoo.keras_logits_model(case)
    model = on_board(keras, emulated_board, tmp_path, case.name)
    compare_logits(model, lambda x: keras.predict(x, verbose=0), (1, 64, 64, 3),
                   f"{case.name} on the board vs Keras", KERAS_RTOL, inputs=3)
