"""Namespace: one fingerprint's directory of shards, its configuration and key index."""

from __future__ import annotations

import json
import re
import time
import warnings

import numpy as np

from ..exceptions import CacheCorruptError, CacheError, CacheMissError, CacheValueError, CorruptShardWarning
from ..log import get_logger
from . import files, shards
from .keyindex import KeyIndex, v16
from .memo import INDEXES, LOCK, SHARD_INFO, WARNED, as_keys, forget, load, ns_lock
from .writer import ShardWriter


_RETRIES = 10  # attempts of a read that keeps meeting shards removed by a concurrent compact
_RELISTS = 3   # listings of one index refresh whose shards keep vanishing before they load
_log = get_logger(__name__)


FP_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_fingerprint(fingerprint) -> None:
    if not isinstance(fingerprint, str) or not FP_RE.match(fingerprint):
        raise CacheValueError(f"namespace {fingerprint!r} is not a valid fingerprint: expected a "
                              "string of letters, digits, '.', '_' or '-' (as produced by "
                              "featcache.backbones.fingerprint)")


class Namespace:
    """One fingerprint's directory: its configuration, shards and key index.

    Obtain it with :meth:`FeatureCache.namespace`. Methods re-list the shard directory on each
    call, so rows committed by other processes show up; an index of keys (never features) is
    memoised per process. It implements the namespace contract
    (:class:`~featcache.cache.contract.NamespaceContract`); each commit is one shard.
    """

    def __init__(self, cache, fingerprint: str):
        check_fingerprint(fingerprint)
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
    def key_index(self, force: bool = False) -> KeyIndex:
        """The namespace's key index, refreshed when its shard listing changed (or ``force``).

        A listed shard that vanishes before it is loaded (a concurrent ``compact`` merged it
        into a new shard, written before the old ones are removed) is no damage: the shards
        are listed again, which shows the merged shard, up to :data:`_RELISTS` times. If they
        keep vanishing, the index's ``vanished`` names them (:meth:`retry` then tries again).
        """
        key = (str(self.path), self.cache.verify_on_load)
        with ns_lock(key):
            for _ in range(_RELISTS):
                names = tuple(files.list_shards(self.shards_dir))
                idx = INDEXES.get(key)
                if idx is not None and not force and idx.listing == names and not idx.vanished:
                    return idx
                idx = INDEXES[key] = self._refresh(idx, names, force)
                if not idx.vanished:
                    return idx
                _log.debug("shards of %s vanished while they were indexed (a concurrent "
                           "compact?); listing them again: %s", self.path, idx.vanished)
                force = False  # the shards loaded so far are kept; the new listing extends them
            return idx

    def _refresh(self, idx, names: tuple, force: bool) -> KeyIndex:
        """The index of the shards ``names``: ``idx`` extended, or rebuilt when shards left it."""
        gone = set(idx.listing) - set(names) if idx is not None else ()
        forget(self.shards_dir / name for name in gone)  # e.g. merged by compact
        idx = KeyIndex() if idx is None or force or gone else idx.copy()
        known, listing, good, vanished = set(idx.listing), [], [], []
        for name in names:
            if name not in known and self._load_one(name, idx, good) is None:
                vanished.append(name)
                continue
            listing.append(name)
        idx.add(good)
        idx.listing, idx.vanished = tuple(listing), tuple(vanished)
        return idx

    def _load_one(self, name, idx, good):
        """Load one new shard into ``good`` (or idx.bad, with a warning); None if it vanished."""
        path = self.shards_dir / name
        try:
            info = load(path, self.fingerprint, self.cache.verify_on_load)
        except FileNotFoundError:
            return None
        dim = idx.dim if idx.dim is not None else next((g.dim for g in good if g.rows), None)
        if not isinstance(info, str) and info.rows and dim is not None and info.dim != dim:
            info = f"shard {path}: features have dim {info.dim}, the namespace's other shards {dim}"
        if isinstance(info, str):
            idx.bad[name] = info
            with LOCK:
                seen = str(path) in WARNED
                WARNED.add(str(path))
            if not seen:
                _log.warning("skipped damaged shard (its rows are recomputed): %s", info)
                warnings.warn(f"{info}. The shard is skipped (its rows count as missing and are "
                              f"recomputed); run `featcache verify {self.cache.path}` and delete "
                              "the damaged file.", CorruptShardWarning,
                              stacklevel=7)  # lookup's caller: via retry, key_index, _refresh
        else:
            good.append(info)
        return info

    def retry(self, fn):
        """Run fn(index) on a settled index, again when a shard vanished (a concurrent compact).

        ``fn`` gets an index in which every listed shard was loaded. A shard that vanished
        (:class:`~featcache.cache.shards.ShardGone` with ``vanished``) means the rows moved: the
        shards are listed again and ``fn`` runs again; the shard is never marked damaged. A
        shard that failed otherwise is re-verified first (it is skipped if it is damaged).
        Retries back off (about 1 s in all), so that a compaction removing many shards on a
        busy machine finishes between two attempts instead of outlasting all of them.

        Raises
        ------
        CacheMissError
            When shards vanished on every attempt: a concurrent compact or removal kept moving
            the rows. Retry once it has finished.
        CacheError
            When a shard kept failing to read for another reason (I/O errors).
        """
        for attempt in range(_RETRIES):
            if attempt > 1:
                time.sleep(min(0.002 * 2 ** attempt, 0.25))
            idx = self.key_index(force=attempt > 0)
            try:
                if idx.vanished:
                    raise shards.ShardGone(self.shards_dir / idx.vanished[0],
                                           FileNotFoundError("vanished while it was indexed"))
                return fn(idx)
            except shards.ShardGone as gone:
                _log.debug("read of %s met a changed shard (attempt %d of %d): %s", self.path,
                           attempt + 1, _RETRIES, gone)
                if not gone.vanished:
                    with LOCK:  # re-verify that shard: it is skipped if it is damaged
                        SHARD_INFO.pop(str(gone.path), None)
                last = gone
        if last.vanished:
            raise CacheMissError(
                f"could not read namespace {self.path}: the shards holding the rows vanished "
                f"on each of {_RETRIES} attempts (last {last.path.name}); a concurrent compact "
                "or removal of shards kept moving the rows. Retry once it has finished (rows "
                "that were really removed are recomputed by the next transform or extract).")
        raise CacheError(f"could not read namespace {self.path}: {last}; shards kept changing "
                         "(is a compact running?); retry")

    def settled_index(self) -> KeyIndex:
        """The key index with every listed shard loaded (see :meth:`retry`)."""
        return self.retry(lambda idx: idx)

    # -- queries ---------------------------------------------------------------------
    def lookup(self, keys) -> np.ndarray:
        """Boolean mask: True where a key has a successful row."""
        q = v16(as_keys(keys))
        return self.settled_index().locate(q)[0]

    def failures(self, keys=None) -> dict:
        """``key -> (source, reason)`` of recorded failures, except keys that have a row."""
        fails = self.settled_index().failures()
        if keys is None:
            return dict(fails)
        wanted = (k.tobytes() for k in as_keys(keys))
        return {k: fails[k] for k in wanted if k in fails}

    def rows(self) -> int:
        """Number of distinct keys with a successful row."""
        return len(self.settled_index().keys)

    @property
    def dim(self) -> int | None:
        """Feature dimension (None while the namespace holds no rows and no config dim)."""
        dim = self.settled_index().dim
        if dim is None:
            cfg = self.config.get("dim") if (self.path / "config.json").exists() else None
            dim = cfg if isinstance(cfg, int) else None
        return dim

    @property
    def storage(self) -> str:
        """How new rows are stored: ``config["storage"]`` (``"float16"``), else ``"float32"``."""
        storage = self.config.get("storage", "float32")
        if storage not in shards.DTYPES:
            raise CacheCorruptError(f"{self.path / 'config.json'}: storage {storage!r} is not one "
                                    f"of {sorted(shards.DTYPES)}")
        return storage

    @property
    def row_shape(self) -> "tuple | None":
        """The shape of one row before flattening (``config["row_shape"]``), or None for vectors."""
        shape = self.config.get("row_shape")
        if shape is None:
            return None
        dim = self.config.get("dim")
        return shards.check_row_shape(shape, dim if isinstance(dim, int) else
                                      int(np.prod(shape)), self.path / "config.json")

    def read(self, keys, *, missing: str = "raise") -> np.ndarray:
        """Float32 ``(n, dim)`` rows in the order of ``keys``.

        Failed keys (recorded by ``add_failure``, no successful row) give NaN rows. Keys never
        seen raise :class:`CacheMissError` (``missing="raise"``) or give NaN rows
        (``missing="nan"``).
        """
        if missing not in ("raise", "nan"):
            raise CacheValueError(f"missing={missing!r}: expected 'raise' or 'nan'")
        q = v16(as_keys(keys))
        return self.retry(lambda idx: self._gather(idx, q, missing))

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
            out[hp[sl]] = shards.read_rows(info.path, unique_rows)[inverse]
        return out

    def to_numpy(self) -> tuple:
        """``(keys (n, 16) uint8, features (n, dim) float32)`` of every row, in shard order."""
        def collect(idx):
            parts = idx.owned()
            if not parts:
                return np.zeros((0, 16), np.uint8), np.zeros((0, idx.dim or 0), np.float32)
            return (np.concatenate([i.keys[r] for i, r in parts]),
                    np.concatenate([shards.read_rows(i.path, r) for i, r in parts]))
        return self.retry(collect)

    def writer(self, *, commit_rows: int = 4096, commit_seconds: float = 30.0,
               dtype: str | None = None) -> "ShardWriter":
        """A :class:`ShardWriter` (context manager) adding rows to this namespace.

        ``dtype`` defaults to the namespace's :attr:`storage`; each shard records the
        namespace's :attr:`row_shape`.
        """
        return ShardWriter(self, commit_rows=commit_rows, commit_seconds=commit_seconds,
                           dtype=self.storage if dtype is None else dtype,
                           row_shape=self.row_shape)
