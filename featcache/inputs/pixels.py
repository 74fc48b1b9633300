"""Pixel arithmetic shared by the decoders: intensity scaling, alpha compositing, grey to RGB.

numpy, and Pillow's ``Image.reduce`` in :func:`box_reduce`. Every function returns a new array
(never a view of the caller's data), but :func:`box_reduce` by a factor of 1 returns its input.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["gray3", "composite", "scale_intensity", "box_reduce", "reduction_factor"]


def gray3(arr: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) -> a new C-contiguous (H, W, 3) array."""
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.array(arr, order="C")  # always a copy: never hand out a view of X
    arr = arr.reshape(arr.shape[:2])
    return np.repeat(arr[:, :, None], 3, axis=2)


def composite(rgb: np.ndarray, alpha: np.ndarray, background) -> np.ndarray:
    """Alpha-blend ``rgb`` (uint8 0..255 or float 0..1) on ``background`` (3 ints, 0..255)."""
    bg = np.asarray(background, dtype=np.float32)
    if rgb.dtype == np.uint8:
        out = rgb.astype(np.float32) * alpha + bg * (1 - alpha)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return (rgb * alpha + (bg / 255) * (1 - alpha)).astype(np.float32)


def scale_intensity(arr: np.ndarray, window=None, *, keep_unit: bool = True,
                    value_range=None) -> np.ndarray:
    """Map intensities to float32 [0, 1]: through ``window`` (center, width), else min..max.

    Float data already within [0, 1] is kept as is when ``keep_unit`` and no window applies;
    a constant image becomes zeros. ``value_range``: the ``(min, max)`` to use instead of the
    array's own (those of the full image when ``arr`` was box-reduced from it, so that the
    reduction does not change the contrast).
    """
    x = arr.astype(np.float64)
    if window is not None:
        lo, width = window[0] - window[1] / 2, window[1]
    else:
        lo, hi = (x.min(), x.max()) if value_range is None else value_range
        if keep_unit and arr.dtype.kind == "f" and lo >= 0 and hi <= 1:
            return x.astype(np.float32)
        width = hi - lo
        if width == 0:
            return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((x - lo) / width, 0, 1).astype(np.float32)


def reduction_factor(height: int, width: int, size: int, keep: int) -> int:
    """Largest integer factor that keeps the shorter side at least ``keep * size`` (1: none)."""
    return max(1, int(min(height, width) // (keep * size))) if size else 1


def box_reduce(arr: np.ndarray, factor: int) -> np.ndarray:
    """Shrink an ``(H, W)`` or ``(H, W, C)`` image ``factor`` times by box averaging.

    Each output pixel is the mean of a ``factor x factor`` block (the last row and column of
    blocks average what remains), by Pillow's ``Image.reduce``: uint8 stays uint8 (rounded),
    other integers go through int32 (rounded; uint32 and 64-bit integers through float32),
    floats become float32. Returns ``arr`` itself when ``factor`` is 1.
    """
    if factor <= 1:
        return arr
    if arr.ndim == 3 and arr.dtype == np.uint8 and arr.shape[2] in (3, 4):
        mode = "RGB" if arr.shape[2] == 3 else "RGBA"
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr), mode).reduce(factor))
    if arr.ndim == 3:
        return np.stack([box_reduce(arr[..., c], factor) for c in range(arr.shape[2])], axis=2)
    if arr.dtype == np.uint8:
        plane, mode = arr, "L"
    elif arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2 or arr.dtype == np.int32:
        plane, mode = arr.astype(np.int32, copy=False), "I"
    else:
        plane, mode = arr.astype(np.float32, copy=False), "F"
    return np.asarray(Image.fromarray(np.ascontiguousarray(plane), mode).reduce(factor))
