"""``relax.bnn.bdense``: binary fully-connected layer (LCE has none: its issue #53).

Inputs are bitpacked (see :mod:`bitpack`): ``x`` is [N, ceil(C/32)], ``w`` is
[Cout, ceil(C/32)], both packed along the C input channels (attribute
``channels_in``). With ``accum`` the XOR-popcount over the C bits, the true dot
product of the +-1 values is ``C - 2 * accum``.

Outputs are bconv2d's (see :mod:`._output_transform`), with depth ``K = C``:
float32 ``act(C - 2 * accum) * m + b`` in LCE's folded formula, bit for bit;
int8 (the same rescaled to the output scale and zero point); or bitpacked
``accum > threshold[o]``, 32 output channels per word.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax, te, tirx

from ._common import (
    PACKED_DTYPE,
    BnnOpError,
    attr,
    check_channels_in,
    make_call,
    packed_words,
    legalize_without_target,
    register_op,
    round_up,
    static_shape,
)
from ._output_transform import (
    DEFAULT_OUTPUT_FORMULA,
    TRANSFORM_ATTRS,
    check_transform_attrs,
    infer_binary_mac_type,
    legalize_folded_constants,
    output_shape,
    packed_output_compute,
    packed_output_ref,
    scaled_output_compute,
    scaled_output_ref,
    transform_args,
    transform_attrs,
)
from ._lanes import CHANNEL_BLOCK, HALFWORD_LANES, WORDS_PER_CHUNK, halfword_popcount, sum_lanes
from .bitpack import unpack_bits

OP = "relax.bnn.bdense"
RULE = "bnn_bdense"
ACCUMULATIONS = ("words", "halfwords")


def bdense(
    x: relax.Expr,
    w: relax.Expr,
    *,
    channels_in: int,
    multiplier: relax.Expr | None = None,
    bias: relax.Expr | None = None,
    thresholds: relax.Expr | None = None,
    activation: str = "NONE",
    out_dtype: str = "float32",
    out_scale: float = 1.0,
    out_zero_point: int = 0,
    output_formula: str = DEFAULT_OUTPUT_FORMULA,
) -> relax.Call:
    """Binary dense layer. Float/int8 output takes ``multiplier`` and ``bias`` [Cout]; packed output takes
    ``thresholds`` [Cout]."""
    return make_call(
        OP,
        [x, w, *transform_args(OP, out_dtype, multiplier, bias, thresholds)],
        channels_in=int(channels_in),
        **transform_attrs(activation, out_dtype, out_scale, out_zero_point, output_formula),
    )


class DenseGeometry:
    """Validated shapes and attributes of one bdense call."""

    def __init__(self, x_shape, w_shape, attrs: dict):
        self.attrs = attrs
        if len(x_shape) != 2:
            raise BnnOpError(OP, "input", f"expected packed [batch, words] (2 axes), got shape {x_shape}")
        if len(w_shape) != 2:
            raise BnnOpError(OP, "filter", f"expected packed [channels_out, words] (2 axes), got shape {w_shape}")
        self.batch, self.words = x_shape
        self.channels_out, filter_words = w_shape
        self.channels_in = attrs["channels_in"]
        check_transform_attrs(OP, attrs)
        if filter_words != self.words:
            raise BnnOpError(OP, "filter", f"{filter_words} packed words per output channel, the input has {self.words}")
        check_channels_in(OP, self.channels_in, self.words)
        if self.batch < 1 or self.channels_out < 1:
            raise BnnOpError(OP, "input" if self.batch < 1 else "filter", "empty tensors are not supported")
        self.depth = self.channels_in
        self.blocks = packed_words(self.channels_out)  # output channels in blocks of one packed word

    @property
    def out_shape(self) -> list[int]:
        return output_shape([self.batch], self.channels_out, self.attrs["out_dtype"])


def _attrs(call: relax.Call) -> dict:
    keys = ("channels_in", *TRANSFORM_ATTRS)
    return {k: attr(call, k) for k in keys}


def _infer_type(call: relax.Call) -> relax.TensorType:
    return infer_binary_mac_type(OP, call, _attrs(call), DenseGeometry)


# ---------------------------------------------------------------- numpy reference


def bdense_ref(x, w, attrs: dict, multiplier=None, bias=None, thresholds=None) -> np.ndarray:
    """Reference bdense on packed numpy arrays: ``attrs`` holds channels_in, activation, out_dtype,
    out_scale, out_zero_point and output_formula (the constructor's defaults where missing)."""
    attrs = {"activation": "NONE", "out_dtype": "float32", "out_scale": 1.0, "out_zero_point": 0,
             "output_formula": DEFAULT_OUTPUT_FORMULA, **attrs}
    g = DenseGeometry(list(x.shape), list(w.shape), attrs)
    xb = unpack_bits(x, g.channels_in).astype(np.int64)  # 1 where the value is -1
    wb = unpack_bits(w, g.channels_in).astype(np.int64)
    accum = xb @ (1 - wb).T + (1 - xb) @ wb.T  # the bits where x and w differ
    if attrs["out_dtype"] == PACKED_DTYPE:
        return packed_output_ref(accum, thresholds)
    return scaled_output_ref(accum, attrs, g.depth, multiplier, bias)


# ---------------------------------------------------------------- TE computes
#
# As for bconv2d, the filter blocking and the folded output constants are
# functions of their own, which FoldConstant evaluates at compile time.


def blocked_filter_compute(w: te.Tensor, accumulation: str = "words") -> te.Tensor:
    """The filter [Cout, words] in blocks of 32 output channels, zero beyond Cout.

    ``words``: [block, word, channel]: channels contiguous, the vector lanes.
    ``halfwords``: [block, channel, word]: words contiguous and padded to whole 128-bit chunks.
    """
    channels_out, words = (int(d) for d in w.shape)
    blocks = packed_words(channels_out)
    zero = tirx.const(0, PACKED_DTYPE)

    def weight(block, c, lane):
        o = block * CHANNEL_BLOCK + lane
        inside = tirx.all(o < channels_out, c < words)
        return tirx.if_then_else(inside, w[tirx.min(o, channels_out - 1), tirx.min(c, words - 1)], zero)

    if accumulation == "words":
        return te.compute((blocks, words, CHANNEL_BLOCK), weight, name="bdense_filter_blocked")
    padded = round_up(words, WORDS_PER_CHUNK)
    return te.compute((blocks, CHANNEL_BLOCK, padded), lambda b, lane, c: weight(b, c, lane),
                      name="bdense_filter_blocked")


def bdense_compute(x, w_blocked, *params, attrs: dict, filter_shape, accumulation: str = "words"):
    r"""Binary dense layer on a blocked filter (see :func:`blocked_filter_compute`).

    .. math::
        a[n, o] = \sum_{c=0}^{\lceil C/32 \rceil - 1} \mathrm{popcount}\big(x[n, c] \oplus w[o, c]\big),
        \qquad \mathrm{dot}[n, o] = C - 2\,a[n, o]

    (tail bits are 0 in both operands, so they never count), then the output
    transform of :mod:`._output_transform` with depth :math:`K = C`:

    .. math::
        y[n, o] = \mathrm{float}\big(\mathrm{clamp}(2 a[n, o], l', h')\big) \cdot m'_o + b'_o

    for float32 and int8 (rounded half away from zero, saturated), where
    :math:`m', b'` are ``params`` (the folded multiplier and bias), or
    :math:`\mathrm{bit}_o\, y[n, \lfloor o/32 \rfloor] = [a[n, o] > t_o]` for
    packed output (``params`` the thresholds :math:`t`). ``accumulation`` says
    how the popcounts are summed: per word into int32 (``words``), or per 16-bit
    lane of 128-bit chunks into uint16 lanes summed afterwards (``halfwords``,
    NEON's uadalp).
    """
    g = DenseGeometry([int(d) for d in x.shape], list(filter_shape), attrs)
    if accumulation == "words":
        accum = _accumulate_words(x, w_blocked, g)
    else:
        accum = _accumulate_halfwords(x, w_blocked, g)
    if attrs["out_dtype"] == PACKED_DTYPE:
        return packed_output_compute(accum, params[0], g.channels_out, name="bdense_output")
    multiplier, bias = params
    return scaled_output_compute(accum, multiplier, bias, depth=g.depth, activation=attrs["activation"],
                                 out_dtype=attrs["out_dtype"], formula=attrs["output_formula"], channels_out=g.channels_out, name="bdense_output")


def _accumulate_words(x, w_blocked, g: DenseGeometry):
    c = te.reduce_axis((0, g.words), name="c")

    def accumulate(n, o):
        wv = w_blocked[o // CHANNEL_BLOCK, c, o % CHANNEL_BLOCK]
        return te.sum(tirx.popcount(tirx.bitwise_xor(x[n, c], wv)), axis=c)

    return te.compute((g.batch, g.blocks * CHANNEL_BLOCK), accumulate, name="bdense_accum",
                      attrs={"schedule_rule": RULE})


def _accumulate_halfwords(x, w_blocked, g: DenseGeometry):
    padded_words = int(w_blocked.shape[2])
    if padded_words != g.words:  # zero words (+1 in both operands) XOR to 0: they count nothing
        source = x
        x = te.compute(
            (g.batch, padded_words),
            lambda n, c: tirx.if_then_else(c < g.words, source[n, tirx.min(c, g.words - 1)],
                                           tirx.const(0, PACKED_DTYPE)),
            name="bdense_pad",
        )
    k = te.reduce_axis((0, padded_words // WORDS_PER_CHUNK), name="k")

    def lane_count(n, o, lane):
        word = k * WORDS_PER_CHUNK + lane // 2
        wv = w_blocked[o // CHANNEL_BLOCK, o % CHANNEL_BLOCK, word]
        return te.sum(halfword_popcount(x[n, word], wv, lane), axis=k)

    lanes = te.compute((g.batch, g.blocks * CHANNEL_BLOCK, HALFWORD_LANES), lane_count, name="bdense_lanes",
                       attrs={"schedule_rule": RULE})
    return sum_lanes(lanes, "bdense_accum")


AccumulationChoice = Callable[[DenseGeometry], str]


def legalize(bb: relax.BlockBuilder, call: relax.Call, choose_accumulation: AccumulationChoice) -> relax.Expr:
    """The TE computes of ``call``, accumulating as ``choose_accumulation(geometry)`` says (``words`` or
    ``halfwords``; the target decides: ``strategies.binary_legalizations(target)`` binds it)."""
    attrs = _attrs(call)
    x, w = call.args[:2]
    x_shape, _ = static_shape(OP, "input", x)
    w_shape, _ = static_shape(OP, "filter", w)
    g = DenseGeometry(x_shape, w_shape, attrs)
    accumulation = choose_accumulation(g)
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"unknown bdense accumulation {accumulation!r}; known: {', '.join(ACCUMULATIONS)}")
    w_blocked = bb.emit(bb.call_te(blocked_filter_compute, w, accumulation,
                                   primfunc_name_hint="bnn_bdense_block_filter"))
    if attrs["out_dtype"] == PACKED_DTYPE:
        params = [call.args[2]]
    else:
        params = legalize_folded_constants(bb, call, attrs, g.depth, "bdense")
    return bb.call_te(bdense_compute, x, w_blocked, *params, attrs=attrs, filter_shape=w_shape,
                      accumulation=accumulation, primfunc_name_hint="bnn_bdense")


register_op(OP, "Binary fully-connected layer on bitpacked [batch, words] input.", _infer_type,
            legalize_without_target(legalize, "words"))
