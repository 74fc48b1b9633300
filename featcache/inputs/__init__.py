"""The input side: anything a user passes as ``X`` -> items -> content keys and decoded images.

- :mod:`~featcache.inputs.items`: :func:`as_items` normalises ``X`` (paths, arrays, PIL images,
  tensors, torch Datasets, dict rows) to one item per sample;
- :mod:`~featcache.inputs.keys`: :func:`content_key`, a 16-byte blake2b key of an input's
  content (moved files keep it, edited files lose it), and the file-key memo;
- :mod:`~featcache.inputs.decoding`: :func:`decode` turns one item into an ``(H, W, 3)`` array
  under a :class:`DecodePolicy`, size limits checked first (DICOM through
  :mod:`~featcache.inputs.dicom`, pixel arithmetic in :mod:`~featcache.inputs.pixels`);
- :mod:`~featcache.inputs.errors`: :func:`describe` names an input in messages, and what goes
  wrong with one becomes its :class:`~featcache.exceptions.InputError`;
- :mod:`~featcache.inputs.sources`: what batch jobs read (folders, manifests, ``.npz``);
- :mod:`~featcache.inputs.augment`: seeded augmentation views (view ``v`` of an image is a
  function of its content key, ``v`` and the policy's seed, so it can be cached).

Every bad input raises :class:`~featcache.exceptions.InputError` naming its index (and path),
what was expected and the fix. May import: the leaf modules (``exceptions``, ``options``) and
:mod:`featcache.cache.identity`; numpy and Pillow at import time, pydicom and torch only inside
functions (torch and pandas inputs are handled duck-typed). Never the engine, jobs or the CLI.
"""

from __future__ import annotations

from .augment import DEFAULT_POLICY, AugmentPolicy
from .decoding import (DECODER_VERSION, RESIZED_PIXELS_LIMIT, DecodePolicy, decode,
                       max_resized_pixels, resized_pixels)
from .errors import describe
from .items import IMAGE_FIELDS, as_items
from .keys import FILE_KEY_MEMO, content_key
from .sources import InputSet, collect_inputs

__all__ = ["DecodePolicy", "as_items", "content_key", "decode", "describe", "resized_pixels",
           "max_resized_pixels", "RESIZED_PIXELS_LIMIT", "DECODER_VERSION", "IMAGE_FIELDS",
           "FILE_KEY_MEMO", "InputSet", "collect_inputs", "AugmentPolicy", "DEFAULT_POLICY"]
