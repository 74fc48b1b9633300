"""DICOM files -> image arrays: pydicom, modality LUT, VOI LUT or window, MONOCHROME1, size limits.

:func:`decode_dicom` decodes the bytes of one file (read once by :mod:`featcache.inputs`, so
what is decoded is what was keyed). The declared size (rows x columns x frames x samples) is
checked against Pillow's decompression-bomb limit before any pixel is decoded, and any
exception pydicom or its decoders raise becomes the input's
:class:`~featcache.exceptions.InputError`.
"""

from __future__ import annotations

import io

import numpy as np

from ..exceptions import InputError
from .pixels import gray3, scale_intensity

__all__ = ["decode_dicom", "DICOM_DECODERS", "DICOM_VOI_RULE"]

#: The rule that turns a DICOM file's own VOI into 0..1, recorded in the decode policy (and so
#: in the fingerprint): rows decoded under an earlier rule (a hand-written linear window) are
#: never served for this one.
DICOM_VOI_RULE = "pydicom.apply_voi_lut(index=0,prefer_lut=True)/output-range"

#: What to install for compressed transfer syntaxes.
DICOM_DECODERS = ("pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
                  "(or pip install python-gdcm)")


def _error(where: str, what: str, fix: str = "") -> InputError:
    what = what if what.endswith(".") else what + "."
    return InputError(f"{where}: {what}" + (f" {fix}" if fix else ""))


def decode_dicom(data: bytes, where: str, policy, check_size, reduce=None) -> np.ndarray:
    """Decode one DICOM file's bytes to an ``(H, W, 3)`` array.

    Parameters
    ----------
    data : bytes
        The whole file.
    where : str
        The input's description for messages (``"input 3 ('/data/x.dcm')"``).
    policy : featcache.inputs.decoding.DecodePolicy
        Its ``window`` overrides the file's VOI (VOI LUT or window).
    check_size : callable
        ``check_size(height, width, decoded_pixels)`` raises InputError for an image too large
        to decode or resize; called before the pixel data is decoded.
    reduce : callable, optional
        ``reduce(image) -> image``, the decode policy's box reduction (``decode_scale``),
        applied to the windowed image in [0, 1] (or the 8-bit colour image) before MONOCHROME1
        inversion and grey replication: the modality LUT and VOI see every pixel.

    Returns
    -------
    ndarray
        uint8 for 8-bit colour images, else float32 in [0, 1].
    """
    from PIL import Image

    ds = _read(data, where)
    frames = _integer(ds, "NumberOfFrames", 1, where)
    if frames > 1:
        raise _error(where, f"is a multi-frame DICOM ({frames} frames), which is not supported "
                     "yet", "Export the frames as single-frame files.")
    if "PixelData" not in ds:
        raise _error(where, "is a DICOM file without pixel data (e.g. a DICOMDIR or a "
                     "structured report)", "Pass image DICOM files only.")
    rows, columns = _integer(ds, "Rows", 0, where), _integer(ds, "Columns", 0, where)
    if rows < 1 or columns < 1:
        raise _error(where, f"declares {rows} rows and {columns} columns", "The file is damaged.")
    check_size(rows, columns, Image.MAX_IMAGE_PIXELS)
    return _to_image(ds, _pixels(ds, where), policy, where, reduce or (lambda image: image))


def _read(data, where):
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise _error(where, "is a DICOM file but pydicom is not installed",
                     "Install it: pip install featcache[dicom]") from None
    try:
        try:
            return pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise _error(where, f"not a DICOM file pydicom can read ({type(exc).__name__}: "
                     f"{exc})") from exc


def _integer(ds, name, default, where) -> int:
    """An integer attribute; a malformed value (``'1A'``) is this input's InputError."""
    try:
        value = ds.get(name, default)
        return int(default if value is None or value == "" else value)
    except Exception as exc:
        raise _error(where, f"has a malformed {name} attribute ({type(exc).__name__}: {exc})",
                     "The file is damaged or non-conformant; fix the attribute or remove "
                     "the file.") from exc


def _pixels(ds, where):
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return ds.pixel_array
    except Exception as exc:
        if "missing dependencies" in str(exc) or "Unable to decompress" in str(exc):
            raise _error(where, f"uses the compressed transfer syntax "
                         f"'{getattr(syntax, 'name', syntax)}', for which no decoder is "
                         "installed", f"Install one: {DICOM_DECODERS}.") from exc
        raise _error(where, f"DICOM pixel data is truncated or corrupt ({exc})") from exc


def _to_image(ds, pixels, policy, where, reduce):
    """Modality LUT, VOI (the user's window or the file's), MONOCHROME1 inversion; colour as RGB."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:  # colour (already converted to RGB by pydicom)
        if pixels.dtype == np.uint8 and policy.window is None:
            return np.ascontiguousarray(reduce(pixels))
        return reduce(scale_intensity(pixels, policy.window, keep_unit=False))
    if pixels.ndim != 2:
        raise ValueError(f"pixel data of shape {pixels.shape}, expected (rows, columns)")
    values = apply_modality_lut(pixels, ds)
    if policy.window is not None or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        out = scale_intensity(values, policy.window, keep_unit=False)
    else:
        out = _file_voi(values, ds, where)
    out = reduce(out)
    if photometric == "MONOCHROME1":
        out = 1 - out
    return gray3(out)


def _file_voi(values, ds, where):
    """The file's own VOI through pydicom's ``apply_voi_lut``, scaled to 0..1 by its output range.

    pydicom picks the VOI LUT over a window when the file has both, and the first of several
    windows or LUTs (``index=0``); it applies ``VOILUTFunction`` (LINEAR, LINEAR_EXACT,
    SIGMOID). A window maps onto pydicom's output range (from BitsStored, PixelRepresentation
    and the rescale), a VOI LUT onto 0 .. 2**bits - 1 (the LUT descriptor's bits per entry).
    Without a VOI the modality values' min..max is used. A VOI that pydicom refuses (a zero
    width, an unknown function) is this input's InputError.
    """
    from pydicom.pixels import apply_voi_lut

    if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
        values = values.astype(np.int64)  # a VOI LUT is indexed by integers
    try:
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        if out is values:  # no VOI in the file
            return scale_intensity(values, None, keep_unit=False)
        if out.dtype.kind in "ui":  # a VOI LUT
            low, high = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
        else:  # a window: pydicom's own output range, from its most extreme inputs
            low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0, prefer_lut=True)
    except Exception as exc:  # pydicom raises ValueError, KeyError, IndexError... for bad VOIs
        raise _error(where, f"has a VOI (window or VOI LUT) that pydicom cannot apply "
                     f"({type(exc).__name__}: {exc})",
                     "Pass your own window=(center, width) to override the file's.") from exc
    return np.clip((out.astype(np.float64) - low) / (high - low), 0, 1).astype(np.float32)
