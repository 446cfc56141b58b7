"""What the frontends raise (and warn) about a model: the user's mistakes, each naming where it is.

Any other exception out of a frontend is a bug in bnn-tvm, and the CLI says so.
"""

import os
import traceback


class ModelFileError(ValueError):
    """A model path that is missing, not a regular file (or folder, where one is expected) or too large."""


class UnsupportedModelError(ValueError):
    """The model uses an op or option bnn-tvm cannot compile, or is malformed; the message says which and where."""


class InputShapesError(ValueError):
    """Input shapes that cannot be read or do not fit the model; the message names the input."""


class KerasLoadError(UnsupportedModelError):
    """Keras cannot rebuild the model file (or, for ``ModelCodeError``, may not); the message names the file
    and what is missing. A SavedModel folder's traced graph may still be importable."""


class ModelCodeError(KerasLoadError):
    """The model file carries Python code that rebuilding it would run, and ``trust_model_code`` is off."""


class FloatFallbackWarning(UserWarning):
    """A quantized layer is computed in float because one of its quantizers is not binary."""


def explain(err: Exception) -> str:
    """``err`` as one message: its text, or for a bare ``assert`` the check that failed and where."""
    text = str(err).strip()
    if text:
        # ValueError and RuntimeError (what a relax.bnn op's BnnOpError becomes after crossing TVM's C++)
        # carry their own description; for the others (KeyError: 12) the type is part of the meaning.
        return text if isinstance(err, (ValueError, RuntimeError)) else f"{type(err).__name__}: {text}"
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" `{frame.line}` ({os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    return f"{type(err).__name__}: failed check{where}"
