"""FeatureCache: the HDF5 shard store of embeddings (h5py + numpy only; never imports torch).

Layout of a cache directory::

    CACHE_DIR/featcache.json                     {"format_version": 1, "created": ...}
    CACHE_DIR/<fingerprint>/config.json          the backbone configuration (human-readable)
    CACHE_DIR/<fingerprint>/shards/<seq>-<uuid>.h5   immutable shards (see featcache._shards)
    CACHE_DIR/<fingerprint>/index.h5             virtual datasets over the shards (by compact)

Nothing is modified in place: each shard is written to a temporary name, fsync'ed and renamed
into place, so a shard exists completely or not at all, readers never block and any number of
writer processes can add shards at once. A killed writer loses at most its uncommitted rows.

Integrity policy
----------------
A shard's checksum (blake2b over keys, features and failure keys) is checked once per process,
when the shard first enters a key index (its keys and features are read once then; the shards
a process writes itself are known good). Later reads trust it. A shard that cannot be opened,
has wrong shapes or a wrong checksum is **never served**: it is skipped with a
:class:`CorruptShardWarning` naming it (its rows count as missing and are recomputed by the
next extraction), and ``featcache verify DIR`` lists it. Files changed in place while a
process runs are not noticed until :func:`clear_memo` (featcache itself never does that).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import re
import threading
import time
import warnings

import numpy as np

from . import _shards
from .exceptions import CacheCorruptError, CacheError

__all__ = ["FeatureCache", "Namespace", "ShardWriter", "VerifyReport", "default_cache_dir",
           "resolve_cache", "clear_memo", "CacheMissError", "CacheValueError",
           "CorruptShardWarning", "FORMAT_VERSION"]

FORMAT_VERSION = 1
MARKER = "featcache.json"
_RETRIES = 10  # attempts of a read that keeps meeting shards removed by a concurrent compact
_FP_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class CacheMissError(CacheError, KeyError):
    """Keys asked for that the cache does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CacheValueError(CacheError, ValueError):
    """An argument that is not a valid cache, namespace or key."""


class CorruptShardWarning(UserWarning):
    """A shard was skipped because it is damaged; run ``featcache verify``."""


def default_cache_dir() -> pathlib.Path:
    """``$FEATCACHE_HOME`` if set, else the platform user cache dir (``~/.cache/featcache``)."""
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


@dataclasses.dataclass
class VerifyReport:
    """Result of :meth:`FeatureCache.verify`; true when no problem was found."""

    ok: bool
    problems: list
    shards_checked: int
    notes: list = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


# ---------------------------------------------------------------- process-wide memo
_LOCK = threading.RLock()
_MEMO: dict = {}     # str(path) -> ShardInfo
_BAD: dict = {}      # str(path) -> (stat_key, message)
_INDEXES: dict = {}  # (str(namespace dir), checksum) -> KeyIndex
_WARNED: set = set()  # damaged shards already warned about (once per process)
_NS_LOCKS: dict = {}  # namespace key -> lock serialising its index refreshes


def clear_memo() -> None:
    """Forget memoised shard metadata and key indices (re-reads and re-verifies shards)."""
    with _LOCK:
        _MEMO.clear()
        _BAD.clear()
        _INDEXES.clear()
        _WARNED.clear()


def _load(path: pathlib.Path, fingerprint: str, checksum: bool):
    """Memoised :func:`_shards.load_shard`: a ShardInfo, or the error message of a bad shard."""
    key, p = _shards.stat_key(path), str(path)
    with _LOCK:
        info, bad = _MEMO.get(p), _BAD.get(p)
    if info is not None and info.stat_key == key and (info.checksum_ok or not checksum):
        return info
    if bad is not None and bad[0] == key:
        return bad[1]
    try:
        info = _shards.load_shard(path, fingerprint, check_checksum=checksum)
    except CacheCorruptError as exc:
        with _LOCK:
            _BAD[p] = (key, str(exc))
        return str(exc)
    _remember(info)
    return info


def _remember(info) -> None:
    with _LOCK:
        _MEMO[str(info.path)] = info
        _BAD.pop(str(info.path), None)


def _as_keys(keys) -> np.ndarray:
    """Keys (sequence of 16-byte bytes, or an (n, 16) uint8 array) -> (n, 16) uint8."""
    if isinstance(keys, np.ndarray) and keys.dtype == np.uint8 and keys.ndim == 2:
        if keys.shape[1] != 16:
            raise CacheValueError(f"a key array must have shape (n, 16), got {keys.shape}")
        return np.ascontiguousarray(keys)
    if isinstance(keys, (bytes, bytearray, str)):
        raise CacheValueError("keys must be a sequence of 16-byte keys, got a single "
                              f"{type(keys).__name__}; wrap it in a list")
    keys = list(keys)
    try:
        lengths = set(map(len, keys))
        joined = b"".join(keys)
    except TypeError:
        bad = next(k for k in keys if not isinstance(k, (bytes, bytearray, memoryview)))
        raise CacheValueError(f"keys must be bytes (16-byte content keys), got {bad!r}") from None
    if lengths - {16}:
        raise CacheValueError(f"keys must be 16 bytes long (blake2b-128 content keys), got "
                              f"lengths {sorted(lengths - {16})}")
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, 16)


def _mark_bad(path, message: str) -> None:
    try:
        key = _shards.stat_key(path)
    except OSError:
        return
    with _LOCK:
        _MEMO.pop(str(path), None)
        _BAD[str(path)] = (key, message)


def _ns_lock(key) -> threading.RLock:
    with _LOCK:
        return _NS_LOCKS.setdefault(key, threading.RLock())


def _check_fingerprint(fingerprint) -> None:
    if not isinstance(fingerprint, str) or not _FP_RE.match(fingerprint):
        raise CacheValueError(f"namespace {fingerprint!r} is not a valid fingerprint: expected a "
                              "string of letters, digits, '.', '_' or '-' (as produced by "
                              "featcache.backbones.fingerprint)")


def _du(path: pathlib.Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class Namespace:
    """One fingerprint's directory: its configuration, shards and key index.

    Obtain it with :meth:`FeatureCache.namespace`. Methods re-list the shard directory on each
    call, so rows committed by other processes show up; an index of keys (never features) is
    memoised per process.
    """

    def __init__(self, cache: "FeatureCache", fingerprint: str):
        _check_fingerprint(fingerprint)
        self.cache = cache
        self.fingerprint = fingerprint
        self.path = cache.path / fingerprint
        self.shards_dir = self.path / "shards"

    def __repr__(self) -> str:
        return f"Namespace({self.fingerprint!r}, path={str(self.path)!r})"

    @property
    def config(self) -> dict:
        """The configuration stored in ``config.json`` ({} when absent)."""
        p = self.path / "config.json"
        try:
            config = json.loads(p.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:  # also UnicodeDecodeError: not UTF-8
            raise CacheCorruptError(f"{p} is not valid UTF-8 JSON ({exc}); restore it, or delete "
                                    f"the namespace directory {self.path} to recompute it") from exc
        if not isinstance(config, dict):
            raise CacheCorruptError(f"{p} holds a JSON {type(config).__name__}, expected an "
                                    f"object; restore it, or delete the namespace directory "
                                    f"{self.path} to recompute it")
        return config

    # -- key index -------------------------------------------------------------------
    def _index(self, force: bool = False) -> _shards.KeyIndex:
        key = (str(self.path), self.cache.verify_on_load)
        with _ns_lock(key):
            names = tuple(_shards.list_shards(self.shards_dir))
            idx = _INDEXES.get(key)
            if idx is not None and not force and idx.listing == names:
                return idx
            gone = set(idx.listing) - set(names) if idx is not None else ()
            if idx is None or force or gone:
                with _LOCK:  # forget removed shards (e.g. merged by compact)
                    for name in gone:
                        _MEMO.pop(str(self.shards_dir / name), None)
                idx = _shards.KeyIndex()
            else:
                idx = idx.copy()
            known, listing, good = set(idx.listing), [], []
            for name in names:
                if name not in known:
                    info = self._load_one(name, idx, good)
                    if info is None:
                        continue
                listing.append(name)
            idx.add(good)
            idx.listing = tuple(listing)
            _INDEXES[key] = idx
            return idx

    def _load_one(self, name, idx, good):
        """Load one new shard into ``good`` (or idx.bad, with a warning); None if it vanished."""
        path = self.shards_dir / name
        try:
            info = _load(path, self.fingerprint, self.cache.verify_on_load)
        except FileNotFoundError:
            return None
        dim = idx.dim if idx.dim is not None else next((g.dim for g in good if g.rows), None)
        if not isinstance(info, str) and info.rows and dim is not None and info.dim != dim:
            info = f"shard {path}: features have dim {info.dim}, the namespace's other shards {dim}"
        if isinstance(info, str):
            idx.bad[name] = info
            with _LOCK:
                seen = str(path) in _WARNED
                _WARNED.add(str(path))
            if not seen:
                warnings.warn(f"{info}. The shard is skipped (its rows count as missing and are "
                              f"recomputed); run `featcache verify {self.cache.path}` and delete "
                              "the damaged file.", CorruptShardWarning, stacklevel=4)
        else:
            good.append(info)
        return info

    def _retry(self, fn):
        """Run fn(index), refreshing when a shard vanished (a concurrent compact) or failed.

        Retries back off (about 1 s in all), so that a compaction removing many shards on a
        busy machine finishes between two attempts instead of outlasting all of them.
        """
        for attempt in range(_RETRIES):
            if attempt > 1:
                time.sleep(min(0.002 * 2 ** attempt, 0.25))
            idx = self._index(force=attempt > 0)
            try:
                return fn(idx)
            except _shards.ShardGone as gone:
                if not isinstance(gone.cause, FileNotFoundError):
                    with _LOCK:  # re-verify that shard: it is skipped if it is damaged
                        _MEMO.pop(str(gone.path), None)
                last = gone
        raise CacheError(f"could not read namespace {self.path}: {last}; shards kept changing "
                         "(is a compact running?); retry")

    # -- queries ---------------------------------------------------------------------
    def lookup(self, keys) -> np.ndarray:
        """Boolean mask: True where a key has a successful row."""
        q = _shards.v16(_as_keys(keys))
        return self._index().locate(q)[0]

    def failures(self, keys=None) -> dict:
        """``key -> (source, reason)`` of recorded failures, except keys that have a row."""
        fails = self._index().failures()
        if keys is None:
            return dict(fails)
        wanted = (k.tobytes() for k in _as_keys(keys))
        return {k: fails[k] for k in wanted if k in fails}

    def rows(self) -> int:
        """Number of distinct keys with a successful row."""
        return len(self._index().keys)

    @property
    def dim(self) -> int | None:
        """Feature dimension (None while the namespace holds no rows and no config dim)."""
        dim = self._index().dim
        if dim is None:
            cfg = self.config.get("dim") if (self.path / "config.json").exists() else None
            dim = cfg if isinstance(cfg, int) else None
        return dim

    def read(self, keys, *, missing: str = "raise") -> np.ndarray:
        """Float32 ``(n, dim)`` rows in the order of ``keys``.

        Failed keys (recorded by ``add_failure``, no successful row) give NaN rows. Keys never
        seen raise :class:`CacheMissError` (``missing="raise"``) or give NaN rows
        (``missing="nan"``).
        """
        if missing not in ("raise", "nan"):
            raise CacheValueError(f"missing={missing!r}: expected 'raise' or 'nan'")
        q = _shards.v16(_as_keys(keys))
        return self._retry(lambda idx: self._gather(idx, q, missing))

    def _gather(self, idx, q, missing) -> np.ndarray:
        hit, pos = idx.locate(q)
        miss = np.flatnonzero(~hit)
        if len(miss) and missing == "raise":
            fails = idx.failures()
            absent = [i for i in miss if q[i].tobytes() not in fails]
            if absent:
                raise CacheMissError(
                    f"{len(absent)} of {len(q)} keys are not in cache namespace "
                    f"{self.fingerprint} ({self.path}); first missing key "
                    f"{q[absent[0]].tobytes().hex()}. Compute them first (FrozenBackbone."
                    "transform or `featcache extract`), or pass missing='nan' for NaN rows.")
        dim = idx.dim if idx.dim is not None else self.dim
        if dim is None:
            if len(q):
                raise CacheError(f"cache namespace {self.path} holds no feature rows yet, so "
                                 f"the width of the NaN rows for {len(miss)} failed or missing "
                                 "keys is unknown; store a 'dim' in its config or add rows first")
            return np.empty((0, 0), dtype=np.float32)
        out = np.full((len(q), dim), np.nan, dtype=np.float32)
        hp = np.flatnonzero(hit)
        sid, row = idx.sid[pos[hp]], idx.row[pos[hp]]
        order = np.lexsort((row, sid))
        hp, sid, row = hp[order], sid[order], row[order]
        cuts = np.flatnonzero(np.diff(sid)) + 1
        groups = [(idx.shards[s[0]], sl) for s, sl in
                  zip(np.split(sid, cuts), np.split(np.arange(len(sid)), cuts)) if len(s)]
        for info, sl in sorted(groups, key=lambda g: g[0].name):
            unique_rows, inverse = np.unique(row[sl], return_inverse=True)
            out[hp[sl]] = _shards.read_rows(info.path, unique_rows)[inverse]
        return out

    def to_numpy(self) -> tuple:
        """``(keys (n, 16) uint8, features (n, dim) float32)`` of every row, in shard order."""
        def collect(idx):
            parts = idx.owned()
            if not parts:
                return np.zeros((0, 16), np.uint8), np.zeros((0, idx.dim or 0), np.float32)
            return (np.concatenate([i.keys[r] for i, r in parts]),
                    np.concatenate([_shards.read_rows(i.path, r) for i, r in parts]))
        return self._retry(collect)

    def writer(self, *, commit_rows: int = 4096, commit_seconds: float = 30.0,
               dtype: str = "float32") -> "ShardWriter":
        """A :class:`ShardWriter` (context manager) adding rows to this namespace."""
        return ShardWriter(self, commit_rows=commit_rows, commit_seconds=commit_seconds,
                           dtype=dtype)


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
    """

    def __init__(self, namespace: Namespace, *, commit_rows=4096, commit_seconds=30.0,
                 dtype="float32"):
        try:
            dtype = np.dtype(dtype).name
        except TypeError:
            pass
        if dtype not in _shards.DTYPES:
            raise CacheValueError(f"dtype={dtype!r}: expected 'float32' or 'float16'")
        if not isinstance(commit_rows, (int, np.integer)) or commit_rows < 1:
            raise CacheValueError(f"commit_rows={commit_rows!r}: expected an int >= 1")
        if not commit_seconds > 0:
            raise CacheValueError(f"commit_seconds={commit_seconds!r}: expected a number > 0")
        self.namespace, self.dtype = namespace, dtype
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
        (:func:`featcache._shards.safe_text`).
        """
        self._check_open()
        k = _as_keys(keys)
        f = np.asarray(features)
        sources = [str(s) for s in sources]
        if f.ndim != 2 or f.shape[0] != len(k) or len(sources) != len(k):
            raise CacheValueError(f"add() needs n keys, an (n, d) feature array and n sources; "
                                  f"got {len(k)} keys, features of shape {f.shape}, "
                                  f"{len(sources)} sources")
        if not np.issubdtype(f.dtype, np.number):
            raise CacheValueError(f"features must be numeric, got dtype {f.dtype}")
        if self._dim is None:
            ns_dim = self.namespace.dim
            self._dim = ns_dim if ns_dim is not None else f.shape[1]
        if f.shape[1] != self._dim:
            raise CacheValueError(f"features have {f.shape[1]} columns but namespace "
                                  f"{self.namespace.fingerprint} holds {self._dim}-dim rows")
        if self.dtype == "float16" and f.size and np.nanmax(np.abs(f)) > 65504:
            raise CacheValueError("features exceed the float16 range (|x| > 65504) and would be "
                                  "stored as inf; use dtype='float32' for this backbone")
        if len(k):
            self._keys.append(k)
            self._feats.append(f.astype(np.float32, copy=True))
            self._sources.extend(sources)
            self._n += len(k)
            self._tick()

    def add_failure(self, key: bytes, source: str, reason: str) -> None:
        """Record that ``key`` (input ``source``) failed with ``reason``; it reads as NaN."""
        self._check_open()
        self._fk.append(_as_keys([key]))
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
            info = _shards.write_shard(self.namespace.shards_dir, self.namespace.fingerprint,
                                       keys, feats, self._sources, fk, self._fs, self._fr,
                                       self.dtype)
        except CacheError as exc:
            self._error = exc
            raise
        _remember(info)
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
        body = {"format_version": FORMAT_VERSION, "created": _shards.now_iso()}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            _shards.publish_once(marker, (json.dumps(body, indent=2) + "\n").encode())
        except OSError as exc:
            raise _shards.write_error(exc, self.path, what=MARKER) from exc
        data = self._read_marker(marker)
        if data is None:
            raise CacheError(f"{marker} vanished right after it was created; is another program "
                             f"deleting files in {self.path}?")
        return data

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
                if e.is_dir() and _FP_RE.match(e.name) and (
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
                _shards.publish_once(ns.path / "config.json", text.encode())
            except OSError as exc:
                raise _shards.write_error(exc, ns.path, what="config.json") from exc
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
            idx = ns._index()
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
    def annotate(self, keys, *, label=None, group=None, split=None, source=None) -> pathlib.Path:
        """Record labels, groups (patients), splits and sources of inputs, by content key.

        Stored once per cache directory (see :mod:`featcache.annotations`), so every
        namespace and ``featcache probe`` can use them without the original manifest. Text
        that is not valid UTF-8 is stored with backslash escapes.
        """
        from .annotations import write_annotations

        try:
            return write_annotations(self.path, keys, label=label, group=group, split=split,
                                     source=source)
        except OSError as exc:
            raise _shards.write_error(exc, self.path, what="annotations") from exc

    def annotations(self, keys=None) -> dict:
        """``key -> {"label", "group", "split", "source"}`` recorded by :meth:`annotate`."""
        from .annotations import read_annotations

        return read_annotations(self.path, keys)

    # -- maintenance (implemented in featcache._maintenance) ----------------------------
    def verify(self) -> VerifyReport:
        """Re-read every shard: open, attributes, shapes, checksum, one dim per namespace.

        The marker ``featcache.json`` and the annotations files are checked too.
        """
        from ._maintenance import verify_cache

        return verify_cache(self)

    def compact(self, namespace=None, *, min_shards: int = 2,
                stale_tmp_seconds: float = 900.0) -> dict:
        """Merge each namespace's shards into one new shard, then delete the merged ones.

        Keys are deduplicated (first shard wins), failures that later succeeded are dropped,
        damaged shards are left alone (see :meth:`verify`), temporary files older than
        ``stale_tmp_seconds`` are removed and ``index.h5`` is rebuilt. Shards committed by
        concurrent writers meanwhile are kept. Returns counts per namespace and in total.
        """
        from ._maintenance import compact_namespace

        targets = [self._ns(namespace)] if namespace is not None else \
            [self.namespace(fp) for fp in self.namespaces()]
        per = [compact_namespace(ns, min_shards, stale_tmp_seconds) for ns in targets]
        total = {k: sum(p[k] for p in per) for k in
                 ("shards_before", "shards_after", "rows", "duplicates_removed", "tmp_removed",
                  "corrupt_skipped")}
        return {**total, "namespaces": per}

    def build_index(self, namespace=None) -> pathlib.Path:
        """(Re)build ``<fingerprint>/index.h5``: virtual ``features``/``keys`` over all shards."""
        from ._maintenance import build_index

        return build_index(self._ns(namespace))

    def export(self, out_path, namespace=None) -> pathlib.Path:
        """Write one namespace to a plain ``.h5`` (or ``.npz``) file, readable with h5py alone.

        The .h5 holds datasets ``features``, ``keys``, ``sources`` and a ``failures`` group
        (keys, sources, reasons), with attrs ``config`` (JSON) and ``fingerprint``. The .npz
        holds ``features, keys, sources, failure_keys, failure_sources, failure_reasons,
        config, fingerprint``. The file is written atomically.

        Raises
        ------
        CacheValueError
            When ``out_path`` lies inside the cache directory (it could overwrite the cache's
            own files), is a directory, or does not end in ``.h5``, ``.hdf5`` or ``.npz``.
        """
        from ._maintenance import export_namespace

        return export_namespace(self._ns(namespace), out_path)
