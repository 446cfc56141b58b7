"""Binary operators of bnn-tvm, registered as ``relax.bnn.*`` Relax ops.

One module per op family, each holding the op's attributes, shape inference,
TE compute (tagged with its ``schedule_rule``) and numpy reference.
"""

from ._common import BITS_PER_WORD, PACKED_DTYPE, BnnOpError, packed_words
from .bconv2d import bconv2d, bconv2d_ref
from .bdense import bdense, bdense_ref
from .bitpack import dequantize, dequantize_ref, quantize, quantize_ref
from .bmaxpool2d import bmaxpool2d, bmaxpool2d_ref

__all__ = [
    "BITS_PER_WORD",
    "PACKED_DTYPE",
    "BnnOpError",
    "bconv2d",
    "bconv2d_ref",
    "bdense",
    "bdense_ref",
    "bmaxpool2d",
    "bmaxpool2d_ref",
    "dequantize",
    "dequantize_ref",
    "packed_words",
    "quantize",
    "quantize_ref",
]
