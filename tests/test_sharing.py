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


def test_a_prior_shift_around_a_frozen_pipeline_round_trips(xray, tmp_path):
    from sklearn.frozen import FrozenEstimator

    from featcache.probe import PriorShiftClassifier

    images, labels = xray
    pipe = _pipeline(str(tmp_path / "cache")).fit(images[::2], labels[::2])
    model = PriorShiftClassifier(FrozenEstimator(pipe), target_prior=0.3)
    model.fit(images[::2], labels[::2])
    path = tmp_path / "shifted.skops"
    sharing.dump(model, path)
    assert "featcache.probe.prior_shift.PriorShiftClassifier" in \
        sio.get_untrusted_types(file=path)
    assert set(sio.get_untrusted_types(file=path)) <= set(sharing.TRUSTED_TYPES)
    restored = sharing.load(path)
    assert type(restored) is PriorShiftClassifier and restored.target_prior == 0.3
    assert restored.threshold_ == model.threshold_
    np.testing.assert_array_equal(restored.weights_, model.weights_)
    np.testing.assert_array_equal(restored.predict_proba(images[1::2]),
                                  model.predict_proba(images[1::2]))
    np.testing.assert_array_equal(restored.predict(images[1::2]), model.predict(images[1::2]))


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


@pytest.fixture(scope="module")
def fitted_clf(tmp_path_factory):
    """A fitted PartiallyFrozenClassifier (1 trainable stage, 32 px) and its images."""
    from featcache import PartiallyFrozenClassifier

    tmp = tmp_path_factory.mktemp("fitted")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, size=(8, 32, 32), dtype=np.uint8)
    clf = PartiallyFrozenClassifier(trainable_blocks=1, image_size=32, max_epochs=1,
                                    cache=str(tmp / "c"), random_state=0, progress=False)
    return clf.fit(X, np.arange(8) % 2), X


def _drop(state, key):
    return {k: v for k, v in state.items() if k != key}


def _reshape(state, key):
    return {**state, key: np.zeros((state[key].shape[0], 7), np.float32)}


@pytest.mark.parametrize("attribute, forge, match", [
    # 27.6 GB as float32 for one row (the file); 7.7e14 bytes: far beyond any machine
    ("row_shape_", lambda v: (192, 6000, 6000), r"row_shape_=\(192, 6000, 6000\).*GB"),
    ("row_shape_", lambda v: (192, 10**6, 10**6), r"row_shape_=\(192, 1000000, 1000000\)"),
    ("row_shape_", lambda v: (80, 1, 1), r"row_shape_=\(80, 1, 1\).*expected \(192, 1, 1\)"),
    ("row_shape_", lambda v: ("192", 1, 1), r"row_shape_=\('192', 1, 1\).*positive integers"),
    ("tail_state_", lambda v: _drop(v, "stages.0.0.conv_pw.weight"),
     r"tail_state_.*missing.*stages\.0\.0\.conv_pw\.weight"),
    ("tail_state_", lambda v: _drop(v, "head.weight"), r"tail_state_.*missing.*head\.weight"),
    ("tail_state_", lambda v: {**v, "extra": np.zeros(3)}, r"tail_state_.*unexpected.*extra"),
    ("tail_state_", lambda v: _reshape(v, "head.weight"),
     r"tail_state_\['head\.weight'\] has shape \(2, 7\).*expected \(2, 1280\)"),
    ("classes_", lambda v: np.array([0, 1, 2]), r"classes_ holds 3 classes.*2 outputs"),
    ("cut_layer_", lambda v: "blocks.0", r"cut_layer_='blocks\.0'.*expected 'blocks\.5'"),
])
def test_a_forged_fitted_state_is_refused_before_use(fitted_clf, tmp_path, monkeypatch,
                                                     attribute, forge, match):
    """A .skops file using only the trusted types can hold any fitted state: predict checks
    it against the architecture and raises InvalidModelError before building anything (the
    tail is never built with a forged row shape, so nothing of its claimed size is allocated)."""
    import pickle

    import featcache.partial.tail as tail
    from featcache.exceptions import InvalidModelError

    clf, X = fitted_clf
    forged = pickle.loads(pickle.dumps(clf))  # the trained arrays, no torch module
    setattr(forged, attribute, forge(getattr(forged, attribute)))
    sharing.dump(forged, tmp_path / "forged.skops")
    loaded = sharing.load(tmp_path / "forged.skops")
    built = []
    real = tail.build_tail
    monkeypatch.setattr(tail, "build_tail", lambda *a, **k: built.append(a[3]) or real(*a, **k))
    for method in (loaded.predict, loaded.predict_proba):
        with pytest.raises(InvalidModelError, match=match) as info:
            method(X)
        assert "trust" in str(info.value) and "refit" in str(info.value)
    assert all(shape == clf.row_shape_ for shape in built)


def test_a_faithful_file_still_predicts_after_the_checks(fitted_clf, tmp_path):
    clf, X = fitted_clf
    sharing.dump(clf, tmp_path / "clf.skops")
    loaded = sharing.load(tmp_path / "clf.skops")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.score(X, np.arange(8) % 2) == clf.score(X, np.arange(8) % 2)
