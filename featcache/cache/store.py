"""FeatureCache: a cache directory, its marker, namespaces, annotations and maintenance."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import threading

import numpy as np

from ..exceptions import CacheCorruptError, CacheError, CacheValueError
from . import annotations as _annotations
from . import files, maintenance
from .files import MARKER
from .shards import FORMAT_VERSION
from .keymemo import KeyMemo
from .namespace import FP_RE, Namespace

_KEY_MEMOS: dict = {}  # cache path -> KeyMemo, shared by every FeatureCache of this process
_KEY_MEMOS_LOCK = threading.Lock()




def default_cache_dir() -> pathlib.Path:
    """``$FEATCACHE_HOME`` if set, else the platform's user cache directory (platformdirs).

    That is ``~/.cache/featcache`` on Linux, ``~/Library/Caches/featcache`` on macOS and
    ``%LOCALAPPDATA%\\featcache\\featcache\\Cache`` on Windows.
    """
    env = os.environ.get("FEATCACHE_HOME")
    if env:
        return pathlib.Path(env).expanduser()
    import platformdirs

    return pathlib.Path(platformdirs.user_cache_dir("featcache"))


def resolve_cache(cache) -> "FeatureCache | None":
    """Turn the ``cache=`` parameter into a :class:`FeatureCache` (or None: caching disabled).

    ``"auto"`` (or True) -> :func:`default_cache_dir`; ``False``/``None`` -> None; a str or
    PathLike -> that directory; a FeatureCache -> itself.
    """
    if isinstance(cache, FeatureCache):
        return cache
    if cache is None or cache is False:
        return None
    if cache is True or (isinstance(cache, str) and cache == "auto"):
        return FeatureCache(default_cache_dir())
    if isinstance(cache, (str, os.PathLike)):
        return FeatureCache(cache)
    raise CacheValueError(f"cache={cache!r} ({type(cache).__name__}) is not accepted; use "
                          "'auto' (the default directory), a directory path, a FeatureCache, "
                          "or False/None to disable caching")


def _du(path: pathlib.Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class FeatureCache:
    """A cache directory of embeddings, one namespace per backbone fingerprint.

    Parameters
    ----------
    path : str or PathLike
        The cache directory.
    create : bool, default=True
        Create the directory and its ``featcache.json`` when absent (else CacheError).
    verify_on_load : bool, default=True
        Check each shard's checksum once per process when it enters the key index. False
        checks shapes only (faster first lookup on huge caches; used by ``featcache info``).
    """

    def __init__(self, path, *, create: bool = True, verify_on_load: bool = True):
        self.path = pathlib.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        self.verify_on_load = bool(verify_on_load)
        self._namespaces: dict = {}
        self._open(create)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r})"

    def _open(self, create: bool) -> None:
        """Check the marker, or create the cache (race-free) when ``create`` and it is new."""
        marker = self.path / MARKER
        if self.path.exists() and not self.path.is_dir():
            raise CacheError(f"cache path {self.path} is a file, not a directory; pass a directory")
        data = self._read_marker(marker)
        if data is None and not create:
            raise CacheError(f"{self.path} is not a featcache cache (no {MARKER}); check the "
                             "path, or create one with FeatureCache(path)")
        if data is None and self._has_entries():
            # Another thread or process may have created the cache since the marker was read:
            # the marker is always written before anything else appears, so read it again.
            data = self._read_marker(marker)
            if data is None:
                raise CacheError(f"{self.path} is not empty and has no {MARKER}, so it is not a "
                                 "featcache cache directory; use a new or empty directory")
        if data is None:
            data = self._create_marker(marker)
        self._check_marker(marker, data)

    def _has_entries(self) -> bool:
        """True when the directory holds anything but dot-files (temporary files are hidden)."""
        try:
            return any(not n.startswith(".") for n in os.listdir(self.path))
        except (FileNotFoundError, NotADirectoryError):
            return False

    @staticmethod
    def _read_marker(marker: pathlib.Path) -> "bytes | None":
        """The marker's bytes, or None when it does not exist."""
        try:
            return marker.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read {marker}: {exc}; check its permissions") from exc

    def _create_marker(self, marker: pathlib.Path) -> bytes:
        """Create the directory and its marker; returns the marker that won (maybe another's)."""
        body = {"format_version": FORMAT_VERSION, "created": files.now_iso()}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            files.publish_once(marker, (json.dumps(body, indent=2) + "\n").encode())
        except OSError as exc:
            raise files.write_error(exc, self.path, what=MARKER) from exc
        data = self._read_marker(marker)
        if data is None:
            raise CacheError(f"{marker} vanished right after it was created; is another program "
                             f"deleting files in {self.path}?")
        return data

    def key_memo(self):
        """The :class:`~featcache.cache.keymemo.KeyMemo` of this cache (one per process)."""
        with _KEY_MEMOS_LOCK:
            memo = _KEY_MEMOS.get(self.path)
            if memo is None:
                memo = _KEY_MEMOS[self.path] = KeyMemo(self.path)
            return memo

    def check_marker(self) -> None:
        """Re-read ``featcache.json`` and check it (CacheError / CacheCorruptError if not)."""
        marker = self.path / MARKER
        data = self._read_marker(marker)
        if data is None:
            raise CacheError(f"{marker} is missing; restore it as "
                             f'{{"format_version": {FORMAT_VERSION}}}')
        self._check_marker(marker, data)

    @staticmethod
    def _check_marker(marker, data) -> None:
        """Check the marker's content (bytes or str): UTF-8 JSON with our format_version."""
        try:
            text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
            version = json.loads(text)["format_version"]
        except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
            raise CacheCorruptError(f"{marker} is damaged ({type(exc).__name__}: {exc}); "
                                    "expected UTF-8 JSON with a format_version. Restore it as "
                                    f'{{"format_version": {FORMAT_VERSION}}}') from exc
        if version != FORMAT_VERSION:
            raise CacheError(f"{marker} has format_version {version!r} but this featcache reads "
                             f"version {FORMAT_VERSION}; use a matching featcache version or "
                             "another cache directory")

    # -- namespaces ------------------------------------------------------------------
    def namespaces(self) -> list:
        """Fingerprints present (directories holding a config.json or shards)."""
        out = []
        with os.scandir(self.path) as it:
            for e in it:
                if e.is_dir() and FP_RE.match(e.name) and (
                        os.path.exists(os.path.join(e.path, "config.json"))
                        or os.path.isdir(os.path.join(e.path, "shards"))):
                    out.append(e.name)
        return sorted(out)

    def namespace(self, fingerprint: str, config: dict | None = None) -> Namespace:
        """The namespace of ``fingerprint``; writes ``config.json`` when given and absent."""
        ns = self._namespaces.get(fingerprint)
        if ns is None:
            ns = self._namespaces[fingerprint] = Namespace(self, fingerprint)
        if config is not None and not (ns.path / "config.json").exists():
            try:
                text = json.dumps(config, indent=2, sort_keys=True) + "\n"
            except (TypeError, ValueError) as exc:
                raise CacheValueError(f"the config of namespace {fingerprint} must be "
                                      f"JSON-serialisable: {exc}") from exc
            try:
                ns.path.mkdir(parents=True, exist_ok=True)
                files.publish_once(ns.path / "config.json", text.encode())
            except OSError as exc:
                raise files.write_error(exc, ns.path, what="config.json") from exc
        return ns

    def _ns(self, namespace) -> Namespace:
        if isinstance(namespace, Namespace):
            return namespace
        if namespace is None:
            names = self.namespaces()
            if len(names) != 1:
                raise CacheValueError(f"cache {self.path} holds {len(names)} namespaces "
                                      f"({', '.join(names) or 'none'}); name one")
            namespace = names[0]
        return self.namespace(namespace)

    def info(self) -> list:
        """Per namespace: fingerprint, config, dim, rows, failures, shards, bytes, created."""
        out = []
        for fp in self.namespaces():
            ns = self.namespace(fp)
            idx = ns.settled_index()
            created = min((s.created for s in idx.shards), default=None)
            if created is None and (ns.path / "config.json").exists():
                mtime = (ns.path / "config.json").stat().st_mtime
                created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat(
                    timespec="seconds")
            out.append({"fingerprint": fp, "config": ns.config, "dim": ns.dim,
                        "rows": len(idx.keys), "failures": len(idx.failures()),
                        "shards": len(idx.listing), "bad_shards": len(idx.bad),
                        "bytes": _du(ns.path), "created": created, "path": str(ns.path)})
        return out

    def lookup(self, keys, namespace) -> np.ndarray:
        """Boolean mask of keys with a successful row in ``namespace``."""
        return self._ns(namespace).lookup(keys)

    def read(self, keys, namespace, *, missing: str = "raise") -> np.ndarray:
        """Float32 rows of ``keys`` in order (see :meth:`Namespace.read`)."""
        return self._ns(namespace).read(keys, missing=missing)

    def to_numpy(self, namespace=None) -> tuple:
        """``(keys (n, 16) uint8, features (n, d) float32)`` of every row of a namespace."""
        return self._ns(namespace).to_numpy()

    # -- annotations -----------------------------------------------------------------
    def annotate(self, keys, *, label=None, group=None, split=None, source=None,
                 dataset=None) -> pathlib.Path:
        """Record labels, groups (patients), splits and sources of inputs: one record each.

        Stored once per cache directory (see :mod:`featcache.cache.annotations`), so every
        namespace and ``featcache probe`` can use them without the original manifest. Text
        that is not valid UTF-8 is stored with backslash escapes. ``dataset`` (one str for
        all ``keys``) tags these records as one dataset's (``featcache extract --dataset``).
        """
        try:
            return _annotations.write_annotations(self.path, keys, label=label, group=group,
                                                  split=split, source=source, dataset=dataset)
        except OSError as exc:
            raise files.write_error(exc, self.path, what="annotations") from exc

    def annotations(self, keys=None, *, dataset=None) -> dict:
        """``key -> {"label", "group", "split", "source", "dataset"}`` recorded by :meth:`annotate`.

        The newest record of each key (:meth:`records` has one per input). With ``dataset``,
        only that dataset's records: exactly the keys tagged with it.
        """
        return _annotations.read_annotations(self.path, keys, dataset=dataset)

    def records(self, keys=None, *, dataset=None) -> list:
        """Every input record, ``{"key", "label", "group", "split", "source", "dataset"}``.

        One per input, not per content: byte-identical inputs are several records sharing
        one key (one row). With ``keys`` / ``dataset``, only those keys' / that dataset's
        records (see :func:`featcache.cache.annotations.read_records`).
        """
        return _annotations.read_records(self.path, keys, dataset=dataset)

    # -- maintenance (implemented in featcache.cache.maintenance) ----------------------------
    def verify(self) -> maintenance.VerifyReport:
        """Re-read every shard: open, attributes, shapes, checksum, one dim per namespace.

        The marker ``featcache.json`` and the annotations files are checked too.
        """
        return maintenance.verify_cache(self)

    def compact(self, namespace=None, *, min_shards: int = 2,
                stale_tmp_seconds: float = 900.0) -> dict:
        """Merge each namespace's shards into one new shard, then delete the merged ones.

        Keys are deduplicated (first shard wins), failures that later succeeded are dropped,
        damaged shards are left alone (see :meth:`verify`), temporary files older than
        ``stale_tmp_seconds`` are removed and ``index.h5`` is rebuilt. Shards committed by
        concurrent writers meanwhile are kept. The key memo (``keys/``) is merged too, and its
        entries whose file no longer has that identity (edited, replaced, deleted) dropped:
        ``key_entries_before``, ``key_entries_after``, ``key_entries_pruned``. Returns counts
        per namespace and in total.
        """
        targets = [self._ns(namespace)] if namespace is not None else \
            [self.namespace(fp) for fp in self.namespaces()]
        per = [maintenance.compact_namespace(ns, min_shards, stale_tmp_seconds) for ns in targets]
        total = {k: sum(p[k] for p in per) for k in
                 ("shards_before", "shards_after", "rows", "duplicates_removed", "tmp_removed",
                  "corrupt_skipped")}
        memo = maintenance.compact_key_memo(self.path, stale_tmp_seconds)
        return {**total, **memo, "namespaces": per}

    def build_index(self, namespace=None) -> pathlib.Path:
        """(Re)build ``<fingerprint>/index.h5``: virtual ``features``/``keys`` over all shards."""
        return maintenance.build_index(self._ns(namespace))

    def export(self, out_path, namespace=None, *, dataset=None) -> pathlib.Path:
        """Write one namespace to a plain ``.h5`` (or ``.npz``) file, readable with h5py alone.

        The .h5 holds datasets ``features``, ``keys``, ``sources``, ``labels``, ``groups``,
        ``splits`` (annotations; ``""`` where none) and a ``failures`` group (keys, sources,
        reasons), with attrs ``config`` (JSON), ``fingerprint`` and ``dataset``. The .npz holds
        the same arrays (``failure_keys, failure_sources, failure_reasons`` for the failures).
        The file is written atomically. With ``dataset``, only the rows tagged with that
        dataset, and its annotations; without, every row, with a
        :class:`~featcache.exceptions.MixedDatasetsWarning` when the rows belong to several
        datasets (see :mod:`featcache.cache.export`).

        Raises
        ------
        CacheValueError
            When ``out_path`` lies inside the cache directory (it could overwrite the cache's
            own files), is a directory, or does not end in ``.h5``, ``.hdf5`` or ``.npz``.
        """
        return maintenance.export_namespace(self._ns(namespace), out_path, dataset=dataset)
