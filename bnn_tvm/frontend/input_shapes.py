"""Input shapes given by the user (tvmc's ``--input-shapes``): read, checked, matched to a model's inputs.

bnn-tvm compiles static shapes, so every dimension a model leaves open (a Keras input's batch, or a
variable height and width) must be known; the batch alone defaults to 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .errors import InputShapesError

# One tvmc mapping: an optional name (which may itself hold colons or slashes, as TF tensor names do), then
# [d1,d2,...]. Mappings are separated by spaces or commas.
_ENTRY = re.compile(r"(?:(?P<name>[^\s,\[\]]+)\s*:)?\s*\[(?P<dims>[^\[\]]*)\]")
_SEPARATORS = re.compile(r"[\s,]*")
_NHWC = ("batch", "height", "width", "channels")
SYNTAX = "name:[d1,d2,...] (several separated by spaces or commas), or [d1,d2,...] for a model with one input"


def parse_input_shapes(text: str) -> dict[str | None, tuple[int, ...]]:
    """Read tvmc's ``--input-shapes`` syntax: ``"data:[1,224,224,3] mask:[1,224,224,1]"``.

    Parameters
    ----------
    text : str
        Mappings ``name:[d1,...]`` separated by spaces or commas; a lone ``[d1,...]`` (no name) stands for
        the only input of a single-input model.

    Returns
    -------
    dict
        Input name (None for the unnamed form) to its shape.

    Raises
    ------
    InputShapesError
        Naming the text that cannot be read, or the input whose shape is not positive integers.
    """
    shapes: dict[str | None, tuple[int, ...]] = {}
    position = _SEPARATORS.match(text).end()
    while position < len(text):
        match = _ENTRY.match(text, position)
        if match is None:
            raise InputShapesError(f"--input-shapes: cannot read {text[position:]!r}; expected {SYNTAX}")
        name = match["name"]
        if name in shapes:
            raise InputShapesError(f"--input-shapes: input {name!r} is given twice")
        dims = [d.strip() for d in match["dims"].split(",")]
        if not all(re.fullmatch(r"[+-]?\d+", d) for d in dims):
            raise InputShapesError(f"--input-shapes: input {_label(name)}: [{match['dims']}] is not a list of "
                                   "integers")
        shapes[name] = _checked_shape(name, [int(d) for d in dims])
        position = _SEPARATORS.match(text, match.end()).end()
    if not shapes:
        raise InputShapesError(f"--input-shapes: no shape given; expected {SYNTAX}")
    if None in shapes and len(shapes) > 1:
        raise InputShapesError("--input-shapes: an unnamed shape stands for a model's only input; with several "
                               "shapes, name each (name:[d1,...])")
    return shapes


def normalize_input_shapes(input_shapes) -> dict[str | None, tuple[int, ...]]:
    """``input_shapes`` as given in Python (``{name: shape}``, one shape for a single-input model, or tvmc's
    text) as a dict of name (None: the only input) to shape; an ``InputShapesError`` if it is none of those."""
    if isinstance(input_shapes, str):
        return parse_input_shapes(input_shapes)
    if isinstance(input_shapes, Mapping):
        shapes = {}
        for name, shape in input_shapes.items():
            if not isinstance(name, str):
                raise InputShapesError(f"input shapes: input names are strings, got {name!r}")
            shapes[name] = _checked_shape(name, shape)
        return shapes
    return {None: _checked_shape(None, input_shapes)}


def _checked_shape(name: str | None, shape) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InputShapesError(f"input shapes: input {_label(name)}: the shape must be a list of integers, "
                               f"got {shape!r}")
    bad = [i for i, d in enumerate(shape) if d <= 0]
    if not shape or bad:
        what = "is empty" if not shape else f"has dimension {bad[0]} = {shape[bad[0]]}"
        raise InputShapesError(f"input shapes: input {_label(name)}: {list(shape)} {what}; bnn-tvm compiles "
                               "static shapes, every dimension a positive integer")
    return tuple(shape)


def _label(name: str | None) -> str:
    return "(unnamed)" if name is None else repr(name)


def _key(name: str) -> str:
    # TFLite tensor names (serving_default_x:0) become Relax names with underscores: accept either spelling.
    return re.sub(r"\W", "_", name)


def _dimension(rank: int, axis: int) -> str:
    return f"dimension {axis} ({_NHWC[axis]})" if rank == 4 else f"dimension {axis}"


def resolve_input_shapes(inputs: list[tuple[str, list[int | None]]], input_shapes, where: str,
                         fixed_reason: str | None = None) -> list[tuple[int, ...]]:
    """The static shape of each of a model's ``inputs`` (name, declared shape with None where open).

    ``input_shapes`` (see ``normalize_input_shapes``, or None) fills the open dimensions and must agree with
    the declared ones; an open batch (dimension 0) left unset is 1, any other open dimension is an error
    suggesting ``--input-shapes``. ``fixed_reason`` says why a model's declared dimensions cannot change
    (a .tflite file's), in the message refusing a different shape. ``where`` (the model file) starts messages.

    Raises
    ------
    InputShapesError
        Naming the input and dimension that is unknown, or the given name or shape that does not fit.
    """
    given = normalize_input_shapes(input_shapes) if input_shapes is not None else {}
    names = ", ".join(f"{name} {_shape_text(shape)}" for name, shape in inputs)
    if None in given:
        if len(inputs) != 1:
            raise InputShapesError(f"{where}: an unnamed input shape fits a model with one input; this one has "
                                   f"{len(inputs)} ({names}): name each, as name:[d1,...]")
        given = {inputs[0][0]: given[None]}
    by_key = {_key(name): name for name, _ in inputs}
    unknown = [name for name in given if _key(name) not in by_key]
    if unknown:
        raise InputShapesError(f"{where}: the model has no input named {unknown[0]!r}; its inputs: {names}")
    given = {by_key[_key(name)]: shape for name, shape in given.items()}
    shapes = []
    for name, declared in inputs:
        shape = given.get(name)
        if shape is None:
            open_axes = [axis for axis, d in enumerate(declared) if d is None and axis > 0]
            if open_axes:
                rank = len(declared)
                what = " and ".join(_NHWC[a] if rank == 4 else f"dimension {a}" for a in open_axes)
                example = "[" + ",".join(str(d) if d is not None else "1" if axis == 0 else _placeholder(rank, axis)
                                         for axis, d in enumerate(declared)) + "]"
                raise InputShapesError(
                    f"{where}: input {name} has unknown {what} (shape {_shape_text(declared)}); give its shape "
                    f"with --input-shapes {name}:{example} (input_shapes={{{name!r}: {example}}} in Python)")
            shapes.append(tuple(1 if d is None else int(d) for d in declared))
            continue
        if len(shape) != len(declared):
            raise InputShapesError(f"{where}: input {name}: the shape given, {list(shape)}, has {len(shape)} "
                                   f"dimensions; the model's input {_shape_text(declared)} has {len(declared)}")
        for axis, (want, got) in enumerate(zip(declared, shape, strict=True)):
            if want is not None and want != got:
                reason = fixed_reason or "the model fixes it"
                raise InputShapesError(f"{where}: input {name}: {_dimension(len(declared), axis)} is {want} in the "
                                       f"model ({_shape_text(declared)}), the shape given says {got}; {reason}")
        shapes.append(tuple(shape))
    return shapes


def _placeholder(rank: int, axis: int) -> str:
    return {1: "H", 2: "W", 3: "C"}[axis] if rank == 4 else f"D{axis}"


def _shape_text(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
