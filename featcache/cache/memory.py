"""MemoryNamespace: the in-memory cache backend behind ``cache=False``.

It keeps rows in a dict for the life of one call and implements the namespace contract
(:class:`~featcache.cache.contract.NamespaceContract`) as :class:`~featcache.cache.Namespace`
does: the first row of a key wins, failed keys read as NaN, keys never seen raise
:class:`~featcache.exceptions.CacheMissError` (or give NaN rows with ``missing="nan"``), and
its writer refuses what a :class:`~featcache.cache.ShardWriter` refuses. Unlike the disk, rows
are visible as soon as they are added (there is nothing to commit).
"""

from __future__ import annotations

import numpy as np

from ..exceptions import CacheError, CacheMissError, CacheValueError
from .files import safe_text
from .memo import as_keys
from .writer import check_rows, check_shape, check_writer_options

__all__ = ["MemoryNamespace"]


class MemoryNamespace:
    """A namespace held in memory (nothing touches the disk).

    Parameters
    ----------
    fingerprint : str
        The configuration fingerprint the rows belong to.
    dim : int or None
        Feature dimension; else ``config["dim"]``; else taken from the first rows.
    storage : {"float32", "float16"}, optional
        Rows are rounded to this type as they are added, so they read back exactly as from a
        disk namespace of the same storage. Default ``config["storage"]``, else float32.
    row_shape : tuple of int, optional
        The shape of one row before flattening (see ``Namespace.row_shape``); default
        ``config["row_shape"]``.
    config : dict, optional
        The backbone configuration, as a disk namespace's ``config.json`` holds it
        (:attr:`config`); a copy is kept.
    """

    def __init__(self, fingerprint: str = "memory", dim: int | None = None, *,
                 storage: str | None = None, row_shape: tuple | None = None,
                 config: dict | None = None):
        self._config = dict(config or {})
        if dim is None and isinstance(self._config.get("dim"), int):
            dim = self._config["dim"]
        storage = self._config.get("storage", "float32") if storage is None else storage
        if storage not in ("float32", "float16"):
            raise CacheValueError(f"storage={storage!r}: expected 'float32' or 'float16'")
        row_shape = self._config.get("row_shape") if row_shape is None else row_shape
        self.fingerprint, self._dim = fingerprint, dim
        self.storage = storage
        self.row_shape = None if row_shape is None else tuple(int(n) for n in row_shape)
        self._rows: dict = {}
        self._failed: dict = {}

    def __repr__(self) -> str:
        return f"MemoryNamespace({self.fingerprint!r}, rows={len(self._rows)})"

    @property
    def config(self) -> dict:
        """The configuration given when it was created ({} when none was)."""
        return dict(self._config)

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

    def writer(self, *, commit_rows: int = 4096, commit_seconds: float = 30.0,
               dtype: str | None = None) -> "_MemoryWriter":
        """A writer (context manager) adding rows to this namespace.

        The commit options are checked as the disk's are, then ignored (rows are visible at
        once); ``dtype`` (default :attr:`storage`) is the type rows are rounded to.
        """
        dtype = check_writer_options(self.storage if dtype is None else dtype, commit_rows,
                                     commit_seconds)
        return _MemoryWriter(self, dtype)

    def _store(self, keys, features, sources, dtype: str) -> None:
        f = np.asarray(features)
        check_shape(keys, f, [str(s) for s in sources])
        dim = self._dim if self._dim is not None else f.shape[1]
        check_rows(f, dim=dim, row_shape=self.row_shape, dtype=dtype,
                   fingerprint=self.fingerprint)
        if not len(keys):
            return
        self._dim = dim
        f = f.astype(np.float32)
        if dtype == "float16":
            f = f.astype(np.float16).astype(np.float32)
        for key, row in zip(keys, f):
            self._rows.setdefault(key.tobytes(), row.copy())

    def _fail(self, key, source, reason) -> None:
        self._failed.setdefault(as_keys([key])[0].tobytes(), (safe_text(source),
                                                               safe_text(reason)))


class _MemoryWriter:
    """The :class:`~featcache.cache.ShardWriter` counterpart of :class:`MemoryNamespace`."""

    def __init__(self, namespace: MemoryNamespace, dtype: str = "float32"):
        self.namespace, self.dtype = namespace, dtype
        self._closed = False

    def add(self, keys, features, sources) -> None:
        self._check_open()
        self.namespace._store(as_keys(keys), features, list(sources), self.dtype)

    def add_failure(self, key: bytes, source: str, reason: str) -> None:
        self._check_open()
        self.namespace._fail(key, source, reason)

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError("this writer is closed; get a new one with namespace.writer()")

    def commit(self):
        """Nothing is ever pending: returns None."""
        return None

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "_MemoryWriter":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
