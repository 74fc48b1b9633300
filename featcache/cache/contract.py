"""The namespace contract: what every cache backend offers the code that reads and writes rows.

A *namespace* holds the rows of one backbone configuration (one fingerprint): content key ->
one float row, plus the failures recorded for keys that could not be computed. Two backends
implement it: :class:`~featcache.cache.Namespace` (HDF5 shards on disk) and
:class:`~featcache.cache.MemoryNamespace` (a dict, behind ``cache=False``). The unit of work
(``embed``: plan -> compute misses -> commit -> read), :class:`~featcache.FrozenBackbone` and
the partially frozen estimators' activation sets use a namespace only through
:class:`NamespaceContract` and its :class:`NamespaceWriter`, so either backend serves them.
One conformance suite (``tests/namespace_conformance.py``) runs against both.

Rules every backend keeps:

- **Keys** are 16-byte content keys: a sequence of ``bytes`` or an ``(n, 16)`` uint8 array
  (anything else raises :class:`~featcache.exceptions.CacheValueError`).
- **Rows** are read as float32 ``(n, dim)`` in the order of the keys asked for; a key asked for
  twice gets its row twice.
- **The first row of a key wins**: a later ``add`` of a key that has a row (in the same call,
  the same commit or a later one) is ignored, never an overwrite.
- **Failures** (``add_failure``) read as NaN rows, are listed by ``failures`` with their source
  and reason, and count as known: ``read(missing="raise")`` raises only for keys never seen. A
  key that has a row is not a failure, whenever the failure was recorded; the first failure
  recorded for a key wins. Text that is not valid UTF-8 is stored with backslash escapes.
- **Commits are atomic**: the rows and failures of one commit become visible together or not at
  all. What was added is visible no later than ``commit()``/``close()``/leaving the writer's
  ``with`` block (an in-memory backend may show it at once). Leaving the block on an exception
  (KeyboardInterrupt too) commits what was added before the exception propagates.
- **Storage**: rows are rounded to the namespace's storage type (``"float16"`` keeps about 3
  significant digits) and read back exactly as stored; values beyond float16's range are
  refused, never stored as inf.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["NamespaceContract", "NamespaceWriter"]


@runtime_checkable
class NamespaceWriter(Protocol):
    """Adds rows and failures to a namespace; a context manager (``with ns.writer() as w``).

    Obtained from :meth:`NamespaceContract.writer`. Rows are buffered at most until the
    writer's commit conditions (``commit_rows``, ``commit_seconds``), :meth:`commit`,
    :meth:`close` or the end of the ``with`` block.
    """

    def add(self, keys, features, sources) -> None:
        """Add successful rows.

        Parameters
        ----------
        keys : sequence of bytes or ndarray of shape (n, 16), dtype uint8
            Content keys.
        features : array-like of shape (n, d), numeric
            One row per key; ``d`` must be the namespace's :attr:`~NamespaceContract.dim` (the
            first rows of an empty namespace set it) and match its row shape.
        sources : sequence of str, length n
            What each row was computed from (a path or a description), recorded with the row.

        Raises
        ------
        CacheValueError
            Counts that do not line up, non-numeric features, another width or row shape,
            values beyond float16's range with float16 storage, or malformed keys.
        CacheError
            The writer is closed.
        """

    def add_failure(self, key: bytes, source: str, reason: str) -> None:
        """Record that ``key`` (computed from ``source``) failed with ``reason``; it reads NaN.

        Raises
        ------
        CacheError
            The writer is closed.
        """

    def commit(self):
        """Make what was added so far visible, atomically.

        Returns
        -------
        object or None
            What was committed (the disk backend: the new shard's path), or None when nothing
            was pending.

        Raises
        ------
        CacheError
            The commit failed (e.g. disk full); nothing of it is visible and what was added is
            kept for a retry.
        """

    def close(self) -> None:
        """Commit what is pending and close the writer (a closed writer refuses ``add``)."""

    def __enter__(self) -> "NamespaceWriter":
        """The writer itself."""

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Close the writer, committing what was added (also while an exception propagates).

        Returns False: an exception is never swallowed.
        """


@runtime_checkable
class NamespaceContract(Protocol):
    """The rows of one backbone configuration: what every namespace backend provides.

    Implemented by :class:`~featcache.cache.Namespace` (disk) and
    :class:`~featcache.cache.MemoryNamespace` (memory). Queries see every commit made before
    they start (the disk backend also sees other processes' commits).
    """

    #: The configuration fingerprint the rows belong to.
    fingerprint: str

    @property
    def config(self) -> dict:
        """The backbone configuration the namespace was created with ({} when none was given)."""

    @property
    def dim(self) -> "int | None":
        """Width of a row: from the rows held, else the configuration; None while neither."""

    @property
    def storage(self) -> str:
        """How new rows are stored: ``"float32"`` or ``"float16"`` (reads are always float32)."""

    @property
    def row_shape(self) -> "tuple | None":
        """The shape of one row before flattening (a ``(C, H, W)`` feature map), None for
        plain vectors; its product is :attr:`dim`."""

    def lookup(self, keys) -> np.ndarray:
        """Boolean mask in the order of ``keys``: True where a key has a successful row.

        Failed keys and keys never seen are False.
        """

    def failures(self, keys=None) -> dict:
        """``key (bytes) -> (source, reason)`` of recorded failures of keys without a row.

        Parameters
        ----------
        keys : sequence of keys, optional
            Only these keys (those without a recorded failure are left out); None: all.
        """

    def rows(self) -> int:
        """Number of distinct keys with a successful row."""

    def read(self, keys, *, missing: str = "raise") -> np.ndarray:
        """Float32 rows ``(n, dim)`` in the order of ``keys`` (duplicates repeat their row).

        Failed keys (a recorded failure, no row) give NaN rows. ``read([])`` has shape
        ``(0, dim)`` (``(0, 0)`` while :attr:`dim` is None). Reads never hold the namespace
        open, so a large set of keys can be read in chunks (streamed) by calling it repeatedly.

        Parameters
        ----------
        keys : sequence of bytes or ndarray of shape (n, 16), dtype uint8
        missing : {"raise", "nan"}, default="raise"
            Keys never seen (no row, no failure) raise :class:`~featcache.exceptions.
            CacheMissError` (a ``KeyError``; nothing is returned), or give NaN rows.

        Raises
        ------
        CacheMissError
            ``missing="raise"`` and some keys were never seen.
        CacheError
            NaN rows are due but :attr:`dim` is None (no rows and no configured width).
        CacheValueError
            ``missing`` is neither "raise" nor "nan", or malformed keys.
        """

    def to_numpy(self) -> tuple:
        """``(keys (n, 16) uint8, features (n, dim) float32)``: every key with a row, once.

        Rows appear in commit order (the first row of each key, as :meth:`read` serves it).
        """

    def writer(self, *, commit_rows: int = 4096, commit_seconds: float = 30.0,
               dtype: "str | None" = None) -> NamespaceWriter:
        """A :class:`NamespaceWriter` adding rows to this namespace.

        Parameters
        ----------
        commit_rows : int, default=4096
            Commit once this many rows and failures are pending.
        commit_seconds : float, default=30.0
            Commit once the oldest pending row is this old (checked on each ``add``).
        dtype : {"float32", "float16"}, optional
            Storage type of the rows it adds; default :attr:`storage`.

        Raises
        ------
        CacheValueError
            An invalid ``dtype``, ``commit_rows`` or ``commit_seconds``.
        """
