"""Seeded augmentation views: augmented inputs that can still be cached.

Augmenting the inputs of a frozen prefix changes its activations, which is why the usual advice
is "cache features or augment, not both". :class:`AugmentPolicy` makes augmentation cacheable:
view ``v`` of an image is a deterministic function of the image's content key, ``v`` and the
policy's seed, so each view is computed once and cached under a fingerprint that records the
policy and the view index (:meth:`AugmentPolicy.describe`). The partial-freezing estimators
(:mod:`featcache.partial`) train each epoch on one randomly chosen view per image.

The policy ``"mild-v1"`` (the default) is for medical images: a random resized crop keeping
80-100% of the area with an aspect ratio within 0.9-1.1, a rotation within +-10 degrees, and a
brightness and contrast jitter within +-10%. Horizontal flips are off by default, since
laterality matters in chest X-rays (the heart is on the left).

Importing this module does not import torch; applying a view does.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from ..exceptions import InvalidOptionError

__all__ = ["AugmentPolicy", "DEFAULT_POLICY"]


@dataclass(frozen=True)
class AugmentPolicy:
    """A named, seeded augmentation policy (part of the fingerprint of every view it makes).

    Parameters
    ----------
    name : str
        Names the policy's rule; change it whenever :meth:`apply` changes.
    scale : (float, float)
        Range of the fraction of the image area a random resized crop keeps.
    ratio : (float, float)
        Range of the crop's aspect ratio.
    degrees : float
        Rotations are drawn uniformly within ``[-degrees, degrees]``.
    brightness, contrast : float
        Multiplicative jitter factors are drawn within ``[1 - x, 1 + x]``.
    hflip : bool
        Whether half of the views are mirrored left-right (off: laterality matters).
    seed : int
        Seeds every view (with the image's content key and the view index).
    """

    name: str = "mild-v1"
    scale: tuple = (0.8, 1.0)
    ratio: tuple = (0.9, 1.1)
    degrees: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise InvalidOptionError(f"AugmentPolicy scale={self.scale!r}: expected 0 < low <= high <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise InvalidOptionError(f"AugmentPolicy ratio={self.ratio!r}: expected 0 < low <= high")
        if not (0 <= self.degrees <= 180 and 0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise InvalidOptionError("AugmentPolicy: expected 0 <= degrees <= 180 and 0 <= "
                                     "brightness, contrast < 1")

    def describe(self, view: int) -> dict:
        """What a cache namespace of view ``view`` records (and is fingerprinted by)."""
        d = dataclasses.asdict(self)
        d["scale"], d["ratio"] = list(self.scale), list(self.ratio)
        return {**d, "view": int(view)}

    def params(self, key: bytes, view: int, size: int) -> dict:
        """The random parameters of view ``view`` of the image with content ``key``."""
        digest = hashlib.blake2b(bytes(key) + int(view).to_bytes(4, "little") +
                                 int(self.seed).to_bytes(8, "little", signed=True),
                                 digest_size=16).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        area = rng.uniform(*self.scale) * size * size
        aspect = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1])))
        h = int(min(size, max(1, round(np.sqrt(area / aspect)))))
        w = int(min(size, max(1, round(np.sqrt(area * aspect)))))
        return {"top": int(rng.integers(0, size - h + 1)), "left": int(rng.integers(0, size - w + 1)),
                "height": h, "width": w, "angle": float(rng.uniform(-self.degrees, self.degrees)),
                "brightness": float(rng.uniform(1 - self.brightness, 1 + self.brightness)),
                "contrast": float(rng.uniform(1 - self.contrast, 1 + self.contrast)),
                "flip": bool(self.hflip and rng.random() < 0.5)}

    def apply(self, image, key: bytes, view: int):
        """View ``view`` of a model input ``(3, S, S)`` (uint8, or float in [0, 1]); same type."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        size = int(image.shape[-1])
        p = self.params(key, view, size)
        out = F.resized_crop(image, p["top"], p["left"], p["height"], p["width"], [size, size],
                             antialias=True)
        if p["angle"]:
            out = F.rotate(out, p["angle"], interpolation=InterpolationMode.BILINEAR)
        out = F.adjust_brightness(out, p["brightness"])
        out = F.adjust_contrast(out, p["contrast"])
        return F.horizontal_flip(out) if p["flip"] else out


#: The default policy (``augment_views=K`` uses it).
DEFAULT_POLICY = AugmentPolicy()


class AugmentView:
    """One view of a policy, as the engine applies it: ``view(image, key) -> image``."""

    def __init__(self, policy: AugmentPolicy, view: int):
        self.policy, self.view = policy, int(view)

    def __call__(self, image, key: bytes):
        return self.policy.apply(image, key, self.view)
