"""Naming a bad input: its description, and turning what goes wrong with it into its InputError.

Shared by :mod:`featcache.inputs.items`, :mod:`featcache.inputs.keys` and :mod:`featcache.inputs.decoding`, so every
message about one input starts the same way (``"input 3 ('/data/x.png'): ..."``) and says
what was expected and the fix.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..exceptions import InputError

__all__ = ["describe", "input_error", "as_input_error", "pil_errors", "without_tracebacks"]


def describe(item, index: int) -> str:
    """Return a short description of ``item`` (any element of ``X``) at ``index`` for messages.

    For example ``"input 3 ('/data/x.png')"`` or ``"input 3 (array (28, 28) uint8)"``.
    """
    if isinstance(item, (str, os.PathLike)):
        return f"input {index} ('{os.fspath(item)}')"
    if isinstance(item, np.ndarray):
        return f"input {index} (array {tuple(item.shape)} {item.dtype})"
    if isinstance(item, Image.Image):
        return f"input {index} (PIL image, mode {item.mode}, size {item.size[0]}x{item.size[1]})"
    return f"input {index} ({type(item).__name__})"


def input_error(item, index: int, what: str, fix: str = "") -> InputError:
    """``InputError("<description>: <what>. <fix>")`` for one input."""
    what = what if what.endswith(".") else what + "."
    return InputError(f"{describe(item, index)}: {what}" + (f" {fix}" if fix else ""))


@contextmanager
def as_input_error(item, index: int, what: str):
    """Any exception but InputError (and interrupts) becomes this input's InputError."""
    try:
        yield
    except InputError:
        raise
    except MemoryError as exc:
        raise input_error(item, index, f"{what}: not enough memory",
                          "Free memory or lower the size limits (see the FAQ).") from exc
    except Exception as exc:
        raise input_error(item, index, f"{what} ({type(exc).__name__}: {exc})",
                          "Check the input; with on_error='skip' it becomes a NaN row.") from exc


@contextmanager
def pil_errors(item, index: int):
    """Turn Pillow's errors while reading or decoding one input into its InputError."""
    try:
        yield
    except (InputError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1))} pixels" if found else "too many pixels"
        raise input_error(item, index, f"has {pixels}, over Pillow's decompression-bomb limit "
                          f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}).",
                          "If you trust the file, raise the limit: `from PIL import Image; "
                          "Image.MAX_IMAGE_PIXELS = <pixels>` (None disables it).") from exc
    except UnidentifiedImageError as exc:
        original = re.sub(r"<_io\.\w+ (name=)?(.*?)>", r"\2", str(exc))
        raise input_error(item, index, "not an image Pillow can read.",
                          f"Expected an image file (PNG, JPEG, TIFF, ...) or DICOM ({original}).",
                          ) from exc
    except Exception as exc:
        raise input_error(item, index, f"image file is truncated or corrupt "
                          f"({type(exc).__name__}: {exc}).",
                          "Re-export or remove the file.") from exc


def without_tracebacks(error: BaseException) -> BaseException:
    """``error``, and the errors chained to it, without their tracebacks.

    For an error another process hands over (a decode worker's, a hashing process's): it
    then arrives as plain pickling sends it. With ``tblib``'s pickling support installed
    (importing ``distributed`` or ``skops`` installs it), a traceback would travel too, and
    be rebuilt in the receiving process on frames that chain into the code receiving it: a
    reference cycle, which kept a DataLoader's iterator, and its decode workers, alive after
    the loop until the garbage collector ran.
    """
    seen = set()
    pending = [error]
    while pending:
        err = pending.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        err.__traceback__ = None
        pending += [err.__cause__, err.__context__]
    return error
