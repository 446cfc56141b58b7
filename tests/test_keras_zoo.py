"""Every larq-zoo architecture, imported from Keras, against Keras itself and against LCE.

Random initialisation with randomized batch-norm statistics (no weights can be downloaded here); logits
are compared (the models' final softmax saturates on random weights and would hide differences).
Each architecture compiles for the host (and is run); those whose layers another architecture does not already
take through the ARM schedules also compile for rpi4 (cross-compiled, an aarch64 .so).
Where LCE converts the model and gets it right at this size, its interpreter is a second reference.
"""

import warnings

import numpy as np
import pytest

from bnn_tvm import zoo

from .helpers import compare_logits

tf = pytest.importorskip("tensorflow")

# (architecture, input size): the smallest sizes the architectures accept, where size does not matter.
ARCHITECTURES = [
    ("BinaryAlexNet", 64),
    ("BiRealNet", 64),
    ("BinaryResNetE18", 64),
    ("BinaryDenseNet28", 64),
    ("BinaryDenseNet37", 64),
    ("BinaryDenseNet37Dilated", 64),
    ("BinaryDenseNet45", 64),
    ("MeliusNet22", 64),
    ("XNORNet", 224),
    ("DoReFaNet", 64),
    ("RealToBinaryNet", 64),
    ("QuickNetSmall", 64),
    ("QuickNet", 64),
    ("QuickNetLarge", 64),
]
# Zero-padded architectures end in 2x2 maps at 64x64, where a 3x3 window overhangs both sides and LCE's
# padding correction is wrong (tests/test_lce.py shows it on one layer): LCE's logits then differ from
# Keras's by 20-86% (measured), so LCE is no reference for them here. BiRealNet goes through LCE at 128
# in tests/test_zoo.py.
LCE_WRONG_AT_THIS_SIZE = {"BiRealNet", "BinaryResNetE18", "BinaryDenseNet28", "BinaryDenseNet37",
                          "BinaryDenseNet37Dilated", "BinaryDenseNet45", "MeliusNet22", "RealToBinaryNet"}
# Architectures whose layer kinds (and so ARM schedules) the named one compiles for rpi4 already: cross-compiling
# them too cost ~4 of CI's 90 minutes for layers already cross-compiled.
ARM_COVERED_BY = {"BinaryDenseNet28": "BinaryDenseNet37Dilated", "BinaryDenseNet37": "BinaryDenseNet37Dilated",
                  "BinaryDenseNet45": "BinaryDenseNet37Dilated", "QuickNetLarge": "QuickNet",
                  "BinaryResNetE18": "BiRealNet"}
# Float layers run as TVM's kernels, not TF's, and the graph passes fold batch-norms into the binary
# ops' multipliers: logits agree to float rounding, measured up to ~1e-5 of the largest logit.
RTOL = 1e-4


@pytest.mark.parametrize("architecture,size", ARCHITECTURES, ids=[a for a, _ in ARCHITECTURES])
def test_zoo_architecture_from_keras(architecture, size, build_and_load, tmp_path):
    import bnn_tvm
    from bnn_tvm.frontend.errors import FloatFallbackWarning

    case = zoo.ZooCase(f"{architecture}-{size}-logits", architecture, size=size)
    model = zoo.keras_logits_model(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = build_and_load(model)
    float_layers = [str(w.message) for w in caught if issubclass(w.category, FloatFallbackWarning)]
    if architecture == "DoReFaNet":  # its activations are 2-bit: computed in float, and said so
        assert float_layers and all("DoReFa" in message for message in float_layers)
    else:
        assert not float_layers, float_layers
    shape = (1, size, size, 3)

    def keras(x):
        return model.predict(x, verbose=0)

    compare_logits(compiled, keras, shape, f"{case.name} vs Keras", RTOL)
    if architecture not in LCE_WRONG_AT_THIS_SIZE:
        lce = zoo.lce_interpreter(zoo.cached_tflite(case, builder=zoo.keras_logits_model)).predict

        def lce_is_off(x, distance):
            """LCE's folded formula rounds at the scale K*|m| and can flip a sign Keras and bnn-tvm agree on."""
            return np.abs(lce(x) - keras(x)).max() >= distance / 2

        compare_logits(compiled, lce, shape, f"{case.name} vs LCE", RTOL, excused=lce_is_off)

    if architecture in ARM_COVERED_BY:
        return
    artifact = bnn_tvm.compile(model, target="rpi4")
    so = artifact.export_library(tmp_path / "rpi4.so")
    elf = so.read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
