"""Tests for featcache.backbones.weights: checkpoints, unwrapping, prefix stripping, shape checks."""

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from featcache.backbones import load_backbone
from featcache.exceptions import WeightsError
from featcache.backbones.weights import file_identity, load_checkpoint, map_state_dict_by_order


def test_order_mapping_checks_every_shape():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    good = {"a": torch.zeros(3, 4), "b": torch.zeros(3), "c": torch.zeros(2, 3), "d": torch.zeros(2)}
    assert list(map_state_dict_by_order(good, model, source="x")) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    bad = dict(good, c=torch.zeros(3, 2))
    with pytest.raises(WeightsError, match=r"'c' \(3, 2\) pairs with '1.weight' \(2, 3\)"):
        map_state_dict_by_order(bad, model, source="x")
    with pytest.raises(WeightsError, match="has 3 tensors but the architecture has 4"):
        map_state_dict_by_order(dict(list(good.items())[:3]), model, source="x")


def _save_resnet18_checkpoint(path, wrap):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import torchvision

        torch.manual_seed(123)
        model = torchvision.models.resnet18(weights=None)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3} if wrap else state, path)
    return model


def test_local_checkpoint_is_unwrapped_prefix_stripped_and_used(tmp_path):
    path = tmp_path / "resnet18_medical.pt"
    reference = _save_resnet18_checkpoint(path, wrap=True).eval()
    state = load_checkpoint(path)
    assert next(iter(state)).startswith("conv1.")
    loaded = load_backbone("resnet18", weights=str(path), image_size=64)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ours = loaded.extractor(x)["default"]
        norm = (x - loaded.extractor.mean) / loaded.extractor.std
        reference.fc = torch.nn.Identity()
        expected = reference(norm)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)  # BatchNorm is folded
    assert loaded.config["weights"] == "checkpoint" and loaded.config["weights_file"] == str(path)
    assert loaded.config["weights_digest"] != _random_resnet18(image_size=64).config["weights_digest"]


def test_headless_checkpoint_loads_but_a_mismatch_shows_a_readable_diff(tmp_path):
    path = tmp_path / "encoder.pth"
    _save_resnet18_checkpoint(path, wrap=False)
    state = torch.load(path, weights_only=True)
    headless = {k: v for k, v in state.items() if not k.startswith("module.fc.")}
    torch.save(headless, tmp_path / "headless.pt")
    assert load_backbone("resnet18", weights=str(tmp_path / "headless.pt"), image_size=32).dims["default"] == 512
    broken = dict(headless)
    del broken["module.layer1.0.conv1.weight"]
    broken["module.extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match=r"(?s)missing from the checkpoint \(1\).*layer1.0.conv1.weight"
                                           r".*not in the model \(1\).*extra.weight"):
        load_backbone("resnet18", weights=str(tmp_path / "broken.pt"))


def test_weights_errors_name_the_fix(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        load_backbone("resnet18", weights=str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read checkpoint .*junk.pt"):
        load_backbone("resnet18", weights=str(tmp_path / "junk.pt"))
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        load_backbone("resnet18", weights=str(tmp_path / "nostate.pt"))
    with pytest.raises(WeightsError, match=r"no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        load_backbone("resnet18", weights="IMAGENET9K")
    with pytest.raises(WeightsError, match="efficientnet_lite0 has weights 'DEFAULT'"):
        load_backbone(weights="IMAGENET1K_V2")


def _random_resnet18(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_backbone("resnet18", weights=None, **kw)


# ---------------------------------------------------------------- a checkpoint edited in place


def _resnet18_state(scale):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            state = torchvision.models.resnet18(weights=None).state_dict()
    return {k: v * scale if v.is_floating_point() else v for k, v in state.items()}


def _checkpoint_bytes(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _wait_for_the_file_clock_to_pass(directory, ctime_ns):
    """Touch a scratch file until the file system's clock is past ``ctime_ns`` (coarse clocks)."""
    probe = Path(directory) / "clock-probe"
    probe.touch()
    while os.stat(probe).st_ctime_ns <= ctime_ns:
        os.utime(probe)


def _rewrite_in_place_keeping_size_and_times(path, data: bytes):
    """Overwrite ``path``'s bytes (same inode, same size) and restore its atime and mtime."""
    before = os.stat(path)
    assert len(data) == before.st_size, "the rewrite must keep the size"
    _wait_for_the_file_clock_to_pass(Path(path).parent, before.st_ctime_ns)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    kept = ("st_ino", "st_size", "st_mtime_ns")
    assert [getattr(after, a) for a in kept] == [getattr(before, a) for a in kept]


def test_file_identity_changes_when_a_file_is_rewritten_with_its_mtime_restored(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 64)
    before = file_identity(path)
    assert file_identity(path) == before  # a stat of an unchanged file is stable
    _rewrite_in_place_keeping_size_and_times(path, b"b" * 64)
    assert file_identity(path) != before
    os.replace(tmp_path / "weights.bin", tmp_path / "moved.bin")
    with pytest.raises(WeightsError, match=r"weights file not found: '.*weights.bin'.*existing checkpoint"):
        file_identity(path)


def test_a_checkpoint_rewritten_in_place_with_its_mtime_restored_is_noticed(tmp_path):
    from featcache import FrozenBackbone
    from featcache.exceptions import FeatcacheError

    path = tmp_path / "resnet18.pt"
    path.write_bytes(_checkpoint_bytes(_resnet18_state(1.0)))
    X = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    params = dict(weights=str(path), image_size=32, cache=tmp_path / "cache", progress=False)
    old = FrozenBackbone("resnet18", **params).fit(X)
    before = old.transform(X)
    os.utime(path)  # touched, same bytes: verified by its digest, and the cached rows still serve
    np.testing.assert_array_equal(old.transform(X), before)
    assert old.transform_stats_["cached"] == 4
    _rewrite_in_place_keeping_size_and_times(path, _checkpoint_bytes(_resnet18_state(1.5)))

    new = FrozenBackbone("resnet18", **params).fit(X)
    assert new.fingerprint_ != old.fingerprint_, "the old weights' memoised fingerprint was served"
    after = new.transform(X)
    assert new.transform_stats_["computed"] == 4
    assert not np.allclose(after, before)
    # Every row of the old estimator is cached, yet it must not serve them for the new file.
    with pytest.raises(FeatcacheError, match=r"changed since fit.*Call fit again"):
        old.transform(X)
    with pytest.raises(FeatcacheError, match=r"changed since fit.*Call fit again"):
        old.set_params(cache=False).transform(X)  # and with every row to compute
    np.testing.assert_allclose(old.fit(X).transform(X), after, atol=1e-6)  # a refit uses the new file


# ------------------------------------------------ racily clean weights files (issue 22 class 1)
def _coarse_clock(monkeypatch, tick_ns):
    """Make every weights-file identity carry one frozen timestamp, as on a file system whose
    clock did not tick between two writes (1 s FAT/NFS clocks): a rewrite keeps the identity."""
    from featcache.backbones import weights

    real = weights.file_identity

    def coarse(path):
        ident = real(path)
        return (*ident[:2], tick_ns, *ident[3:5], tick_ns)

    monkeypatch.setattr(weights, "file_identity", coarse)


def test_a_checkpoint_rewritten_within_its_identity_tick_is_not_served_stale(tmp_path, monkeypatch):
    """A young file's identity is remembered by no memo (digest, network, resolved config,
    fitted estimator), so a same-tick rewrite that keeps the identity is picked up."""
    import time

    from featcache import FrozenBackbone
    from featcache.backbones import loading, weights
    from featcache.cache import resolved
    from featcache.exceptions import FeatcacheError

    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "3600")
    _coarse_clock(monkeypatch, time.time_ns())
    path = tmp_path / "resnet18.pt"
    path.write_bytes(_checkpoint_bytes(_resnet18_state(1.0)))
    X = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    params = dict(weights=str(path), image_size=32, cache=tmp_path / "cache", progress=False)
    old = FrozenBackbone("resnet18", **params).fit(X)
    before = old.transform(X)
    identity = weights.file_identity(path)
    assert identity not in weights._digest_memo
    assert not [k for k in (*loading._NETWORKS, *loading._LOADED) if identity in k]
    assert not (tmp_path / "cache" / resolved.RESOLVED_DIR).exists()

    path.write_bytes(_checkpoint_bytes(_resnet18_state(1.5)))  # same size, same inode
    assert weights.file_identity(path) == identity  # the coarse clock kept the identity
    with pytest.raises(FeatcacheError, match=r"changed since fit.*Call fit again"):
        old.transform(X)
    new = FrozenBackbone("resnet18", **params).fit(X)
    assert new.fingerprint_ != old.fingerprint_, "the old weights' fingerprint was served"
    after = new.transform(X)
    assert new.transform_stats_["computed"] == 4 and not np.allclose(after, before)


def test_a_settled_checkpoint_is_remembered_and_verified_once_it_settles(tmp_path, monkeypatch):
    """Fitted on a young file, an estimator verifies the weights (loads them) at transform;
    once the file's identity is settled it is trusted, and remembered by the memos."""
    from featcache import FrozenBackbone
    from featcache.backbones import loading, weights

    path = tmp_path / "resnet18.pt"
    path.write_bytes(_checkpoint_bytes(_resnet18_state(1.0)))
    X = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "3600")
    est = FrozenBackbone("resnet18", weights=str(path), image_size=32, cache=tmp_path / "c",
                         progress=False).fit(X)
    first = est.transform(X)
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "0")  # the file is old enough now
    calls = []
    real = loading.load_backbone
    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: calls.append(a) or real(*a, **k))
    np.testing.assert_array_equal(est.transform(X), first)  # verified by loading, once
    assert weights.file_identity(path) in weights._digest_memo
    verified = len(calls)
    np.testing.assert_array_equal(est.transform(X), first)
    assert len(calls) == verified, "a settled, verified identity is trusted without a load"


def test_per_process_memos_do_not_remember_a_young_weights_file(tmp_path, monkeypatch):
    """The partial-freezing network memo and a Dask worker's resolved state are keyed by the
    weights file's identity too: neither remembers one that is not yet settled."""
    from featcache.backbones import get_backbone
    from featcache.jobs.dask_worker import Job
    from featcache.partial import network

    path = tmp_path / "resnet18.pt"
    path.write_bytes(_checkpoint_bytes(_resnet18_state(1.0)))
    job = Job(cache=str(tmp_path / "c"), model="resnet18", weights=str(path), layers=(None,),
              pooling="avg", image_size=32, run={})
    monkeypatch.setattr(network, "_MEMO", type(network._MEMO)())
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "3600")
    assert job.memo_key() is None
    network.pretrained_network(get_backbone("resnet18"), str(path))
    assert not network._MEMO
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "0")
    assert job.memo_key() is not None
    network.pretrained_network(get_backbone("resnet18"), str(path))
    assert len(network._MEMO) == 1
