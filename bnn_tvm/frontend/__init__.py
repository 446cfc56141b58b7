"""Model importers: LCE-converted .tflite files (and, later, Keras/Larq models)."""

from .tflite import UnsupportedModelError, from_tflite

__all__ = ["UnsupportedModelError", "from_tflite"]
