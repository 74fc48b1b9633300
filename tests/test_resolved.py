"""Tests for featcache.cache.resolved: configurations remembered under everything they depend on."""

import json

from featcache.cache import resolved


def test_remember_lookup_forget(tmp_path):
    key = {"model": "m", "weights": "DEFAULT", "versions": resolved.library_versions()}
    configs = {"default": {"dim": 4, "model": "m"}}
    assert resolved.lookup(tmp_path, key) is None
    resolved.remember(tmp_path, key, configs)
    assert resolved.lookup(tmp_path, key) == configs
    assert resolved.lookup(tmp_path, {**key, "weights": "OTHER"}) is None
    resolved.forget(tmp_path, key)
    assert resolved.lookup(tmp_path, key) is None


def test_a_damaged_or_foreign_entry_is_ignored(tmp_path):
    key = {"model": "m"}
    resolved.remember(tmp_path, key, {"default": {"dim": 4}})
    (path,) = (tmp_path / resolved.RESOLVED_DIR).iterdir()
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "key": {"model": "other"}}))  # another key's entry
    assert resolved.lookup(tmp_path, key) is None
    path.write_text("{not json")
    assert resolved.lookup(tmp_path, key) is None
    path.write_text(json.dumps({**entry, "configs": {"default": {"dim": "4"}}}))
    assert resolved.lookup(tmp_path, key) is None


def test_library_versions_name_every_architecture_package():
    versions = resolved.library_versions()
    assert set(versions) == set(resolved.ARCHITECTURE_PACKAGES)
    assert versions["torch"] and versions["timm"]
