"""MemoryNamespace: the in-memory cache backend behind ``cache=False``.

It keeps rows in a dict for the life of one call and offers the part of
:class:`~featcache.cache.Namespace`'s interface that the unit of work uses (``lookup``,
``failures``, ``read``, ``rows``, ``to_numpy``, ``writer``), with the same semantics: the first
row of a key wins, failed keys read as NaN, and keys never seen raise
:class:`~featcache.exceptions.CacheMissError` (or give NaN rows with ``missing="nan"``).
"""

from __future__ import annotations

import numpy as np

from ..exceptions import CacheError, CacheMissError, CacheValueError
from .memo import as_keys

__all__ = ["MemoryNamespace"]


class MemoryNamespace:
    """A namespace held in memory (nothing touches the disk).

    Parameters
    ----------
    fingerprint : str
        The configuration fingerprint the rows belong to.
    dim : int or None
        Feature dimension; taken from the first rows when None.
    storage : {"float32", "float16"}, default="float32"
        Rows are rounded to this type as they are added, so they read back exactly as from a
        disk namespace of the same storage.
    row_shape : tuple of int, optional
        The shape of one row before flattening (see ``Namespace.row_shape``).
    """

    def __init__(self, fingerprint: str = "memory", dim: int | None = None, *,
                 storage: str = "float32", row_shape: tuple | None = None):
        if storage not in ("float32", "float16"):
            raise CacheValueError(f"storage={storage!r}: expected 'float32' or 'float16'")
        self.fingerprint, self._dim = fingerprint, dim
        self.storage = storage
        self.row_shape = None if row_shape is None else tuple(int(n) for n in row_shape)
        self._rows: dict = {}
        self._failed: dict = {}

    def __repr__(self) -> str:
        return f"MemoryNamespace({self.fingerprint!r}, rows={len(self._rows)})"

    @property
    def dim(self) -> int | None:
        """Feature dimension (None while no rows and no ``dim`` were given)."""
        return self._dim

    def lookup(self, keys) -> np.ndarray:
        """Boolean mask: True where a key has a successful row."""
        return np.array([k.tobytes() in self._rows for k in as_keys(keys)], dtype=bool)

    def failures(self, keys=None) -> dict:
        """``key -> (source, reason)`` of recorded failures, except keys that have a row."""
        fails = {k: v for k, v in self._failed.items() if k not in self._rows}
        if keys is None:
            return fails
        wanted = (k.tobytes() for k in as_keys(keys))
        return {k: fails[k] for k in wanted if k in fails}

    def rows(self) -> int:
        """Number of distinct keys with a successful row."""
        return len(self._rows)

    def read(self, keys, *, missing: str = "raise") -> np.ndarray:
        """Float32 ``(n, dim)`` rows in the order of ``keys`` (see ``Namespace.read``)."""
        if missing not in ("raise", "nan"):
            raise CacheValueError(f"missing={missing!r}: expected 'raise' or 'nan'")
        wanted = [k.tobytes() for k in as_keys(keys)]
        absent = [k for k in wanted if k not in self._rows and k not in self._failed]
        if absent and missing == "raise":
            raise CacheMissError(f"{len(absent)} of {len(wanted)} keys are not in the in-memory "
                                 f"namespace {self.fingerprint}; first missing key "
                                 f"{absent[0].hex()}. Compute them first, or pass missing='nan'.")
        if self._dim is None:
            if wanted:
                raise CacheError("the in-memory namespace holds no rows yet, so the width of "
                                 "the NaN rows is unknown; add rows first")
            return np.empty((0, 0), dtype=np.float32)
        out = np.full((len(wanted), self._dim), np.nan, dtype=np.float32)
        for i, key in enumerate(wanted):
            row = self._rows.get(key)
            if row is not None:
                out[i] = row
        return out

    def to_numpy(self) -> tuple:
        """``(keys (n, 16) uint8, features (n, dim) float32)`` of every row, in insertion order."""
        keys = np.frombuffer(b"".join(self._rows), dtype=np.uint8).reshape(-1, 16)
        feats = (np.stack(list(self._rows.values())) if self._rows
                 else np.zeros((0, self._dim or 0), np.float32))
        return keys, feats

    def writer(self, **_ignored) -> "_MemoryWriter":
        """A writer (context manager) adding rows to this namespace; commit options are ignored."""
        return _MemoryWriter(self)

    def _store(self, keys, features) -> None:
        f = np.asarray(features, dtype=np.float32)
        if f.ndim != 2 or len(f) != len(keys):
            raise CacheValueError(f"add() needs n keys and an (n, d) feature array; got "
                                  f"{len(keys)} keys and features of shape {f.shape}")
        if self._dim is None:
            self._dim = f.shape[1]
        if f.shape[1] != self._dim:
            raise CacheValueError(f"features have {f.shape[1]} columns but namespace "
                                  f"{self.fingerprint} holds {self._dim}-dim rows")
        if self.storage == "float16":
            if f.size and np.nanmax(np.abs(f)) > 65504:
                raise CacheValueError("features exceed the float16 range (|x| > 65504) and would "
                                      "be stored as inf; use float32 storage for this backbone")
            f = f.astype(np.float16).astype(np.float32)
        for key, row in zip(keys, f):
            self._rows.setdefault(key.tobytes(), row.copy())

    def _fail(self, key, source, reason) -> None:
        self._failed.setdefault(as_keys([key])[0].tobytes(), (str(source), str(reason)))


class _MemoryWriter:
    """The :class:`~featcache.cache.ShardWriter` counterpart of :class:`MemoryNamespace`."""

    def __init__(self, namespace: MemoryNamespace):
        self.namespace = namespace

    def add(self, keys, features, sources) -> None:
        self.namespace._store(as_keys(keys), features)

    def add_failure(self, key: bytes, source: str, reason: str) -> None:
        self.namespace._fail(key, source, reason)

    def commit(self):
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> "_MemoryWriter":
        return self

    def __exit__(self, *exc) -> bool:
        return False
