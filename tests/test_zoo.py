"""larq-zoo networks (random initialisation) end to end against LCE's interpreter.

Sizes are small where size does not matter. BiRealNet uses zero padding; at
input sizes where its last feature maps are 2x2 the dilated-free 3x3 window
overhangs both sides and LCE's padding correction is wrong (see test_lce), so
it runs at 128x128 where LCE is correct.
"""

import pytest

from bnn_tvm import zoo

from .helpers import compare_logits

MODELS = [
    zoo.ZooCase("QuickNetSmall-64-logits", "QuickNetSmall", size=64),
    zoo.ZooCase("QuickNet-64-logits", "QuickNet", size=64),
    zoo.ZooCase("BiRealNet-128-logits", "BiRealNet", size=128),
]
INPUTS = 20
# Logits (the softmax saturates on random weights). The binary layers are LCE's, bit for bit; the float
# layers are TVM's kernels, not XNNPACK's, so agreement is to float rounding: measured up to ~1e-6 of the
# largest logit.
RTOL = 1e-5


@pytest.mark.parametrize("case", MODELS, ids=lambda c: c.name)
def test_zoo_model_agrees_with_lce(case, build_and_load):
    path = zoo.cached_tflite(case, builder=zoo.keras_logits_model)
    compiled = build_and_load(path)
    interpreter = zoo.lce_interpreter(path)
    compare_logits(compiled, interpreter.predict, (1, case.size, case.size, 3), case.name, RTOL, inputs=INPUTS)
