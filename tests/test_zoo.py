"""larq-zoo networks (random initialisation) end to end against LCE's interpreter.

Sizes are small where size does not matter. BiRealNet uses zero padding; at
input sizes where its last feature maps are 2x2 the dilated-free 3x3 window
overhangs both sides and LCE's padding correction is wrong (see test_lce), so
it runs at 128x128 where LCE is correct.
"""

import numpy as np
import pytest

from bnn_tvm import zoo

MODELS = [
    zoo.ZooCase("QuickNetSmall-64", "QuickNetSmall", size=64),
    zoo.ZooCase("QuickNet-64", "QuickNet", size=64),
    zoo.ZooCase("BiRealNet-128", "BiRealNet", size=128),
]
INPUTS = 20
# Outputs are softmax probabilities; LCE and bnn-tvm compute the float layers in a different order
# (TVM's own conv/pool kernels), so agreement is to float rounding, not bit for bit.
ATOL = 1e-5


@pytest.mark.parametrize("case", MODELS, ids=lambda c: c.name)
def test_zoo_model_agrees_with_lce(case, build_and_load):
    path = zoo.cached_tflite(case)
    compiled = build_and_load(path)
    interpreter = zoo.lce_interpreter(path)
    worst = 0.0
    for seed in range(INPUTS):
        x = zoo.random_input((1, case.size, case.size, 3), seed=seed)
        got, expected = compiled(x), interpreter.predict(x)
        assert got.argmax() == expected.argmax(), f"top-1 differs on input {seed}"
        worst = max(worst, float(np.abs(got - expected).max()))
    print(f"{case.name}: max abs difference {worst:.3g} over {INPUTS} inputs")
    assert worst < ATOL
