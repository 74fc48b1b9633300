"""Tests for featcache.sharing: a fitted pipeline round-trips through skops.io safely."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from featcache import FrozenBackbone
from featcache import sharing

sio = pytest.importorskip("skops.io")


class Custom(StandardScaler):
    """A step of a type nobody has trusted."""


def _pipeline(cache, *steps):
    return Pipeline([("backbone", FrozenBackbone(image_size=32, cache=cache, progress=False)),
                     *steps, ("clf", LogisticRegression(max_iter=1000))])


@pytest.mark.parametrize("cache_type", [str, Path])
def test_a_fitted_pipeline_round_trips_with_only_the_trusted_types(cache_type, xray, tmp_path):
    images, labels = xray
    pipe = _pipeline(cache_type(tmp_path / "cache")).fit(images[::2], labels[::2])
    expected = pipe.predict_proba(images[1::2])
    path = tmp_path / "pipe.skops"
    sio.dump(pipe, path)
    assert set(sio.get_untrusted_types(file=path)) <= set(sharing.TRUSTED_TYPES)
    with pytest.raises(sio.exceptions.UntrustedTypesFoundException, match="FrozenBackbone"):
        sio.load(path)  # nothing is trusted without being named
    for restored in (sio.load(path, trusted=sharing.TRUSTED_TYPES), sharing.load(path)):
        np.testing.assert_array_equal(restored.predict_proba(images[1::2]), expected)
        backbone = restored.named_steps["backbone"]
        assert backbone.transform_stats_["computed"] == 0  # rows from the shared cache
        assert backbone.get_params() == pipe.named_steps["backbone"].get_params()


def test_a_new_process_loads_and_predicts_identically(xray, tmp_path):
    images, labels = xray
    pipe = _pipeline(str(tmp_path / "cache")).fit(images, labels)
    sharing.dump(pipe, tmp_path / "pipe.skops")
    np.save(tmp_path / "x.npy", images)
    code = ("import sys, numpy as np\n"
            "from featcache.sharing import load\n"
            "pipe = load(sys.argv[1])\n"
            "np.save(sys.argv[3], pipe.predict_proba(np.load(sys.argv[2])))\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "pipe.skops"),
                    str(tmp_path / "x.npy"), str(tmp_path / "out.npy")], check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), pipe.predict_proba(images))


def test_any_other_type_is_refused_until_trusted(xray, tmp_path):
    images, labels = xray
    pipe = _pipeline(str(tmp_path / "cache"), ("scale", Custom())).fit(images[::6], labels[::6])
    path = tmp_path / "pipe.skops"
    sio.dump(pipe, path)
    with pytest.raises(sio.exceptions.UntrustedTypesFoundException, match="Custom"):
        sharing.load(path)
    custom = [t for t in sio.get_untrusted_types(file=path) if t.endswith("Custom")]
    assert sharing.load(path, trusted=custom).predict(images[:3]).shape == (3,)


def test_without_skops_the_fix_is_named(monkeypatch, tmp_path):
    from featcache.exceptions import FeatcacheError

    monkeypatch.setitem(sys.modules, "skops", None)
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(FeatcacheError, match=r"pip install featcache\[share\]"):
        sharing.load(tmp_path / "pipe.skops")


def test_a_fitted_partially_frozen_classifier_round_trips(tmp_path):
    from featcache import PartiallyFrozenClassifier

    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, size=(16, 32, 32), dtype=np.uint8)
    y = np.arange(16) % 2
    clf = PartiallyFrozenClassifier(trainable_blocks=1, image_size=32, max_epochs=1,
                                    cache=str(tmp_path / "c"), random_state=0, progress=False)
    clf.fit(X, y)
    path = tmp_path / "clf.skops"
    sharing.dump(clf, path)
    assert set(sio.get_untrusted_types(file=path)) <= set(sharing.TRUSTED_TYPES)
    loaded = sharing.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
