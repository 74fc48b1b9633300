"""Maintenance of a cache directory: verify, compact, build the index, export.

The operations behind :meth:`featcache.cache.FeatureCache.verify`, ``compact``,
``build_index`` and ``export`` (and the ``featcache verify/compact/export`` commands). Like
the rest of the cache they use h5py and numpy only, write new files atomically and never
modify a committed shard. The export itself lives in :mod:`featcache.cache.export`.
"""

from __future__ import annotations

import dataclasses
import pathlib

from ..exceptions import CacheCorruptError, CacheError
from . import files, shards
from .annotations import verify_annotations
from .export import EXPORT_SUFFIXES, export_namespace
from .keymemo import prune as _prune_key_memo
from .memo import mark_bad, remember
from .namespace import Namespace

__all__ = ["VerifyReport", "verify_cache", "compact_namespace", "compact_key_memo", "build_index",
           "export_namespace", "EXPORT_SUFFIXES"]


@dataclasses.dataclass
class VerifyReport:
    """Result of :meth:`FeatureCache.verify`; true when no problem was found."""

    ok: bool
    problems: list
    shards_checked: int
    notes: list = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


def verify_cache(cache) -> VerifyReport:
    """Re-read every shard of ``cache``: open, attributes, shapes, checksum, one dim per namespace.

    The marker ``featcache.json`` and the annotations files are checked too.
    """
    problems, notes, checked = [], [], 0
    try:
        cache.check_marker()
    except (OSError, CacheError) as exc:
        problems.append(str(exc))
    problems += verify_annotations(cache.path)
    for fp in cache.namespaces():
        ns = cache.namespace(fp)
        try:
            ns.config
        except CacheError as exc:
            problems.append(str(exc))
        n, found = _verify_shards(ns)
        checked += n
        problems += found
        notes += [f"temporary file {p} (left by an interrupted writer; `featcache compact` "
                  "removes it once it is old)" for p in files.temp_files(ns.path)]
    return VerifyReport(ok=not problems, problems=problems, shards_checked=checked, notes=notes)


def build_index(ns: Namespace) -> pathlib.Path:
    """(Re)build ``<fingerprint>/index.h5``: virtual ``features``/``keys`` over all shards."""
    infos = sorted(ns.settled_index().shards, key=lambda s: s.name)
    try:
        return shards.write_index(ns.path, infos)
    except OSError as exc:
        raise files.write_error(exc, ns.path, what="index.h5") from exc


def _verify_shards(ns: Namespace) -> tuple:
    """(shards checked, problems) for one namespace; results refresh the process memo."""
    problems, dims, checked, vanished = [], {}, 0, []
    for name in _relisted(ns.shards_dir, vanished):
        path = ns.shards_dir / name
        try:
            info = shards.load_shard(path, ns.fingerprint, check_checksum=True)
        except FileNotFoundError:  # a concurrent compact merged it: no problem
            vanished.append(name)
            continue
        except CacheCorruptError as exc:
            checked += 1
            problems.append(str(exc))
            mark_bad(path, str(exc))
            continue
        checked += 1
        remember(info)
        if info.rows:
            dims.setdefault(info.dim, []).append(path)
    if len(dims) > 1:
        main = max(dims, key=lambda d: len(dims[d]))
        problems += [f"shard {p}: features have dim {d}, the namespace's other shards {main}"
                     for d, paths in dims.items() if d != main for p in paths]
    return checked, problems


def _relisted(shards_dir, vanished: list, times: int = 5):
    """Each shard name of ``shards_dir`` once, listed again while the caller finds some vanished.

    The caller appends the names it found gone to ``vanished``; after a pass that met one, the
    directory is listed again (up to ``times`` passes), so the shard a concurrent compact
    merged them into is visited too.
    """
    seen = set()
    for _ in range(times):
        before = len(vanished)
        for name in files.list_shards(shards_dir):
            if name not in seen:
                seen.add(name)
                yield name
        if len(vanished) == before:
            return


def compact_key_memo(cache_path, stale_tmp_seconds: float) -> dict:
    """Merge the key memo's segments and drop entries whose file no longer has that identity.

    Every remembered path is ``stat``-ed (:func:`featcache.cache.keymemo.prune`); returns
    ``{"key_entries_before", "key_entries_after", "key_entries_pruned"}``.
    """
    try:
        return _prune_key_memo(cache_path, stale_tmp_seconds)
    except OSError as exc:
        raise files.write_error(exc, pathlib.Path(cache_path) / "keys", what="the key memo") \
            from exc


def compact_namespace(ns: Namespace, min_shards: int, stale_tmp_seconds: float) -> dict:
    """Merge one namespace's shards into one (see ``FeatureCache.compact``); its counts."""
    tmp_removed = files.remove_stale_temp(ns.path, stale_tmp_seconds)
    for attempt in range(5):
        idx = ns.key_index(force=attempt > 0)
        infos = sorted(idx.shards, key=lambda s: s.name)
        stats = {"fingerprint": ns.fingerprint, "shards_before": len(idx.listing),
                 "corrupt_skipped": len(idx.bad), "tmp_removed": tmp_removed}
        rows_before = sum(i.rows for i in infos)
        if len(infos) < min_shards:
            kept = infos
            break
        try:
            merged = shards.merge(infos, ns.shards_dir / files.new_shard_name(), ns.fingerprint)
        except shards.ShardGone:
            continue  # a concurrent compact removed a shard: list again
        except OSError as exc:
            raise files.write_error(exc, ns.shards_dir, what="the compacted shard") from exc
        remember(merged)
        for info in infos:
            info.path.unlink(missing_ok=True)
        files.fsync_path(ns.shards_dir)
        kept = [merged]
        break
    else:
        raise CacheError(f"could not compact {ns.path}: its shards kept changing; retry")
    stats.update(shards_after=len(kept) + len(idx.bad), rows=sum(k.rows for k in kept),
                 duplicates_removed=rows_before - sum(k.rows for k in kept))
    if kept:
        build_index(ns)
    return stats
