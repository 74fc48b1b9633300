"""One item -> a decoded ``(H, W, 3)`` image under an explicit :class:`DecodePolicy`.

Files are read once, so what is decoded is what was keyed (:func:`decode` checks the key on
those bytes); PNG/JPEG/TIFF... go through Pillow (EXIF orientation, transparency, 16-bit and
float modes), DICOM through :mod:`featcache.inputs.dicom`, arrays and PIL images directly. Sizes are
checked before anything is allocated: Pillow's decompression-bomb limit for decoding and
:func:`max_resized_pixels` for the shorter-side resize.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .dicom import DICOM_VOI_RULE, decode_dicom
from ..exceptions import InputChangedError, InputError
from .errors import as_input_error, describe, input_error, pil_errors
from .items import check_image
from .keys import array_key, bytes_key, pil_key, stat_file
from ..options import validate_window
from .pixels import composite, gray3, scale_intensity

__all__ = ["DecodePolicy", "decode", "resized_pixels", "max_resized_pixels",
           "RESIZED_PIXELS_LIMIT", "DECODER_VERSION"]

#: Default largest image, in pixels, that the shorter-side resize may produce before the centre
#: crop (a 1x100000 image at 224 px would need 224 x 22.4 million): 2**24 pixels, about 200 MB
#: as float32 RGB. Override with the environment variable ``FEATCACHE_MAX_RESIZED_PIXELS``.
#: The decoded image itself is bounded by Pillow's decompression-bomb limit
#: (``PIL.Image.MAX_IMAGE_PIXELS``), which featcache applies to every decoder, DICOM included.
RESIZED_PIXELS_LIMIT = 2**24

DECODER_VERSION = "1"
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


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
        DICOM file's own VOI (its VOI LUT or first window, applied by pydicom's
        ``apply_voi_lut``), else each image's real min..max (float images already within
        [0, 1] are kept as they are).
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
        """Return everything that changes the decoded pixels, JSON-serialisable.

        ``dicom_voi`` names the rule that turns a DICOM file's own VOI into 0..1 (see
        :data:`featcache.inputs.dicom.DICOM_VOI_RULE`), so rows decoded by an earlier rule are never
        served for this one.
        """
        return {"decoder_version": DECODER_VERSION, "background": list(self.background),
                "window": None if self.window is None else list(self.window),
                "exif_orientation": True, "grayscale": "replicate", "dicom_voi": DICOM_VOI_RULE}


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
        raise input_error(item, index, f"declares {width}x{height} = {height * width} pixels, "
                          f"over the decode limit PIL.Image.MAX_IMAGE_PIXELS = {decoded_limit}",
                          "If you trust the file, raise the limit: `from PIL import Image; "
                          "Image.MAX_IMAGE_PIXELS = <pixels>`.")
    if image_size and height and width:
        need, limit = resized_pixels(height, width, image_size), max_resized_pixels()
        if need > limit:
            raise input_error(item, index, f"is {width}x{height} pixels: resizing its shorter "
                              f"side to {image_size} would make a {need}-pixel image, over the "
                              f"limit of {limit} (aspect ratio "
                              f"{max(height, width) / min(height, width):.0f}:1)",
                              "Crop it first, or raise FEATCACHE_MAX_RESIZED_PIXELS if you have "
                              "the memory.")


# ---------------------------------------------------------------- decoding
def decode(item, index: int, policy: DecodePolicy = DecodePolicy(), *, key: bytes | None = None,
           image_size: int | None = None) -> np.ndarray:
    """Decode one item to an ``(H, W, 3)`` array.

    Parameters
    ----------
    item : Path, ndarray or PIL.Image.Image
        One item from :func:`featcache.inputs.items.as_items`.
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
    with as_input_error(item, index, "cannot be decoded"):
        if isinstance(item, (str, os.PathLike)):
            return _decode_file(Path(item), index, policy, key, image_size)
        if isinstance(item, np.ndarray):
            snapshot = np.array(item, copy=True)
            _check_key(item, index, key, lambda: array_key(snapshot))
            return _decode_array(snapshot, index, policy, image_size)
        if isinstance(item, Image.Image):
            with pil_errors(item, index):
                item.load()
                snapshot = item.copy()
            _check_key(item, index, key, lambda: pil_key(snapshot, index))
            _check_size(item, index, snapshot.height, snapshot.width, image_size)
            return _decode_pil(snapshot, item, index, policy)
        raise input_error(item, index, "is not an item from as_items()")


def _check_key(item, index, key, compute):
    if key is not None and compute() != key:
        raise InputChangedError(
            f"{describe(item, index)}: changed while featcache was reading it (its content "
            "differs from the one it was keyed by moments before), so no row is stored for it. "
            "Run again once it is stable: it is recomputed from its current content.")


def _read_file(path, index) -> bytes:
    st = stat_file(path, path, index)
    if st.st_size == 0:
        raise input_error(path, index, "empty file (0 bytes).", "Re-create or remove the file.")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise input_error(path, index, f"cannot be read ({exc.strerror or exc}).") from None


def _decode_file(path, index, policy, key, image_size):
    data = _read_file(path, index)  # read once: the key is checked on what is decoded
    _check_key(path, index, key, lambda: bytes_key(data))
    if data[128:132] == b"DICM" or path.suffix.lower() == ".dcm":
        return decode_dicom(data, describe(path, index), policy,
                            lambda h, w, limit: _check_size(path, index, h, w, image_size, limit))
    with warnings.catch_warnings(), pil_errors(path, index):
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        _check_size(path, index, img.height, img.width, image_size)
        img.load()  # force full decoding: truncated files fail here
    with img:
        return _decode_pil(img, path, index, policy)


def _decode_pil(img, item, index, policy):
    """Decode a loaded PIL image: EXIF orientation, then mode-specific conversion."""
    with pil_errors(item, index):
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
        raise input_error(item, index, "contains NaN or inf values.")
    return gray3(scale_intensity(arr, policy.window))


def _decode_array(arr, index, policy, image_size=None):
    check_image(arr, index)
    _check_size(arr, index, arr.shape[0], arr.shape[1], image_size)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise input_error(arr, index, "contains NaN or inf values.",
                          "Replace them before extraction.")
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
