"""Tests for featcache.engine.unit_of_work helpers not covered through extract and FrozenBackbone."""

from pathlib import Path

import numpy as np
import pytest

import featcache.engine.unit_of_work as embedding
from featcache.engine import key_processes
from featcache.engine.unit_of_work import SourcesOf, content_keys, source_of
from featcache.exceptions import InputError
from featcache.inputs import keys as keys_module


def test_sources_are_described_only_when_asked_for(monkeypatch):
    items = [np.zeros((4, 5), np.uint8), Path("/data/x.png"), np.ones((2, 2, 3), np.float32)]
    asked = []
    real = embedding.source_of
    monkeypatch.setattr(embedding, "source_of", lambda item, i: asked.append(i) or real(item, i))
    sources = SourcesOf(items)
    assert len(sources) == 3 and asked == []
    assert sources[np.int64(1)] == "/data/x.png" and asked == [1]
    assert sources[-1] == source_of(items[2], 2) == "input 2 (array (2, 2, 3) float32)"
    assert sources[0:2] == [source_of(items[0], 0), "/data/x.png"]
    with pytest.raises(IndexError):
        sources[3]


def _embed_twice_broken(tmp_path, cache, read):
    """Embed [good, broken, good, broken copy, broken (same path again)] and return the result."""
    from PIL import Image

    from featcache.cache import MemoryNamespace, resolve_cache
    from featcache.engine.unit_of_work import content_keys, embed, resolve_configs
    from featcache.inputs import as_items
    from featcache.engine.run_options import resolve_run_options

    rng = np.random.default_rng(0)
    good = []
    for i in range(2):
        p = tmp_path / f"good{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
        good.append(str(p))
    png = (tmp_path / "good0.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(png[:40])  # a truncated file
    (tmp_path / "trunc copy.png").write_bytes(png[:40])  # its byte-identical copy
    paths = [good[0], str(tmp_path / "trunc.png"), good[1], str(tmp_path / "trunc copy.png"),
             str(tmp_path / "trunc.png")]
    options = resolve_run_options(on_error="skip", device="cpu", progress=False)
    store = resolve_cache(cache)
    configs, load = resolve_configs(store, model="efficientnet_lite0", weights="DEFAULT",
                                    layers=(None,), pooling="avg", image_size=32,
                                    options=options)
    ((name, (config, fp)),) = configs.items()
    ns = MemoryNamespace(fp, config["dim"]) if store is None else store.namespace(fp, config)
    items = as_items(paths)
    keys = content_keys(items, "skip")
    return [embed(items, SourcesOf(items), {name: ns}, load=load, options=options, keys=keys,
                  read=name if read else None) for _ in range(2)]


@pytest.mark.parametrize("cache, read", [("dir", False), ("dir", True), (False, False)])
def test_every_position_of_a_failed_input_is_failed(tmp_path, cache, read):
    """Duplicates of an undecodable input (the same path twice, a byte-identical copy) are
    failed at every position, when computed now and when an earlier run recorded it."""
    first, again = _embed_twice_broken(tmp_path, tmp_path / "cache" if cache else False, read)
    for result in (first, again):
        assert sorted(result.failures) == [1, 3, 4]
        assert "trunc.png" in result.failures[1]
        assert result.failures[3].startswith("input 3 (") and "trunc copy.png" in result.failures[3]
        assert "the same content as input 1" in result.failures[3]
        assert result.failures[1] in result.failures[3] and result.failures[1] in result.failures[4]
        assert result.failed == 3
    assert first.computed == 2 and again.computed == 0
    if read:
        assert np.isnan(again.features[[1, 3, 4]]).all()
        assert np.isfinite(again.features[[0, 2]]).all()


def test_content_keys_name_the_first_bad_input_as_one_file_after_another_did(tmp_path,
                                                                           monkeypatch):
    # Files are probed (stat) first and hashed afterwards: an unreadable file must still be
    # reported before a missing one that comes after it, and failures listed in input order.
    paths = [tmp_path / f"{i}.bin" for i in range(3)]
    for p in paths:
        p.write_bytes(p.name.encode())
    real = keys_module.hash_file

    def unreadable(path, index, probe=None):  # what a file without read permission gives
        if Path(path).name == "0.bin":
            raise PermissionError(13, "Permission denied")
        return real(path, index, probe)

    monkeypatch.setattr(key_processes, "hash_file", unreadable)
    items = [str(paths[0]), str(tmp_path / "missing.bin"), str(paths[2])]
    with pytest.raises(InputError, match=r"input 0 .*0\.bin.*Permission denied"):
        content_keys(items)
    keys, failures = content_keys(items, on_error="skip")
    assert list(failures) == [0, 1] and keys[:2] == [None, None] and keys[2] is not None
    assert "Permission denied" in failures[0] and "not found" in failures[1]
