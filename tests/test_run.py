"""Tests for featcache.engine.run: one run, resolved once, used by every caller of embed."""

import numpy as np
import pytest

import featcache.engine.run as run_module
from featcache.cache import FeatureCache, MemoryNamespace, Namespace
from featcache.engine.run import ResolvedRun, changed_since_fit, resolve_run
from featcache.exceptions import FeatcacheError
from featcache.engine.run_options import resolve_run_options

PARAMS = dict(model="efficientnet_lite0", weights="DEFAULT", layers=(None,), pooling="avg",
              image_size=32)


def _fake_configs(monkeypatch, fingerprint="fp1"):
    """resolve_configs replaced: one layer of width 3 under ``fingerprint``; counts calls."""
    calls = []

    def resolve_configs(store, **kwargs):
        calls.append(kwargs)
        config = {"dim": 3, "layer": "head", "model": kwargs["model"]}
        return {"head": (config, fingerprint)}, lambda: "the network"

    monkeypatch.setattr(run_module, "resolve_configs", resolve_configs)
    return calls


def test_resolved_once_in_memory(monkeypatch):
    calls = _fake_configs(monkeypatch)
    options = resolve_run_options(device="cpu", window=(40, 400))
    run = resolve_run(**PARAMS, cache=False, options=options)
    assert isinstance(run, ResolvedRun) and run.store is None and run.options is options
    assert len(calls) == 1 and calls[0]["options"].decode.window == (40.0, 400.0)
    assert run.fingerprints == {"head": "fp1"} and run.load() == "the network"
    assert run.weights_identity is None and run.weights_key == "DEFAULT" and run.remembered
    (ns,) = run.namespaces().values()
    assert isinstance(ns, MemoryNamespace) and ns.fingerprint == "fp1"
    assert run.key_memo() is None


def test_resolved_once_on_disk(monkeypatch, tmp_path):
    _fake_configs(monkeypatch)
    run = resolve_run(**PARAMS, cache=tmp_path / "c", options=resolve_run_options(device="cpu"))
    assert isinstance(run.store, FeatureCache)
    (ns,) = run.namespaces().values()
    assert isinstance(ns, Namespace) and ns.fingerprint == "fp1"
    assert run.key_memo() is not None


def test_a_weights_file_enters_by_its_identity(monkeypatch, tmp_path):
    from featcache.backbones.weights import file_identity

    _fake_configs(monkeypatch)
    path = tmp_path / "w.pt"
    path.write_bytes(b"weights")
    run = resolve_run(**{**PARAMS, "weights": str(path)}, cache=False,
                      options=resolve_run_options(device="cpu"))
    assert run.weights_identity == run.weights_key == file_identity(path)


def test_fitted_configurations_resolve_nothing_until_the_network_is_needed(monkeypatch):
    calls = _fake_configs(monkeypatch, fingerprint="fp2")
    fitted = {"head": ({"dim": 3, "layer": "head"}, "fp1")}
    run = resolve_run(**PARAMS, cache=False, options=resolve_run_options(device="cpu"),
                      fitted=fitted)
    assert run.fingerprints == {"head": "fp1"} and calls == []
    with pytest.raises(FeatcacheError, match=r"backbone configuration changed since fit "
                                             r"\(fingerprint fp1 then, fp2 now\).*Call fit again"):
        run.load()
    assert len(calls) == 1
    same = resolve_run(**PARAMS, cache=False, options=resolve_run_options(device="cpu"),
                       fitted={"head": ({"dim": 3}, "fp2")})
    assert same.load() == "the network"
    assert "frozen prefix changed" in str(changed_since_fit("a", "b", "frozen prefix"))


def test_embed_runs_the_one_unit_of_work_with_the_runs_setup(monkeypatch):
    _fake_configs(monkeypatch)
    seen = {}

    def embed(items, sources, namespaces, *, load, options, **kwargs):
        seen.update(items=items, sources=list(sources), namespaces=namespaces, load=load,
                    options=options, **kwargs)
        return "done"

    monkeypatch.setattr(run_module, "embed", embed)
    run = resolve_run(**PARAMS, cache=False, options=resolve_run_options(device="cpu"))
    items = [np.zeros((4, 4), np.uint8)]
    assert run.embed(items, read="head") == "done"
    assert seen["read"] == "head" and seen["options"] is run.options and seen["load"] is run.load
    assert list(seen["namespaces"]) == ["head"] and seen["key_memo"] is None
    assert seen["sources"] == ["input 0 (array (4, 4) uint8)"]
