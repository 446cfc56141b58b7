"""What one ``relax.bnn.bconv2d`` call is: its attributes, validated, and the shapes they give.

The op's other modules read this: shape inference and the numpy reference (:mod:`.bconv2d`), the TE computes
of the accumulations (:mod:`.bconv2d_accumulations`) and the strategy layer's choice of accumulation.
"""

from __future__ import annotations

from tvm import relax

from ._common import (
    BITS_PER_WORD,
    PACKED_DTYPE,
    BnnOpError,
    attr,
    check_channels_in,
    check_choice,
    check_positive_pair,
    window_output,
)
from ._output_transform import TRANSFORM_ATTRS, check_transform_attrs, output_shape

OP = "relax.bnn.bconv2d"
RULE = "bnn_bconv2d"


class Conv2dGeometry:
    """Validated shapes and attributes of one bconv2d call."""

    def __init__(self, x_shape, w_shape, attrs: dict):
        self.attrs = attrs
        if len(x_shape) != 4:
            raise BnnOpError(OP, "input", f"expected packed NHWC (4 axes), got shape {x_shape}")
        if len(w_shape) != 4:
            raise BnnOpError(OP, "filter", f"expected packed OHWI (4 axes), got shape {w_shape}")
        self.batch, self.in_h, self.in_w, self.in_words = x_shape
        self.channels_out, self.kernel_h, self.kernel_w, self.filter_words = w_shape
        self.channels_in = attrs["channels_in"]
        self.stride_h, self.stride_w = check_positive_pair(OP, "strides", attrs["strides"])
        self.dilation_h, self.dilation_w = check_positive_pair(OP, "dilations", attrs["dilations"])
        check_choice(OP, "padding", attrs["padding"], ("SAME", "VALID"))
        check_choice(OP, "pad_values", attrs["pad_value"], (0, 1))
        check_transform_attrs(OP, attrs)
        check_channels_in(OP, self.channels_in, self.in_words)
        if self.filter_words < 1 or self.in_words % self.filter_words:
            raise BnnOpError(
                OP, "filter",
                f"{self.filter_words} packed words per filter do not divide the input's {self.in_words}",
            )
        self.groups = self.in_words // self.filter_words
        if self.groups > 1:
            if self.channels_in % (self.groups * BITS_PER_WORD):
                raise BnnOpError(
                    OP, "groups",
                    f"grouped convolution ({self.groups} groups) needs channels_in ({self.channels_in}) "
                    f"to be a multiple of 32 * groups",
                )
            if self.channels_out % self.groups:
                raise BnnOpError(
                    OP, "groups", f"{self.channels_out} output channels do not split into {self.groups} groups"
                )
        self.channels_in_per_group = self.channels_in // self.groups
        self.out_h, self.pad_top, self.pad_bottom = window_output(
            OP, self.in_h, self.kernel_h, self.stride_h, self.dilation_h, attrs["padding"], "height"
        )
        self.out_w, self.pad_left, self.pad_right = window_output(
            OP, self.in_w, self.kernel_w, self.stride_w, self.dilation_w, attrs["padding"], "width"
        )
        self.zero_padding = attrs["padding"] == "SAME" and attrs["pad_value"] == 0
        # LCE adds its padding correction after the activation's clamp; "dot" subtracts it before.
        if self.zero_padding and attrs["activation"] != "NONE" and attrs["output_formula"] == "lce":
            raise BnnOpError(
                OP, "activation",
                "LCE's formula fuses activations only with VALID or one-padding (pad_values=1)",
            )
        if self.zero_padding and attrs["out_dtype"] == PACKED_DTYPE:
            raise BnnOpError(OP, "out_dtype", "bitpacked output needs VALID or one-padding (pad_values=1), as in LCE")
        self.depth = self.kernel_h * self.kernel_w * self.channels_in_per_group

    @property
    def out_shape(self) -> list[int]:
        return output_shape([self.batch, self.out_h, self.out_w], self.channels_out, self.attrs["out_dtype"])


def conv_attrs(call: relax.Call) -> dict:
    """The attributes of a bconv2d call as plain Python values."""
    keys = ("channels_in", "strides", "dilations", "padding", "pad_value", *TRANSFORM_ATTRS)
    return {k: attr(call, k) for k in keys}
