"""Anything a user passes as ``X`` -> items -> content keys and decoded images.

The one import point for the input side; each job lives in its own module:

- :func:`as_items` (:mod:`featcache.items`) normalises ``X`` to one item per sample;
- :func:`content_key` (:mod:`featcache.keys`) gives each a 16-byte blake2b key of its content
  (moved files keep it, edited files lose it);
- :func:`decode` (:mod:`featcache.decoding`) turns one into an ``(H, W, 3)`` array under a
  :class:`DecodePolicy` (DICOM through :mod:`featcache.dicom`, pixel arithmetic in
  :mod:`featcache.pixels`);
- :func:`describe` (:mod:`featcache.input_errors`) names an input in messages.

Every bad input raises :class:`~featcache.exceptions.InputError` naming its index (and path),
what was expected and the fix. torch and pandas are handled duck-typed, never imported.
"""

from __future__ import annotations

from .decoding import (DECODER_VERSION, RESIZED_PIXELS_LIMIT, DecodePolicy, decode,
                       max_resized_pixels, resized_pixels)
from .input_errors import describe
from .items import IMAGE_FIELDS, as_items
from .keys import FILE_KEY_MEMO, content_key

# The process memo of file keys under its former name (tests clear it to act as a new process).
_KEY_MEMO = FILE_KEY_MEMO

__all__ = ["DecodePolicy", "as_items", "content_key", "decode", "describe", "resized_pixels",
           "max_resized_pixels", "RESIZED_PIXELS_LIMIT", "DECODER_VERSION", "IMAGE_FIELDS",
           "FILE_KEY_MEMO"]
