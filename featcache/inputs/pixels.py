"""Pixel arithmetic shared by the decoders: intensity scaling, alpha compositing, grey to RGB.

numpy only. Every function returns a new array (never a view of the caller's data).
"""

from __future__ import annotations

import numpy as np

__all__ = ["gray3", "composite", "scale_intensity"]


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


def scale_intensity(arr: np.ndarray, window=None, *, keep_unit: bool = True) -> np.ndarray:
    """Map intensities to float32 [0, 1]: through ``window`` (center, width), else min..max.

    Float data already within [0, 1] is kept as is when ``keep_unit`` and no window applies;
    a constant image becomes zeros.
    """
    x = arr.astype(np.float64)
    if window is None and keep_unit and arr.dtype.kind == "f" and x.min() >= 0 and x.max() <= 1:
        return x.astype(np.float32)
    if window is not None:
        lo, width = window[0] - window[1] / 2, window[1]
    else:
        lo, width = x.min(), x.max() - x.min()
        if width == 0:
            return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((x - lo) / width, 0, 1).astype(np.float32)
