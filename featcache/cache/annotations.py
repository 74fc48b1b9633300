"""Labels, groups and splits of inputs, stored beside the cache, keyed by content key.

A label is a property of an input, not of a backbone configuration, so annotations live once
per cache directory (``CACHE_DIR/annotations/<seq>-<uuid>.h5``) and serve every namespace.
Like shards, each file is written to a temporary name, fsync'ed and renamed into place, and
never modified; when several files annotate one key, the newest wins. h5py + numpy only.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from ..exceptions import CacheCorruptError
from . import files, shards
from .checks import get_dataset

__all__ = ["ANNOTATIONS_DIR", "write_annotations", "read_annotations", "verify_annotations",
           "FIELDS"]

ANNOTATIONS_DIR = "annotations"
#: Per-input fields; an empty string stands for "none".
FIELDS = ("label", "group", "split", "source")


def _as_str(values, n):
    if values is None:
        return [""] * n
    values = ["" if v is None else files.safe_text(v) for v in values]
    if len(values) != n:
        raise ValueError(f"expected {n} values, got {len(values)}")
    return values


def write_annotations(cache_dir, keys, *, label=None, group=None, split=None, source=None):
    """Store per-input annotations for ``keys`` (a list of 16-byte keys); returns the file.

    Each of ``label``, ``group``, ``split``, ``source`` is a sequence aligned with ``keys``
    (None entries mean "unknown") or None for all unknown.
    """
    keys = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, shards.KEY_BYTES)
    n = len(keys)
    columns = dict(zip(FIELDS, (_as_str(v, n) for v in (label, group, split, source))))
    directory = pathlib.Path(cache_dir) / ANNOTATIONS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / files.new_shard_name()
    with files.atomic_h5(final) as f:
        f.create_dataset("keys", data=keys)
        for name, values in columns.items():
            f.create_dataset(name, data=np.array(values, dtype=object), dtype=files.STR_DTYPE)
        f.attrs["rows"] = n
    return final


def read_annotations(cache_dir, keys=None) -> dict:
    """``key -> {"label", "group", "split", "source"}`` (None for unknown), newest file winning.

    With ``keys``, only those keys are returned (keys never annotated are absent).

    Raises
    ------
    CacheCorruptError
        When an annotations file is damaged (named in the message; ``featcache verify``
        lists it too). It is not skipped: an older label would then win without notice.
    """
    directory = pathlib.Path(cache_dir) / ANNOTATIONS_DIR
    wanted = None if keys is None else {bytes(k) for k in keys}
    out: dict = {}
    for name in files.list_shards(directory):
        read = _read_file(directory / name)
        if read is None:
            continue
        file_keys, columns = read
        for i, key in enumerate(map(bytes, file_keys)):
            if wanted is None or key in wanted:
                out[key] = {field: (columns[field][i] or None) for field in FIELDS}
    return out


def verify_annotations(cache_dir) -> list:
    """Messages naming each damaged annotations file of ``cache_dir`` (empty when all read)."""
    directory = pathlib.Path(cache_dir) / ANNOTATIONS_DIR
    problems = []
    for name in files.list_shards(directory):
        try:
            _read_file(directory / name)
        except CacheCorruptError as exc:
            problems.append(str(exc))
    return problems


def _read_file(path: pathlib.Path):
    """(keys, {field: strings}) of one annotations file; None if it vanished meanwhile.

    Every dataset's declared size is checked against the file's real size before it is read.
    """
    fix = "; delete it and annotate those inputs again"
    try:
        size = os.stat(path).st_size
        with files.open_read(path) as f:
            keys = f.get("keys")
            n = keys.shape[0] if getattr(keys, "shape", None) else -1
            keys = get_dataset(f, "keys", path, size, (n, shards.KEY_BYTES),
                                       np.dtype(np.uint8), what="annotations file")
            columns = {field: shards.str_list(get_dataset(
                f, field, path, size, (n,), what="annotations file")) for field in FIELDS}
            return keys[()], columns
    except FileNotFoundError:
        return None
    except CacheCorruptError as exc:
        raise CacheCorruptError(f"{exc}{fix}") from exc
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError/TypeError on damage
        raise CacheCorruptError(f"annotations file {path}: cannot be read "
                                f"({type(exc).__name__}: {exc}); it is truncated, damaged or "
                                f"not a featcache annotations file{fix}") from exc
