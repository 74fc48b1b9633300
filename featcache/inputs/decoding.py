"""One item -> a decoded ``(H, W, 3)`` image under an explicit :class:`DecodePolicy`.

Files are read once, so what is decoded is what was keyed (:func:`decode` checks the key on
those bytes); PNG/JPEG/TIFF... go through Pillow (EXIF orientation, transparency, 16-bit and
float modes), DICOM through :mod:`featcache.inputs.dicom`, arrays and PIL images directly. Sizes are
checked before anything is allocated: Pillow's decompression-bomb limit for decoding and
:func:`max_resized_pixels` for the shorter-side resize.
"""

from __future__ import annotations

import io
import math
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
from ..options import DECODE_SCALES, DECODERS, validate_window
from .pixels import box_reduce, composite, gray3, reduction_factor, scale_intensity

__all__ = ["DecodePolicy", "decode", "resized_pixels", "max_resized_pixels",
           "RESIZED_PIXELS_LIMIT", "DECODER_VERSION", "REDUCE_KEEP", "REDUCTION_RULE",
           "DECODE_SCALES", "DECODERS", "DEVICE_JPEG_RULE", "device_jpeg_frame"]

#: Default largest image, in pixels, that the shorter-side resize may produce before the centre
#: crop (a 1x100000 image at 224 px would need 224 x 22.4 million): 2**24 pixels, about 200 MB
#: as float32 RGB. Override with the environment variable ``FEATCACHE_MAX_RESIZED_PIXELS``.
#: The decoded image itself is bounded by Pillow's decompression-bomb limit
#: (``PIL.Image.MAX_IMAGE_PIXELS``), which featcache applies to every decoder, DICOM included.
RESIZED_PIXELS_LIMIT = 2**24

DECODER_VERSION = "1"

#: With ``decode_scale="reduced"``, a large image is decoded or box-reduced to no less than this
#: many times the network input size on its shorter side, and only then resized (antialiased)
#: to the input size: 2 keeps rows within cosine 0.9995 of the full decode on photos and 16-bit
#: X-rays, 0.997 on 8-bit X-ray JPEGs (see docs/concepts.md), 1 would not leave the final resize anything to average.
REDUCE_KEEP = 2
#: What ``decode_scale="reduced"`` does, recorded in the decode policy (and so in the
#: fingerprint): JPEGs decoded at a reduced DCT scale (Pillow's ``draft``, 1/2, 1/4 or 1/8),
#: other images box-averaged by an integer factor (``Image.reduce``), the shorter side kept at
#: ``REDUCE_KEEP`` times the input size or more.
REDUCTION_RULE = f"jpeg-dct-draft+box-reduce/shorter-side>={REDUCE_KEEP}x-input"
#: What ``decoder="device"`` does, recorded in the decode policy (and so in the fingerprint):
#: a JPEG file whose frame is baseline, extended or progressive Huffman (SOF0-2), 8 bits, 1 or
#: 3 components, whose bytes end with the end-of-image marker, without an EXIF rotation
#: (:func:`device_jpeg_frame`), is decoded at full size to RGB by ``torchvision.io.decode_jpeg``
#: on the run device (nvJPEG on a GPU, libjpeg-turbo on a CPU); every other input by Pillow,
#: as ``decoder="pillow"`` would. The choice depends on the file's bytes only, never on the
#: machine. A truncated file (or one with data after its image) thus goes to Pillow, which
#: refuses a truncated one as the default path does: a hardware decoder is not trusted to.
#: A JPEG the device then fails to decode is decoded by Pillow at full size: the same
#: libjpeg-turbo pixels that ``decode_jpeg`` gives on a CPU.
DEVICE_JPEG_RULE = ("decode_jpeg/sof0-2,8-bit,1|3-components,ends-with-eoi,no-exif-rotation,"
                    "full-size;else-pillow")
_DEVICE_SOF = {0xC0, 0xC1, 0xC2}
_ANY_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
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
    decode_scale : {"reduced", "full"}, default "reduced"
        ``"reduced"``: an image at least four times the network input size (``image_size``)
        on its shorter side is not decoded at full size: a JPEG is decoded at a reduced DCT scale
        (1/2, 1/4 or 1/8), any other image (PNG, TIFF, 16-bit, float, DICOM, arrays) is
        box-averaged by an integer factor, in both cases keeping the shorter side at
        :data:`REDUCE_KEEP` (2) times ``image_size`` or more; the antialiased resize then
        finishes. Rows stay within cosine 0.9995 of ``"full"`` on photos and 16-bit X-rays, 0.997
        on 8-bit X-ray JPEGs (docs/concepts.md, "The decoding policy"). ``"full"``: every pixel is decoded, then resized (the rows of featcache
        before this option, in the same namespace).
    decoder : {"pillow", "device"}, default "pillow"
        ``"pillow"``: every input is decoded by Pillow on the CPU. ``"device"``: the JPEG files
        that :func:`device_jpeg_frame` accepts are decoded at full size in batches on the run
        device (:data:`DEVICE_JPEG_RULE`; ``decode_scale`` does not apply to them), every
        other input as with ``"pillow"``. Only the engine's batch loop decodes on the device
        (:func:`decode` with ``jpeg_bytes=True`` hands it the bytes).
    """

    background: tuple[int, int, int] = (0, 0, 0)
    window: tuple[float, float] | None = None
    decode_scale: str = "reduced"
    decoder: str = "pillow"

    def __post_init__(self):
        bg = tuple(self.background)
        if len(bg) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in bg):
            raise ValueError(f"background must be 3 integers in 0..255, got {self.background!r}")
        object.__setattr__(self, "background", tuple(int(v) for v in bg))
        object.__setattr__(self, "window", validate_window(self.window, "DecodePolicy"))
        if self.decode_scale not in DECODE_SCALES:
            raise ValueError(f"decode_scale must be one of {DECODE_SCALES}, got "
                             f"{self.decode_scale!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")

    def to_dict(self) -> dict:
        """Return everything that changes the decoded pixels, JSON-serialisable.

        ``dicom_voi`` names the rule that turns a DICOM file's own VOI into 0..1 (see
        :data:`featcache.inputs.dicom.DICOM_VOI_RULE`), so rows decoded by an earlier rule are never
        served for this one. ``decode_scale`` (:data:`REDUCTION_RULE`) is there only when
        ``"reduced"``: ``"full"`` decodes as featcache always did, so its rows keep their
        namespace. ``decoder`` (:data:`DEVICE_JPEG_RULE`) likewise only when ``"device"``.
        """
        out = {"decoder_version": DECODER_VERSION, "background": list(self.background),
               "window": None if self.window is None else list(self.window),
               "exif_orientation": True, "grayscale": "replicate", "dicom_voi": DICOM_VOI_RULE}
        if self.decode_scale == "reduced":
            out["decode_scale"] = REDUCTION_RULE
        if self.decoder == "device":
            out["decoder"] = DEVICE_JPEG_RULE
        return out

    def reduction(self, height: int, width: int, image_size: int | None) -> int:
        """The integer factor a ``height x width`` image is reduced by before the final resize.

        The largest integer that keeps the shorter side at ``REDUCE_KEEP * image_size`` or
        more; 1 (none) with ``decode_scale="full"``, without an ``image_size``, or when the
        shorter side is under ``2 * REDUCE_KEEP * image_size``.
        """
        if self.decode_scale != "reduced" or not image_size:
            return 1
        return reduction_factor(height, width, image_size, REDUCE_KEEP)


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
           image_size: int | None = None, jpeg_bytes: bool = False) -> "np.ndarray | bytes":
    """Decode one item to an ``(H, W, 3)`` array.

    Parameters
    ----------
    item : Path, ndarray or PIL.Image.Image
        One item from :func:`featcache.inputs.items.as_items`.
    index : int
        Its position in ``X`` (for error messages).
    policy : DecodePolicy
        Background for transparency, intensity window and decode scale.
    key : bytes, optional
        The item's content key as computed earlier. The item is read once (a file's bytes, a
        snapshot of an array or image), its key recomputed from exactly what is decoded, and
        :class:`~featcache.exceptions.InputChangedError` raised when they differ, so an input
        that changed since it was keyed never gives a row under the old key.
    image_size : int, optional
        The network input size: an image whose shorter-side resize to it would exceed
        :func:`max_resized_pixels` is refused before it is decoded; with
        ``policy.decode_scale="reduced"``, a large image comes back reduced (never under
        ``REDUCE_KEEP * image_size`` on its shorter side). Without it, nothing is reduced.
    jpeg_bytes : bool, default False
        With ``policy.decoder="device"``: a JPEG file that the device decodes
        (:func:`device_jpeg_frame`, no EXIF rotation) comes back as its ``bytes``, undecoded
        but checked like any file (its key, Pillow's decompression-bomb limit and
        :func:`max_resized_pixels`), for the engine to decode on the device.

    Returns
    -------
    ndarray or bytes
        ``uint8`` for 8-bit sources (8-bit files, uint8 arrays, 8-bit RGB DICOM); ``float32``
        in [0, 1] for all else (16/32-bit, float, grayscale DICOM); never clipped to 255.
        ``bytes`` only with ``jpeg_bytes`` (above).

    Raises
    ------
    InputError
        For a missing, empty, truncated, undecodable, too large or badly shaped input, and
        for any other exception raised while reading or decoding it (kept as its cause).
    """
    with as_input_error(item, index, "cannot be decoded"):
        if isinstance(item, (str, os.PathLike)):
            return _decode_file(Path(item), index, policy, key, image_size,
                                jpeg_bytes and policy.decoder == "device")
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
            return _decode_pil(snapshot, item, index, policy, image_size)
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


def _decode_file(path, index, policy, key, image_size, jpeg_bytes=False):
    data = _read_file(path, index)  # read once: the key is checked on what is decoded
    _check_key(path, index, key, lambda: bytes_key(data))
    if data[128:132] == b"DICM" or path.suffix.lower() == ".dcm":
        return decode_dicom(data, describe(path, index), policy,
                            lambda h, w, limit: _check_size(path, index, h, w, image_size, limit),
                            reduce=lambda a: box_reduce(a, policy.reduction(*a.shape[:2],
                                                                            image_size)))
    with warnings.catch_warnings(), pil_errors(path, index):
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        _check_size(path, index, img.height, img.width, image_size)
        if jpeg_bytes and img.format == "JPEG" and _device_decodes(img, data):
            return data
        if img.format == "JPEG" and policy.reduction(img.height, img.width, image_size) > 1:
            _draft(img, image_size)
        img.load()  # force full decoding: truncated files fail here
    with img:
        return _decode_pil(img, path, index, policy, image_size)


def device_jpeg_frame(data: bytes) -> bool:
    """Whether ``data`` is a JPEG whose frame ``decoder="device"`` decodes on the device.

    The first frame header (SOF) must be baseline, extended or progressive Huffman (SOF0,
    SOF1, SOF2: what nvJPEG and libjpeg-turbo both decode), 8 bits per sample, with 1
    (grayscale) or 3 (YCbCr or RGB) components, and the bytes must end with the end-of-image
    marker (EOI): a truncated file is left to Pillow, which refuses it, since GPU decoders
    have been seen to give a truncated or corrupt file an image without an error. Lossless,
    arithmetic-coded, hierarchical and 12-bit frames, CMYK/YCCK, and anything that is not a
    JPEG are left to Pillow too. Reads the marker segments only (no decoding).
    """
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return False
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            i += 2
            continue
        if marker in _ANY_SOF:
            return (marker in _DEVICE_SOF and i + 10 <= n and data[i + 4] == 8
                    and data[i + 9] in (1, 3))
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xD9, 0xDA) or length < 2:  # no frame before the scan or the end
            return False
        i += 2 + length
    return False


def _device_decodes(img, data) -> bool:
    """A JPEG file for the device: its frame (:func:`device_jpeg_frame`), no EXIF rotation
    (which :func:`decode` applies and the device decoder does not)."""
    return (img.mode in ("L", "RGB") and img.getexif().get(0x0112, 1) not in range(2, 9)
            and device_jpeg_frame(data))


def _draft(img, image_size):
    """Have libjpeg decode at the most reduced DCT scale (1/2, 1/4, 1/8) that keeps the shorter
    side at ``REDUCE_KEEP * image_size`` or more (Pillow's ``draft``; the mode is kept)."""
    scale = REDUCE_KEEP * image_size / min(img.width, img.height)
    img.draft(img.mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))


def _decode_pil(img, item, index, policy, image_size=None):
    """Decode a loaded PIL image: EXIF orientation, then mode-specific conversion."""
    with pil_errors(item, index):
        img = ImageOps.exif_transpose(img)
        factor = policy.reduction(img.height, img.width, image_size)
        if img.mode in ("I;16", "I") and factor > 1:
            # Reduced by Pillow in 32-bit integers, scaled by the full image's range: the full
            # image never becomes an array (other modes go through numpy).
            lo, hi = img.getextrema()
            reduced = np.asarray((img if img.mode == "I" else img.convert("I")).reduce(factor))
            return gray3(scale_intensity(reduced, policy.window, value_range=(lo, hi)))
        if img.mode in _HIGH_DEPTH_MODES:
            kind, arr = "high", np.asarray(img)
        elif img.mode in _ALPHA_MODES or (img.mode in ("P", "L", "RGB")
                                          and img.info.get("transparency") is not None):
            kind, arr = "alpha", np.asarray(img.convert("RGBA"))
        else:
            if factor > 1 and img.mode in ("L", "RGB"):  # averaging palette indices is wrong
                img, factor = img.reduce(factor), 1
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            kind, arr = "rgb", np.asarray(rgb.reduce(factor) if factor > 1 else rgb)
    if kind == "alpha":
        return box_reduce(composite(arr[..., :3], arr[..., 3:] / np.float32(255),
                                    policy.background), factor)
    if kind == "rgb":
        return np.array(arr, dtype=np.uint8)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise input_error(item, index, "contains NaN or inf values.")
    return gray3(_scaled(arr, policy, factor))


def _scaled(arr, policy, factor):
    """``scale_intensity`` of ``arr`` box-reduced by ``factor``, with the full image's range."""
    if factor <= 1:
        return scale_intensity(arr, policy.window)
    value_range = None if policy.window is not None else (arr.min(), arr.max())
    return scale_intensity(box_reduce(arr, factor), policy.window, value_range=value_range)


def _decode_array(arr, index, policy, image_size=None):
    check_image(arr, index)
    _check_size(arr, index, arr.shape[0], arr.shape[1], image_size)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise input_error(arr, index, "contains NaN or inf values.",
                          "Replace them before extraction.")
    channels = arr.shape[2] if arr.ndim == 3 else 1
    factor = policy.reduction(arr.shape[0], arr.shape[1], image_size)
    if arr.dtype == np.uint8:
        if channels == 4:
            return box_reduce(composite(arr[..., :3], arr[..., 3:] / np.float32(255),
                                        policy.background), factor)
        return gray3(box_reduce(arr, factor))
    if channels == 4:
        alpha = arr[..., 3:].astype(np.float32)
        if arr.dtype.kind in "ui":
            alpha = alpha / np.float32(np.iinfo(arr.dtype).max)
        return box_reduce(composite(scale_intensity(arr[..., :3], policy.window),
                                    np.clip(alpha, 0, 1), policy.background), factor)
    return gray3(_scaled(arr, policy, factor))
