"""Anything a user passes as ``X`` -> items -> content keys and decoded images.

:func:`as_items` normalises ``X`` to one item per sample, :func:`content_key` gives each a
16-byte blake2b key of its content (moved files keep it, edited files lose it), and
:func:`decode` turns one into an ``(H, W, 3)`` array under a :class:`DecodePolicy`.
Every bad input raises :class:`~featcache.exceptions.InputError` naming its index (and
path), what was expected and the fix. torch and pandas are handled duck-typed, never imported.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .exceptions import InputError

__all__ = ["DecodePolicy", "as_items", "content_key", "decode", "describe"]

DECODER_VERSION = "1"
_CHUNK = 1 << 20
_MEMO_MAX = 2_000_000
# (resolved path, size, mtime_ns, inode, device, ctime_ns) -> key
_KEY_MEMO: dict[tuple, bytes] = {}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_ARTICLE = {"path": "a path", "array": "an array", "PIL image": "a PIL image"}
_DTYPE_HELP = ("accepted dtypes: uint8 (8-bit), other integer types such as uint16, "
               "int16 or int32, and float16/float32/float64")
_DICOM_DECODERS = ("pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
                   "(or pip install python-gdcm)")


@dataclass(frozen=True)
class DecodePolicy:
    """How images are decoded; part of the configuration fingerprint.

    Parameters
    ----------
    background : tuple of int, default (0, 0, 0)
        RGB colour (0-255) that transparent images (RGBA, LA, PA, palette with a
        transparent index, RGBA arrays) are composited on.
    window : tuple of float or None, default None
        ``(center, width)`` for every non-8-bit source (16/32-bit, float, DICOM): values map
        linearly from ``center - width/2 .. center + width/2`` to 0..1, clipped. ``None``: a
        DICOM file's own window, else each image's real min..max (float images already
        within [0, 1] are kept as they are).
    """

    background: tuple[int, int, int] = (0, 0, 0)
    window: tuple[float, float] | None = None

    def __post_init__(self):
        bg = tuple(self.background)
        if len(bg) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in bg):
            raise ValueError(f"background must be 3 integers in 0..255, got {self.background!r}")
        object.__setattr__(self, "background", tuple(int(v) for v in bg))
        win = None if self.window is None else tuple(float(v) for v in self.window)
        if win is not None and (len(win) != 2 or not np.all(np.isfinite(win)) or win[1] <= 0):
            raise ValueError(f"window must be (center, width) with a positive width, "
                             f"got {self.window!r}")
        object.__setattr__(self, "window", win)

    def to_dict(self) -> dict:
        """Return everything that changes the decoded pixels, JSON-serialisable."""
        return {"decoder_version": DECODER_VERSION, "background": list(self.background),
                "window": None if self.window is None else list(self.window),
                "exif_orientation": True, "grayscale": "replicate", "dicom_voi": "linear"}


# ---------------------------------------------------------------- describing
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


def _fail(item, index, what, fix=""):
    what = what if what.endswith(".") else what + "."
    return InputError(f"{describe(item, index)}: {what}" + (f" {fix}" if fix else ""))


# ---------------------------------------------------------------- as_items
def as_items(X) -> list:
    """Normalise any accepted ``X`` to a list of items, one per sample, in input order.

    Parameters
    ----------
    X : sequence of paths, array-like, list of PIL images or torch tensor
        Paths (str / PathLike; also an ``(n, 1)`` object array, a pandas Series or a
        one-column DataFrame); an ndarray ``(n, H, W)`` or ``(n, H, W, C)``, C in {1, 3, 4};
        a list of ndarrays of one shape and dtype; a list of PIL images (any sizes and
        modes); a torch tensor ``(n, C, H, W)``.

    Returns
    -------
    list
        :class:`pathlib.Path`, ndarray ``(H, W[, C])`` or :class:`PIL.Image.Image` items.

    Raises
    ------
    InputError
        For an empty ``X``, a single path, a feature matrix, a bad dtype or shape, mixed kinds.
    """
    if isinstance(X, (str, bytes, os.PathLike)):
        raise InputError(f"X is a single path ({os.fsdecode(X)!r}); X must hold one input per "
                         f"sample. Wrap it in a list: [{os.fsdecode(X)!r}].")
    if isinstance(X, Image.Image):
        raise InputError("X is a single PIL image; wrap it in a list: [image].")
    module = type(X).__module__
    if module.startswith("torch"):
        X = _torch_to_numpy(X)
    elif module.startswith("pandas"):
        X = _pandas_to_objects(X)
    if isinstance(X, np.ndarray):
        if X.dtype.kind in "OUS" and (X.ndim == 1 or (X.ndim == 2 and X.shape[1] == 1)):
            return _from_elements(list(X.ravel()))
        return _from_stacked(X)
    if isinstance(X, dict) or not hasattr(X, "__iter__"):
        raise InputError(f"X of type {type(X).__name__} is not accepted; pass a list of paths, "
                         f"an array (n, H, W[, C]), a list of PIL images or a torch tensor.")
    return _from_elements(list(X))


def _torch_to_numpy(X):
    if X.ndim != 4 or X.shape[1] not in (1, 3, 4):
        raise InputError(f"a torch tensor must be (n, C, H, W) with C in 1, 3, 4, got shape "
                         f"{tuple(X.shape)}; add a channel axis with x.unsqueeze(1) for (n, H, W).")
    X = X.detach().cpu()
    if "bfloat16" in str(X.dtype):
        X = X.float()
    return X.numpy().transpose(0, 2, 3, 1)


def _pandas_to_objects(X):
    if hasattr(X, "columns"):
        if X.shape[1] != 1:
            raise InputError(f"X is a DataFrame with {X.shape[1]} columns {list(X.columns)}; "
                             f"pass the one column of paths, e.g. X[['path']].")
        X = X.iloc[:, 0]
    return X.to_numpy(dtype=object)


def _check_dtype(dtype, what):
    if dtype.kind not in "uif":
        raise InputError(f"{what} has dtype {dtype}, which is not an image dtype; {_DTYPE_HELP}.")


def _from_stacked(X):
    _check_dtype(X.dtype, "X")
    if X.ndim == 2:
        raise InputError(f"X is a 2-D numeric array {X.shape}, which looks like a feature matrix; "
                         f"images are expected as (n, H, W) or (n, H, W, C) with C in 1, 3, 4 "
                         f"(or pass file paths).")
    if X.ndim not in (3, 4) or (X.ndim == 4 and X.shape[3] not in (1, 3, 4)):
        hint = ("; it looks channels-first, use X.transpose(0, 2, 3, 1)"
                if X.ndim == 4 and X.shape[1] in (1, 3, 4) else "")
        raise InputError(f"X has shape {X.shape}; images are expected as (n, H, W) or "
                         f"(n, H, W, C) with C in 1, 3, 4{hint}.")
    if X.shape[0] == 0:
        raise InputError("X is empty (0 samples); pass at least one image.")
    if X.shape[1] == 0 or X.shape[2] == 0:
        raise InputError(f"X has shape {X.shape}: the images have no pixels.")
    return list(X)


def _kind(element, index):
    if isinstance(element, (str, os.PathLike)):
        if not os.fspath(element):
            raise InputError(f"input {index} is an empty string; expected a path to an image file.")
        return "path"
    if isinstance(element, np.ndarray):
        return "array"
    if isinstance(element, Image.Image):
        return "PIL image"
    missing = (element is None or type(element).__name__ in ("NAType", "NaTType")
               or (isinstance(element, float) and element != element))
    raise _fail(element, index, "is a missing value (None/NaN)" if missing else
                f"is a {type(element).__name__}, which is not an accepted input",
                "Expected a path (str or os.PathLike), an ndarray image or a PIL image"
                + (" (stack torch tensors into one (n, C, H, W) tensor)."
                   if type(element).__module__.startswith("torch") else "."))


def _from_elements(elements):
    if not elements:
        raise InputError("X is empty (0 samples); pass at least one image.")
    first = _kind(elements[0], 0)
    for i, element in enumerate(elements):
        kind = _kind(element, i)
        if kind != first:
            raise _fail(element, i, f"is {_ARTICLE[kind]} but input 0 is {_ARTICLE[first]}",
                        "X must hold one kind of input (all paths, all arrays or all PIL images).")
    if first == "path":
        return [Path(os.fspath(e)).expanduser() for e in elements]
    if first == "array":
        _check_array_list(elements)
    return list(elements)


def _check_image(arr, index):
    _check_dtype(arr.dtype, describe(arr, index))
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))) or 0 in arr.shape:
        raise _fail(arr, index, "is not an image",
                    "Expected (H, W) or (H, W, C) with C in 1, 3, 4.")


def _check_array_list(arrays):
    ref = arrays[0]
    _check_image(ref, 0)
    for i, arr in enumerate(arrays):
        if arr.shape != ref.shape or arr.dtype != ref.dtype:
            raise _fail(arr, i, f"has shape {arr.shape} and dtype {arr.dtype} but input 0 has "
                        f"shape {ref.shape} and dtype {ref.dtype}",
                        "A list of arrays must share one shape and dtype; resize them first, or "
                        "save them as files or pass PIL images, which may differ in size.")


# ---------------------------------------------------------------- content keys
def content_key(item, index: int) -> bytes:
    """Return the 16-byte blake2b content key of one item.

    Parameters
    ----------
    item : Path, ndarray or PIL.Image.Image
        One item from :func:`as_items`.
    index : int
        Its position in ``X`` (for error messages).

    Returns
    -------
    bytes
        ``blake2b(digest_size=16)`` of: a file's bytes (equal to ``b2sum -l 128 FILE``),
        memoised per (resolved path, size, mtime_ns, inode, device, ctime_ns) so unchanged
        files are not re-read while any edit (new size, mtime_ns or ctime_ns) re-reads; an
        array's dtype string, shape and C-contiguous bytes; a PIL image's mode, size, pixel
        bytes, palette, transparency and EXIF orientation (all that :func:`decode` uses).
    """
    if isinstance(item, (str, os.PathLike)):
        return _file_key(Path(item), index)
    h = hashlib.blake2b(digest_size=16)
    if isinstance(item, np.ndarray):
        arr = np.ascontiguousarray(item)
        h.update(f"ndarray|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.reshape(-1).view(np.uint8))
        return h.digest()
    if isinstance(item, Image.Image):
        with _pil_errors(item, index):
            pixels = item.tobytes()
            extra = (item.getpalette(), item.info.get("transparency"),
                     item.getexif().get(0x0112))
        h.update(f"PIL|{item.mode}|{item.size}|{extra!r}|".encode())
        h.update(pixels)
        return h.digest()
    raise _fail(item, index, "is not an item from as_items()")


def _stat(path, item, index):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(item, index, "file not found.",
                    f"Check the path (relative paths resolve against {os.getcwd()}).") from None
    except OSError as exc:
        raise _fail(item, index, f"cannot be accessed ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(item, index, "is not a regular file (a directory?).",
                    "Pass image files; list a directory's files first.")
    return st


def _file_key(path, index):
    st = _stat(path, path, index)
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)
    key = _KEY_MEMO.get(memo)
    if key is not None:
        return key
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise _fail(path, index, f"cannot be read ({exc.strerror or exc}).") from None
    key = h.digest()
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):  # unchanged meanwhile
        if len(_KEY_MEMO) >= _MEMO_MAX:
            _KEY_MEMO.clear()
        _KEY_MEMO[memo] = key
    return key


# ---------------------------------------------------------------- decoding
def decode(item, index: int, policy: DecodePolicy = DecodePolicy()) -> np.ndarray:
    """Decode one item to an ``(H, W, 3)`` array.

    Parameters
    ----------
    item : Path, ndarray or PIL.Image.Image
        One item from :func:`as_items`.
    index : int
        Its position in ``X`` (for error messages).
    policy : DecodePolicy
        Background for transparency and intensity window.

    Returns
    -------
    ndarray
        ``uint8`` for 8-bit sources (8-bit files, uint8 arrays, 8-bit RGB DICOM); ``float32``
        in [0, 1] for all else (16/32-bit, float, grayscale DICOM); never clipped to 255.

    Raises
    ------
    InputError
        For a missing, empty, truncated, undecodable or badly shaped input.
    """
    if isinstance(item, (str, os.PathLike)):
        return _decode_file(Path(item), index, policy)
    if isinstance(item, np.ndarray):
        return _decode_array(item, index, policy)
    if isinstance(item, Image.Image):
        with _pil_errors(item, index):
            item.load()
        return _decode_pil(item, item, index, policy)
    raise _fail(item, index, "is not an item from as_items()")


def _decode_file(path, index, policy):
    st = _stat(path, path, index)
    if st.st_size == 0:
        raise _fail(path, index, "empty file (0 bytes).", "Re-create or remove the file.")
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            if head[128:132] == b"DICM" or path.suffix.lower() == ".dcm":
                return _decode_dicom(path, index, policy)
            f.seek(0)
            with warnings.catch_warnings(), _pil_errors(path, index):
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(f)
                img.load()  # force full decoding: truncated files fail here
            with img:
                return _decode_pil(img, path, index, policy)
    except OSError as exc:  # opening or reading the file itself (Pillow's errors are handled)
        raise _fail(path, index, f"cannot be read ({exc.strerror or exc}).") from None


@contextmanager
def _pil_errors(item, index):
    """Turn Pillow's errors while decoding one input into InputError."""
    try:
        yield
    except (InputError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1))} pixels" if found else "too many pixels"
        raise _fail(item, index, f"has {pixels}, over Pillow's decompression-bomb limit "
                    f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}).",
                    "If you trust the file, raise the limit: `from PIL import Image; "
                    "Image.MAX_IMAGE_PIXELS = <pixels>` (None disables it).") from exc
    except UnidentifiedImageError as exc:
        original = re.sub(r"<_io\.\w+ name=(.*?)>", r"\1", str(exc))
        raise _fail(item, index, "not an image Pillow can read.",
                    f"Expected an image file (PNG, JPEG, TIFF, ...) or DICOM ({original}).",
                    ) from exc
    except Exception as exc:
        raise _fail(item, index, f"image file is truncated or corrupt ({exc}).",
                    "Re-export or remove the file.") from exc


def _decode_pil(img, item, index, policy):
    """Decode a loaded PIL image: EXIF orientation, then mode-specific conversion."""
    with _pil_errors(item, index):
        img = ImageOps.exif_transpose(img)
        if img.mode in _HIGH_DEPTH_MODES:
            kind, arr = "high", np.asarray(img)
        elif img.mode in _ALPHA_MODES or (img.mode in ("P", "L", "RGB")
                                          and img.info.get("transparency") is not None):
            kind, arr = "alpha", np.asarray(img.convert("RGBA"))
        else:
            kind, arr = "rgb", np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    if kind == "alpha":
        return _composite(arr[..., :3], arr[..., 3:] / np.float32(255), policy)
    if kind == "rgb":
        return np.array(arr, dtype=np.uint8)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise _fail(item, index, "contains NaN or inf values.")
    return _gray3(_scale(arr, policy))


def _gray3(arr):
    """(H, W), (H, W, 1) or (H, W, 3) -> a new C-contiguous (H, W, 3) array."""
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.array(arr, order="C")  # always a copy: never hand out a view of X
    arr = arr.reshape(arr.shape[:2])
    return np.repeat(arr[:, :, None], 3, axis=2)


def _composite(rgb, alpha, policy):
    """Alpha-blend ``rgb`` (uint8 0..255 or float 0..1) on the policy background."""
    bg = np.asarray(policy.background, dtype=np.float32)
    if rgb.dtype == np.uint8:
        out = rgb.astype(np.float32) * alpha + bg * (1 - alpha)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return (rgb * alpha + (bg / 255) * (1 - alpha)).astype(np.float32)


def _scale(arr, policy, window=None, keep_unit=True):
    """Map intensities to float32 [0, 1]: policy window, else ``window``, else min..max.

    Float data already within [0, 1] is kept as is when ``keep_unit`` and no window applies.
    """
    x = arr.astype(np.float64)
    window = policy.window or window
    if window is None and keep_unit and arr.dtype.kind == "f" and x.min() >= 0 and x.max() <= 1:
        return x.astype(np.float32)
    if window is not None:
        lo, width = window[0] - window[1] / 2, window[1]
    else:
        lo, width = x.min(), x.max() - x.min()
        if width == 0:
            return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((x - lo) / width, 0, 1).astype(np.float32)


def _decode_array(arr, index, policy):
    _check_image(arr, index)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise _fail(arr, index, "contains NaN or inf values.", "Replace them before extraction.")
    channels = arr.shape[2] if arr.ndim == 3 else 1
    if arr.dtype == np.uint8:
        if channels == 4:
            return _composite(arr[..., :3], arr[..., 3:] / np.float32(255), policy)
        return _gray3(arr)
    if channels == 4:
        alpha = arr[..., 3:].astype(np.float32)
        if arr.dtype.kind in "ui":
            alpha = alpha / np.float32(np.iinfo(arr.dtype).max)
        return _composite(_scale(arr[..., :3], policy), np.clip(alpha, 0, 1), policy)
    return _gray3(_scale(arr, policy))


# ---------------------------------------------------------------- DICOM
def _decode_dicom(path, index, policy):
    ds = _read_dicom(path, index)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise _fail(path, index, f"is a multi-frame DICOM ({ds.NumberOfFrames} frames), "
                    "which is not supported yet.", "Export the frames as single-frame files.")
    if "PixelData" not in ds:
        raise _fail(path, index, "is a DICOM file without pixel data (e.g. a DICOMDIR or a "
                    "structured report).", "Pass image DICOM files only.")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        if "missing dependencies" in str(exc) or "Unable to decompress" in str(exc):
            raise _fail(path, index, f"uses the compressed transfer syntax "
                        f"'{getattr(syntax, 'name', syntax)}', for which no decoder is "
                        f"installed.", f"Install one: {_DICOM_DECODERS}.") from exc
        raise _fail(path, index, f"DICOM pixel data is truncated or corrupt ({exc}).") from exc
    return _dicom_to_image(ds, pixels, policy)


def _read_dicom(path, index):
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise _fail(path, index, "is a DICOM file but pydicom is not installed.",
                    "Install it: pip install featcache[dicom]") from None
    try:
        try:
            return pydicom.dcmread(path)
        except InvalidDicomError:
            return pydicom.dcmread(path, force=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise _fail(path, index, f"not a DICOM file pydicom can read ({exc}).") from exc


def _dicom_to_image(ds, pixels, policy):
    """Modality LUT, VOI window, MONOCHROME1 inversion; colour images as RGB."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:  # colour (already converted to RGB by pydicom)
        if pixels.dtype == np.uint8 and policy.window is None:
            return np.ascontiguousarray(pixels)
        return _scale(pixels, policy, keep_unit=False)
    values = apply_modality_lut(pixels, ds)
    out = _scale(values, policy, _dicom_window(ds), keep_unit=False)
    if photometric == "MONOCHROME1":
        out = 1 - out
    return _gray3(out)


def _dicom_window(ds):
    """The file's first (WindowCenter, WindowWidth), or None."""
    values = [ds.get("WindowCenter"), ds.get("WindowWidth")]
    try:
        center, width = (float(v[0] if type(v).__name__ == "MultiValue" else v) for v in values)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width > 0 and np.isfinite([center, width]).all() else None
