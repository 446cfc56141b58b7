"""Model files are opened only when they are what they claim to be: a FIFO would block the compiler forever,
a device such as /dev/zero would be read until memory runs out, and a folder cannot be read as a file."""

import os
import stat
from pathlib import Path

from .errors import ModelFileError

# Larger than any BNN worth compiling (larq-zoo's largest, QuickNetLarge, is ~16 MB as an LCE .tflite and
# ~110 MB as a float Keras file), small enough to refuse a file read by mistake before it fills memory.
MAX_MODEL_BYTES = 2 << 30


def checked_model_file(path: str | os.PathLike, folder: bool = False) -> Path:
    """``path`` after checking that it is a regular file of at most ``MAX_MODEL_BYTES`` (a folder if
    ``folder``), following symlinks; otherwise a ``ModelFileError`` naming the file and what it is."""
    path = Path(path)
    try:
        mode = path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except OSError as err:
        raise ModelFileError(f"{path}: cannot be read: {err.strerror}") from None
    expected, ok = ("a folder", stat.S_ISDIR(mode.st_mode)) if folder else ("a regular file",
                                                                            stat.S_ISREG(mode.st_mode))
    if not ok:
        raise ModelFileError(f"{path}: {_kind(mode.st_mode)}, not {expected}")
    if not folder and mode.st_size > MAX_MODEL_BYTES:
        raise ModelFileError(f"{path}: {mode.st_size / 2**30:.1f} GiB, larger than any model bnn-tvm reads "
                             f"({MAX_MODEL_BYTES / 2**30:.0f} GiB)")
    return path


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a file"
