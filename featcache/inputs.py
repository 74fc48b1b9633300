"""Anything a user passes as ``X`` -> items -> content keys and decoded images.

:func:`as_items` normalises ``X`` to one item per sample, :func:`content_key` gives each a
16-byte blake2b key of its content (moved files keep it, edited files lose it), and
:func:`decode` turns one into an ``(H, W, 3)`` array under a :class:`DecodePolicy`.
Every bad input raises :class:`~featcache.exceptions.InputError` naming its index (and
path), what was expected and the fix. torch and pandas are handled duck-typed, never imported.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .dicom import decode_dicom
from .exceptions import InputChangedError, InputError
from .options import validate_window
from .pixels import composite, gray3, scale_intensity

__all__ = ["DecodePolicy", "as_items", "content_key", "decode", "describe", "resized_pixels",
           "max_resized_pixels", "RESIZED_PIXELS_LIMIT"]

#: Default largest image, in pixels, that the shorter-side resize may produce before the centre
#: crop (a 1x100000 image at 224 px would need 224 x 22.4 million): 2**24 pixels, about 200 MB
#: as float32 RGB. Override with the environment variable ``FEATCACHE_MAX_RESIZED_PIXELS``.
#: The decoded image itself is bounded by Pillow's decompression-bomb limit
#: (``PIL.Image.MAX_IMAGE_PIXELS``), which featcache applies to every decoder, DICOM included.
RESIZED_PIXELS_LIMIT = 2**24

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
        object.__setattr__(self, "window", validate_window(self.window, "DecodePolicy"))

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
    device, layout = getattr(X, "device", None), str(getattr(X, "layout", "torch.strided"))
    if getattr(device, "type", "cpu") == "meta" or layout != "torch.strided" or X.is_complex():
        raise InputError(f"X is a torch tensor on device {device} with layout {layout} and "
                         f"dtype {X.dtype}, which holds no image data featcache can read; pass "
                         "a dense real tensor with data (e.g. x.to_dense().to('cpu')), an "
                         "array or file paths.")
    try:
        X = X.detach().cpu()
        if "bfloat16" in str(X.dtype):
            X = X.float()
        return X.numpy().transpose(0, 2, 3, 1)
    except Exception as exc:  # torch raises many types for tensors numpy cannot take
        raise InputError(f"X is a torch tensor (device {device}, dtype {X.dtype}) that cannot be "
                         f"read as an array ({type(exc).__name__}: {exc}); pass x.detach()"
                         ".cpu().numpy() or file paths.") from exc


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
def content_key(item, index: int, memo=None) -> bytes:
    """Return the 16-byte blake2b content key of one item.

    Parameters
    ----------
    item : Path, ndarray or PIL.Image.Image
        One item from :func:`as_items`.
    index : int
        Its position in ``X`` (for error messages).
    memo : mapping, optional
        A persistent memo of file keys (e.g. :meth:`featcache.cache.FeatureCache.key_memo`),
        keyed like the process memo: consulted before a file is read, and given every key
        computed from a file that did not change while it was read.

    Returns
    -------
    bytes
        ``blake2b(digest_size=16)`` of: a file's bytes (equal to ``b2sum -l 128 FILE``),
        memoised per (resolved path, size, mtime_ns, inode, device, ctime_ns) so unchanged
        files are not re-read while any edit (new size, mtime_ns or ctime_ns) re-reads; an
        array's dtype string, shape and C-contiguous bytes; a PIL image's mode, size, pixel
        bytes, palette, transparency and EXIF orientation (all that :func:`decode` uses).

    Raises
    ------
    InputError
        For anything that goes wrong while reading the item, whatever raised it.
    """
    with _as_input_error(item, index, "cannot be read"):
        if isinstance(item, (str, os.PathLike)):
            return _file_key(Path(item), index, memo)
        if isinstance(item, np.ndarray):
            return _array_key(item)
        if isinstance(item, Image.Image):
            return _pil_key(item, index)
        raise _fail(item, index, "is not an item from as_items()")


def _array_key(item) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    arr = np.ascontiguousarray(item)
    h.update(f"ndarray|{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.reshape(-1).view(np.uint8))
    return h.digest()


def _pil_key(item, index) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    with _pil_errors(item, index):
        pixels = item.tobytes()
        extra = (item.getpalette(), item.info.get("transparency"), item.getexif().get(0x0112))
    h.update(f"PIL|{item.mode}|{item.size}|{extra!r}|".encode())
    h.update(pixels)
    return h.digest()


def _bytes_key(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


@contextmanager
def _as_input_error(item, index, what):
    """Any exception but InputError (and interrupts) becomes this input's InputError."""
    try:
        yield
    except InputError:
        raise
    except MemoryError as exc:
        raise _fail(item, index, f"{what}: not enough memory",
                    "Free memory or lower the size limits (see the FAQ).") from exc
    except Exception as exc:
        raise _fail(item, index, f"{what} ({type(exc).__name__}: {exc})",
                    "Check the input; with on_error='skip' it becomes a NaN row.") from exc


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


def _identity(path, st) -> tuple:
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


def _file_key(path, index, persistent=None):
    st = _stat(path, path, index)
    memo = _identity(path, st)
    key = _KEY_MEMO.get(memo)
    if key is None and persistent is not None:
        key = persistent.get(memo)
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
    if _identity(path, os.stat(path)) == memo:  # unchanged meanwhile
        if len(_KEY_MEMO) >= _MEMO_MAX:
            _KEY_MEMO.clear()
        _KEY_MEMO[memo] = key
        if persistent is not None:
            persistent[memo] = key
    return key


# ---------------------------------------------------------------- size limits
def max_resized_pixels() -> int:
    """Largest image the shorter-side resize may produce (``FEATCACHE_MAX_RESIZED_PIXELS``)."""
    text = os.environ.get("FEATCACHE_MAX_RESIZED_PIXELS", "")
    try:
        return int(text) if text.strip() else RESIZED_PIXELS_LIMIT
    except ValueError:
        raise InputError(f"FEATCACHE_MAX_RESIZED_PIXELS={text!r} is not an integer; unset it "
                         f"or give a pixel count such as {RESIZED_PIXELS_LIMIT}.") from None


def resized_pixels(height: int, width: int, size: int) -> int:
    """Pixels of an ``height x width`` image after its shorter side is resized to ``size``."""
    scale = size / min(height, width)
    return max(size, round(height * scale)) * max(size, round(width * scale))


def _check_size(item, index, height, width, image_size, decoded_limit=None):
    """Refuse, before anything is allocated, an image too large to decode or to resize."""
    if decoded_limit and height * width > decoded_limit:
        raise _fail(item, index, f"declares {width}x{height} = {height * width} pixels, over the "
                    f"decode limit PIL.Image.MAX_IMAGE_PIXELS = {decoded_limit}",
                    "If you trust the file, raise the limit: `from PIL import Image; "
                    "Image.MAX_IMAGE_PIXELS = <pixels>`.")
    if image_size and height and width:
        need, limit = resized_pixels(height, width, image_size), max_resized_pixels()
        if need > limit:
            raise _fail(item, index, f"is {width}x{height} pixels: resizing its shorter side to "
                        f"{image_size} would make a {need}-pixel image, over the limit of "
                        f"{limit} (aspect ratio {max(height, width) / min(height, width):.0f}:1)",
                        "Crop it first, or raise FEATCACHE_MAX_RESIZED_PIXELS if you have the "
                        "memory.")


# ---------------------------------------------------------------- decoding
def decode(item, index: int, policy: DecodePolicy = DecodePolicy(), *, key: bytes | None = None,
           image_size: int | None = None) -> np.ndarray:
    """Decode one item to an ``(H, W, 3)`` array.

    Parameters
    ----------
    item : Path, ndarray or PIL.Image.Image
        One item from :func:`as_items`.
    index : int
        Its position in ``X`` (for error messages).
    policy : DecodePolicy
        Background for transparency and intensity window.
    key : bytes, optional
        The item's content key as computed earlier. The item is read once (a file's bytes, a
        snapshot of an array or image), its key recomputed from exactly what is decoded, and
        :class:`~featcache.exceptions.InputChangedError` raised when they differ, so an input
        that changed since it was keyed never gives a row under the old key.
    image_size : int, optional
        The network input size: an image whose shorter-side resize to it would exceed
        :func:`max_resized_pixels` is refused before it is decoded.

    Returns
    -------
    ndarray
        ``uint8`` for 8-bit sources (8-bit files, uint8 arrays, 8-bit RGB DICOM); ``float32``
        in [0, 1] for all else (16/32-bit, float, grayscale DICOM); never clipped to 255.

    Raises
    ------
    InputError
        For a missing, empty, truncated, undecodable, too large or badly shaped input, and
        for any other exception raised while reading or decoding it (kept as its cause).
    """
    with _as_input_error(item, index, "cannot be decoded"):
        if isinstance(item, (str, os.PathLike)):
            return _decode_file(Path(item), index, policy, key, image_size)
        if isinstance(item, np.ndarray):
            snapshot = np.array(item, copy=True)
            _check_key(item, index, key, lambda: _array_key(snapshot))
            return _decode_array(snapshot, index, policy, image_size)
        if isinstance(item, Image.Image):
            with _pil_errors(item, index):
                item.load()
                snapshot = item.copy()
            _check_key(item, index, key, lambda: _pil_key(snapshot, index))
            _check_size(item, index, snapshot.height, snapshot.width, image_size)
            return _decode_pil(snapshot, item, index, policy)
        raise _fail(item, index, "is not an item from as_items()")


def _check_key(item, index, key, compute):
    if key is not None and compute() != key:
        raise InputChangedError(
            f"{describe(item, index)}: changed while featcache was reading it (its content "
            "differs from the one it was keyed by moments before), so no row is stored for it. "
            "Run again once it is stable: it is recomputed from its current content.")


def _read_file(path, index) -> bytes:
    st = _stat(path, path, index)
    if st.st_size == 0:
        raise _fail(path, index, "empty file (0 bytes).", "Re-create or remove the file.")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _fail(path, index, f"cannot be read ({exc.strerror or exc}).") from None


def _decode_file(path, index, policy, key, image_size):
    data = _read_file(path, index)  # read once: the key is checked on what is decoded
    _check_key(path, index, key, lambda: _bytes_key(data))
    if data[128:132] == b"DICM" or path.suffix.lower() == ".dcm":
        return decode_dicom(data, describe(path, index), policy,
                            lambda h, w, limit: _check_size(path, index, h, w, image_size, limit))
    with warnings.catch_warnings(), _pil_errors(path, index):
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        _check_size(path, index, img.height, img.width, image_size)
        img.load()  # force full decoding: truncated files fail here
    with img:
        return _decode_pil(img, path, index, policy)


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
        original = re.sub(r"<_io\.\w+ (name=)?(.*?)>", r"\2", str(exc))
        raise _fail(item, index, "not an image Pillow can read.",
                    f"Expected an image file (PNG, JPEG, TIFF, ...) or DICOM ({original}).",
                    ) from exc
    except Exception as exc:
        raise _fail(item, index, f"image file is truncated or corrupt ({type(exc).__name__}: "
                    f"{exc}).",
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
        return composite(arr[..., :3], arr[..., 3:] / np.float32(255), policy.background)
    if kind == "rgb":
        return np.array(arr, dtype=np.uint8)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise _fail(item, index, "contains NaN or inf values.")
    return gray3(scale_intensity(arr, policy.window))


def _decode_array(arr, index, policy, image_size=None):
    _check_image(arr, index)
    _check_size(arr, index, arr.shape[0], arr.shape[1], image_size)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise _fail(arr, index, "contains NaN or inf values.", "Replace them before extraction.")
    channels = arr.shape[2] if arr.ndim == 3 else 1
    if arr.dtype == np.uint8:
        if channels == 4:
            return composite(arr[..., :3], arr[..., 3:] / np.float32(255), policy.background)
        return gray3(arr)
    if channels == 4:
        alpha = arr[..., 3:].astype(np.float32)
        if arr.dtype.kind in "ui":
            alpha = alpha / np.float32(np.iinfo(arr.dtype).max)
        return composite(scale_intensity(arr[..., :3], policy.window), np.clip(alpha, 0, 1),
                         policy.background)
    return gray3(scale_intensity(arr, policy.window))
