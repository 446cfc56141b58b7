"""Model importers: .tflite files (LCE-converted or stock) and Keras/Larq models."""

from .errors import UnsupportedModelError
from .tflite import from_tflite


def from_keras(model, input_shapes=None, trust_model_code: bool = False):
    """Import a Keras/Larq model; see :func:`bnn_tvm.frontend.keras.from_keras` (imports TensorFlow)."""
    from .keras import from_keras as _from_keras

    return _from_keras(model, input_shapes, trust_model_code)


__all__ = ["UnsupportedModelError", "from_keras", "from_tflite"]
