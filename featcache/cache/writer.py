"""ShardWriter: buffer rows in memory and commit them as immutable shards."""

from __future__ import annotations

import pathlib
import time
import warnings

import numpy as np

from ..exceptions import CacheError, CacheValueError
from ..log import get_logger
from . import shards
from .memo import as_keys, remember

_log = get_logger(__name__)


class ShardWriter:
    """Buffer rows in memory and commit them as immutable shards.

    A shard is committed when ``commit_rows`` rows (and failures) are buffered, when the oldest
    buffered row is ``commit_seconds`` old (checked on each ``add``), on :meth:`commit`,
    :meth:`close` and ``__exit__``. ``__exit__`` commits also while an exception (including
    KeyboardInterrupt) propagates, so finished rows are never lost; if that commit fails too,
    a warning says so and the original exception propagates.

    Parameters
    ----------
    namespace : Namespace
    commit_rows : int, default=4096
    commit_seconds : float, default=30.0
    dtype : {"float32", "float16"}, default="float32"
        Storage type (recorded in each shard); reads always return float32. float16 keeps
        about 3 significant digits (relative error <= 2**-11) and overflows above 65504.
    row_shape : tuple of int, optional
        The shape of one row before it was flattened (a ``(C, H, W)`` feature map), recorded
        in each shard; its product must be the feature width.
    """

    def __init__(self, namespace, *, commit_rows=4096, commit_seconds=30.0,
                 dtype="float32", row_shape=None):
        dtype = check_writer_options(dtype, commit_rows, commit_seconds)
        self.namespace, self.dtype = namespace, dtype
        self.row_shape = None if row_shape is None else tuple(int(n) for n in row_shape)
        self.commit_rows, self.commit_seconds = int(commit_rows), float(commit_seconds)
        self.shards: list = []
        self.rows_written = self.failures_written = 0
        self._dim, self._closed, self._error = None, False, None
        self._clear()

    def _clear(self) -> None:
        self._keys, self._feats, self._sources = [], [], []
        self._fk, self._fs, self._fr = [], [], []
        self._n, self._since = 0, None

    @property
    def pending(self) -> int:
        """Rows and failures buffered but not yet committed."""
        return self._n + len(self._fk)

    def add(self, keys, features, sources) -> None:
        """Buffer successful rows: ``keys`` (n x 16 bytes), ``features`` (n, d), ``sources`` (n).

        Sources (and failure sources and reasons) that are not valid UTF-8, such as file names
        with lone surrogates from ``os.fsdecode``, are stored with backslash escapes
        (:func:`featcache.files.safe_text`).
        """
        self._check_open()
        k = as_keys(keys)
        f = np.asarray(features)
        sources = [str(s) for s in sources]
        check_shape(k, f, sources)
        if self._dim is None:
            ns_dim = self.namespace.dim
            self._dim = ns_dim if ns_dim is not None else f.shape[1]
        check_rows(f, dim=self._dim, row_shape=self.row_shape, dtype=self.dtype,
                   fingerprint=self.namespace.fingerprint)
        if len(k):
            self._keys.append(k)
            self._feats.append(f.astype(np.float32, copy=True))
            self._sources.extend(sources)
            self._n += len(k)
            self._tick()

    def add_failure(self, key: bytes, source: str, reason: str) -> None:
        """Record that ``key`` (input ``source``) failed with ``reason``; it reads as NaN."""
        self._check_open()
        self._fk.append(as_keys([key]))
        self._fs.append(str(source))
        self._fr.append(str(reason))
        self._tick()

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError("this ShardWriter is closed; get a new one with namespace.writer()")

    def _tick(self) -> None:
        now = time.monotonic()
        self._since = self._since or now
        if self.pending >= self.commit_rows or now - self._since >= self.commit_seconds:
            self.commit()

    def commit(self) -> "pathlib.Path | None":
        """Write the buffered rows as one shard now; returns its path (None if nothing buffered).

        Raises
        ------
        CacheError
            When the write fails (e.g. disk full); the buffer is kept so a retry can succeed.
        """
        if not self.pending:
            return None
        dim = self._dim or 0
        keys = np.concatenate(self._keys) if self._keys else np.zeros((0, 16), np.uint8)
        feats = np.concatenate(self._feats) if self._feats else np.zeros((0, dim), np.float32)
        fk = np.concatenate(self._fk) if self._fk else np.zeros((0, 16), np.uint8)
        try:
            info = shards.write_shard(self.namespace.shards_dir, self.namespace.fingerprint,
                                       keys, feats, self._sources, fk, self._fs, self._fr,
                                       self.dtype, self.row_shape if len(keys) else None)
        except CacheError as exc:
            self._error = exc
            _log.warning("commit of %d rows and %d failures to %s failed: %s", len(keys),
                         len(fk), self.namespace.shards_dir, exc)
            raise
        _log.info("committed shard %s: %d rows, %d failures", info.path, info.rows, len(fk))
        remember(info)
        self.shards.append(info.path)
        self.rows_written += info.rows
        self.failures_written += len(fk)
        self._clear()
        return info.path

    def close(self) -> None:
        """Commit what is buffered and close the writer."""
        if not self._closed:
            self.commit()
            self._closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
            return False
        if exc is not None and exc is self._error:
            self._closed = True
            return False
        try:
            self.close()
        except Exception as err:  # keep the original exception; say what was lost
            warnings.warn(f"while handling {exc_type.__name__}, the last {self.pending} buffered "
                          f"rows could not be committed: {err}", RuntimeWarning, stacklevel=2)
        return False


def check_writer_options(dtype, commit_rows, commit_seconds) -> str:
    """The storage type name of ``dtype``, once ``dtype`` and the commit options are valid.

    Shared by every namespace backend's writer (the contract's ``writer`` keywords).

    Raises
    ------
    CacheValueError
        ``dtype`` is not float32/float16, ``commit_rows`` not an int >= 1 or
        ``commit_seconds`` not > 0.
    """
    try:
        dtype = np.dtype(dtype).name
    except TypeError:
        pass
    if dtype not in shards.DTYPES:
        raise CacheValueError(f"dtype={dtype!r}: expected 'float32' or 'float16'")
    if not isinstance(commit_rows, (int, np.integer)) or commit_rows < 1:
        raise CacheValueError(f"commit_rows={commit_rows!r}: expected an int >= 1")
    if not commit_seconds > 0:
        raise CacheValueError(f"commit_seconds={commit_seconds!r}: expected a number > 0")
    return dtype


def check_shape(keys: np.ndarray, features: np.ndarray, sources: list) -> None:
    """Refuse an ``add`` whose keys, (n, d) numeric features and sources do not line up."""
    if features.ndim != 2 or features.shape[0] != len(keys) or len(sources) != len(keys):
        raise CacheValueError(f"add() needs n keys, an (n, d) feature array and n sources; "
                              f"got {len(keys)} keys, features of shape {features.shape}, "
                              f"{len(sources)} sources")
    if not np.issubdtype(features.dtype, np.number):
        raise CacheValueError(f"features must be numeric, got dtype {features.dtype}")


def check_rows(features: np.ndarray, *, dim: int, row_shape, dtype: str, fingerprint: str) -> None:
    """Refuse (n, d) ``features`` of another width, row shape or beyond float16's range."""
    if features.shape[1] != dim:
        raise CacheValueError(f"features have {features.shape[1]} columns but namespace "
                              f"{fingerprint} holds {dim}-dim rows")
    if row_shape is not None and int(np.prod(row_shape)) != features.shape[1]:
        raise CacheValueError(f"features have {features.shape[1]} columns but this writer's row "
                              f"shape {tuple(row_shape)} holds {int(np.prod(row_shape))}")
    if dtype == "float16" and features.size and np.nanmax(np.abs(features)) > 65504:
        raise CacheValueError("features exceed the float16 range (|x| > 65504) and would be "
                              "stored as inf; use dtype='float32' for this backbone")
