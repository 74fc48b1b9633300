"""PartiallyFrozenClassifier / PartiallyFrozenRegressor: scikit-learn behaviour and the cache."""

import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError

from featcache import FeatureCache, PartiallyFrozenClassifier, PartiallyFrozenRegressor
from featcache.exceptions import InputError

SIZE = 32


def _clf(tmp_path, **params):
    defaults = dict(image_size=SIZE, max_epochs=2, batch_size=16, cache=tmp_path / "cache",
                    random_state=0, progress=False)
    return PartiallyFrozenClassifier(**{**defaults, **params})


@pytest.fixture(scope="module")
def toy():
    """48 RGB 32 px images whose class is a bright top band (0) or not (1)."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 200, size=(48, SIZE, SIZE, 3), dtype=np.uint8)
    y = np.array(["normal", "pneumonia"] * 24)
    X[y == "normal", :10] = 255
    return X, y


def test_fit_predict_and_the_classifier_api(tmp_path, toy):
    X, y = toy
    clf = _clf(tmp_path, trainable_blocks=2, max_epochs=4).fit(X, y)
    assert list(clf.classes_) == ["normal", "pneumonia"]
    assert clf.n_stages_ == 7 and clf.stages_[0] == "blocks.0"
    assert clf.cut_layer_ == "blocks.4" and clf.row_shape_ == (112, 2, 2)
    (ns,) = [i for i in FeatureCache(tmp_path / "cache").info()
             if i["fingerprint"] == clf.prefix_fingerprint_]
    assert clf.prefix_precision_ == ns["config"]["precision"]  # fp32 on a CPU, bf16 on a GPU
    proba = clf.predict_proba(X)
    assert proba.shape == (48, 2) and np.allclose(proba.sum(axis=1), 1)
    assert clf.decision_function(X).shape == (48,)
    assert set(clf.predict(X)) <= set(clf.classes_)
    assert clf.score(X, y) >= 0.9
    assert len(clf.loss_curve_) == clf.n_iter_ == 4 and clf.best_epoch_ == 4
    assert clf.validation_scores_ is None
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_multiclass_labels(tmp_path, toy):
    X, _ = toy
    y = np.arange(48) % 3
    clf = _clf(tmp_path, trainable_blocks=0).fit(X, y)
    assert list(clf.classes_) == [0, 1, 2]
    assert clf.predict_proba(X).shape == (48, 3)
    assert clf.decision_function(X).shape == (48, 3)


def test_the_prefix_runs_once_per_cut_across_a_grid_search(tmp_path, toy, monkeypatch):
    import featcache.engine.batches as engine

    X, y = toy
    counted = []
    real = engine.run_batches

    def counting(extractor, items, positions, **kwargs):
        counted.append(len(positions))
        return real(extractor, items, positions, **kwargs)

    monkeypatch.setattr(engine, "run_batches", counting)
    search = GridSearchCV(_clf(tmp_path, max_epochs=1),
                          {"trainable_blocks": [0, 1], "learning_rate": [1e-3, 3e-4]}, cv=3)
    search.fit(X, y)
    # 2 cut points x 48 images: every image went through each frozen prefix exactly once,
    # although 2 x 2 candidates x 3 folds + the refit trained on the cache.
    assert sum(counted) == 2 * 48
    assert search.best_estimator_.predict(X).shape == (48,)


def test_same_seed_same_predictions_and_pickles_carry_trained_arrays(tmp_path, toy):
    import torch

    X, y = toy
    a = _clf(tmp_path, trainable_blocks=1).fit(X, y)
    b = _clf(tmp_path, trainable_blocks=1).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert all(isinstance(v, np.ndarray) for v in a.tail_state_.values())
    blob = pickle.dumps(a)
    assert b"torch.nn" not in blob and b"torch._utils" not in blob
    restored = pickle.loads(blob)
    assert "_tail" not in restored.__dict__
    np.testing.assert_array_equal(restored.predict_proba(X), a.predict_proba(X))
    joblib.dump(a, tmp_path / "model.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "model.joblib").predict(X), a.predict(X))
    assert isinstance(a._fitted_tail(), torch.nn.Module)


def test_a_different_seed_trains_a_different_model(tmp_path, toy):
    X, y = toy
    a = _clf(tmp_path, trainable_blocks=0, random_state=0).fit(X, y)
    b = _clf(tmp_path, trainable_blocks=0, random_state=1).fit(X, y)
    assert not np.array_equal(a.predict_proba(X), b.predict_proba(X))


def test_clone_and_params(tmp_path):
    clf = _clf(tmp_path, trainable_blocks=3)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    twin.set_params(trainable_blocks=1, learning_rate=1e-3)
    assert twin.trainable_blocks == 1 and clf.trainable_blocks == 3


@pytest.mark.parametrize("params, match", [
    ({"trainable_blocks": 8}, "has 7 stages"),
    ({"trainable_blocks": -1}, "trainable_blocks"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"batchnorm": "maybe"}, "batchnorm"),
    ({"cache_dtype": "int8"}, "cache_dtype"),
    ({"device": "gpu"}, "device"),
    ({"verify_inputs": "mtime"}, "verify_inputs"),
    ({"tta_views": -1}, r"'tta_views' parameter .* must be an int in the range \[0, inf\)"),
    ({"tta_views": 1.5}, "tta_views"),
])
def test_invalid_parameters_are_named(tmp_path, toy, params, match):
    X, y = toy
    with pytest.raises(InvalidParameterError, match=match):
        _clf(tmp_path, **params).fit(X[:8], y[:8])


def test_not_fitted_and_bad_targets(tmp_path, toy):
    X, y = toy
    with pytest.raises(NotFittedError):
        _clf(tmp_path).predict(X)
    with pytest.raises(ValueError, match="48 images but y"):
        _clf(tmp_path).fit(X, y[:10])
    with pytest.raises(ValueError, match="at least 2 classes"):
        _clf(tmp_path).fit(X, np.zeros(48))


def test_early_stopping_keeps_the_best_epoch(tmp_path, toy):
    X, y = toy
    clf = _clf(tmp_path, trainable_blocks=0, max_epochs=20, early_stopping=True,
               validation_fraction=0.25, n_iter_no_change=2, tol=10.0).fit(X, y)
    # tol=10 means no epoch after the first improves enough: it stops after 1 + 2 epochs
    assert clf.n_iter_ == 3 and clf.best_epoch_ == 1
    assert len(clf.validation_scores_) == 3 and len(clf.loss_curve_) == 3


def test_balanced_class_weights_change_the_loss(tmp_path, toy):
    X, y = toy
    y = np.where(np.arange(48) < 40, "a", "b")
    plain = _clf(tmp_path, trainable_blocks=0).fit(X, y)
    balanced = _clf(tmp_path, trainable_blocks=0, class_weight="balanced").fit(X, y)
    assert plain.loss_curve_[0] != balanced.loss_curve_[0]
    weighted = _clf(tmp_path, trainable_blocks=0, class_weight={"a": 1.0, "b": 5.0}).fit(X, y)
    assert weighted.loss_curve_[0] != plain.loss_curve_[0]


def test_cached_maps_are_float16_by_default_and_recorded(tmp_path, toy):
    X, y = toy
    _clf(tmp_path, trainable_blocks=1).fit(X, y)
    _clf(tmp_path, trainable_blocks=1, cache_dtype="float32").fit(X, y)
    info = {i["config"].get("storage", "float32"): i for i in FeatureCache(tmp_path / "cache").info()}
    assert set(info) == {"float16", "float32"}
    assert info["float16"]["config"]["row_shape"] == [192, 1, 1]
    assert info["float16"]["fingerprint"] != info["float32"]["fingerprint"]
    assert info["float16"]["bytes"] < info["float32"]["bytes"]


def test_streaming_from_the_shards_gives_the_same_model(tmp_path, toy):
    X, y = toy
    held = _clf(tmp_path, trainable_blocks=1).fit(X, y)
    streamed = _clf(tmp_path, trainable_blocks=1, max_memory=1024).fit(X, y)
    assert held.fit_stats_["in_memory"] and not streamed.fit_stats_["in_memory"]
    np.testing.assert_array_equal(held.predict_proba(X), streamed.predict_proba(X))


def test_without_a_cache_the_activations_stay_in_memory(tmp_path, toy):
    X, y = toy
    a = _clf(tmp_path, trainable_blocks=1, cache=False).fit(X, y)
    b = _clf(tmp_path, trainable_blocks=1).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not (tmp_path / "nothing").exists()


def test_augment_views_are_cached_once_each(tmp_path, toy, monkeypatch):
    import featcache.engine.batches as engine

    X, y = toy
    clf = _clf(tmp_path, trainable_blocks=1, augment_views=2).fit(X, y)
    assert clf.fit_stats_["computed"] == 3 * 48
    fps = {i["config"].get("augment", {}).get("view", 0) for i in FeatureCache(tmp_path / "cache").info()}
    assert fps == {0, 1, 2}
    monkeypatch.setattr(engine, "run_batches", lambda *a, **k: pytest.fail("prefix ran again"))
    import featcache.engine.unit_of_work as unit_of_work  # where the unit of work hashes

    hashed = []
    real_key = unit_of_work.content_key
    monkeypatch.setattr(unit_of_work, "content_key",
                        lambda *a, **k: hashed.append(1) or real_key(*a, **k))
    again = _clf(tmp_path, trainable_blocks=1, augment_views=2).fit(X, y)
    assert again.fit_stats_["computed"] == 0
    assert len(hashed) == len(X)  # each input hashed once for its three views
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    plain = _clf(tmp_path, trainable_blocks=1).fit(X, y)
    assert not np.array_equal(plain.predict_proba(X), clf.predict_proba(X))


def _per_view_outputs(est, X, views):
    """The tail's outputs for each of the ``views + 1`` views of X, shape (views + 1, n, out),
    from the cached prefix rows (each must be cached already) through the fitted tail."""
    import torch

    from featcache.inputs import as_items

    acts = est._activations(as_items(X), est._run_options(), views=views)
    assert acts.computed == 0 and acts.n_views == views + 1
    tail = est._fitted_tail().eval()
    out = []
    with torch.no_grad():
        for v in range(views + 1):
            rows = acts.rows(np.arange(len(X)), np.full(len(X), v))
            out.append(tail(torch.from_numpy(rows)).numpy())
    return np.stack(out)


def test_tta_views_average_the_probabilities_of_the_cached_views(tmp_path, toy, monkeypatch):
    import featcache.engine.batches as engine

    X, y = toy
    clf = _clf(tmp_path, trainable_blocks=1).fit(X, y)
    plain = clf.predict_proba(X)
    counted = []
    real = engine.run_batches
    monkeypatch.setattr(engine, "run_batches", lambda extractor, items, positions, **kw:
                        counted.append(len(positions)) or real(extractor, items, positions, **kw))
    tta = clf.set_params(tta_views=2).predict_proba(X)
    assert sum(counted) == 2 * 48  # views 1 and 2 of each image; view 0 was cached by fit
    views = {i["config"].get("augment", {}).get("view", 0)
             for i in FeatureCache(tmp_path / "cache").info()}
    assert views == {0, 1, 2}
    logits = _per_view_outputs(clf, X, 2)
    assert not np.allclose(logits[1], logits[0], atol=1e-3)  # the views differ
    proba = np.exp(logits - logits.max(axis=2, keepdims=True))
    proba /= proba.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(tta, proba.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(plain, proba[0], atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-3  # averaging over views changed the probabilities
    decision = clf.decision_function(X)
    np.testing.assert_allclose(decision, np.log(tta[:, 1] / tta[:, 0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[(decision > 0).astype(int)])
    # Every view is cached now: predicting again computes nothing, with the same numbers.
    monkeypatch.setattr(engine, "run_batches", lambda *a, **k: pytest.fail("prefix ran again"))
    np.testing.assert_array_equal(clf.predict_proba(X), tta)
    np.testing.assert_array_equal(clf.set_params(tta_views=0).predict_proba(X), plain)


def test_tta_views_of_a_multiclass_classifier_and_a_regressor(tmp_path, toy):
    X, _ = toy
    y3 = np.arange(48) % 3
    clf = _clf(tmp_path, trainable_blocks=0, tta_views=1).fit(X, y3)
    tta = clf.predict_proba(X)  # computes and caches view 1 (fit cached view 0)
    logits = _per_view_outputs(clf, X, 1)
    proba = np.exp(logits - logits.max(axis=2, keepdims=True))
    proba /= proba.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(tta, proba.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(clf.decision_function(X), np.log(proba.mean(axis=0)), atol=1e-5)
    target = X[:, :10].mean(axis=(1, 2, 3)) / 255.0
    reg = PartiallyFrozenRegressor(trainable_blocks=1, image_size=SIZE, max_epochs=2,
                                   batch_size=16, cache=tmp_path / "cache", random_state=0,
                                   tta_views=2, progress=False).fit(X, target)
    pred = reg.predict(X)
    outs = _per_view_outputs(reg, X, 2)[:, :, 0] * reg.y_scale_[0] + reg.y_mean_[0]
    assert pred.shape == (48,) and np.abs(outs[1] - outs[0]).max() > 1e-4
    np.testing.assert_allclose(pred, outs.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reg.set_params(tta_views=0).predict(X), outs[0], rtol=1e-5,
                               atol=1e-6)


def test_tta_views_survive_pickle_and_skops(tmp_path, toy):
    from featcache import sharing

    X, y = toy
    clf = _clf(tmp_path, trainable_blocks=1, tta_views=2).fit(X, y)
    want = clf.predict_proba(X)
    restored = pickle.loads(pickle.dumps(clf))
    assert restored.tta_views == 2 and "_tail" not in restored.__dict__
    np.testing.assert_array_equal(restored.predict_proba(X), want)
    sio = pytest.importorskip("skops.io")
    sharing.dump(clf, tmp_path / "clf.skops")
    assert set(sio.get_untrusted_types(file=tmp_path / "clf.skops")) <= set(sharing.TRUSTED_TYPES)
    loaded = sharing.load(tmp_path / "clf.skops")
    assert loaded.tta_views == 2
    np.testing.assert_array_equal(loaded.predict_proba(X), want)


def test_unreadable_inputs_with_skip(tmp_path, toy):
    X, y = toy
    paths = []
    from PIL import Image
    for i in range(12):
        p = tmp_path / f"{i}.png"
        Image.fromarray(X[i]).save(p)
        paths.append(str(p))
    (tmp_path / "3.png").write_bytes(b"not a png")
    clf = _clf(tmp_path, trainable_blocks=0, on_error="skip")
    with pytest.warns(UserWarning, match="1 of 12 training inputs could not be read"):
        clf.fit(paths, y[:12])
    proba = clf.predict_proba(paths)
    assert np.isnan(proba[3]).all() and not np.isnan(np.delete(proba, 3, axis=0)).any()
    with pytest.raises(InputError, match="no class"):
        clf.predict(paths)
    with pytest.raises(InputError, match="3.png"):
        _clf(tmp_path, trainable_blocks=0).fit(paths, y[:12])


def test_regressor(tmp_path, toy):
    X, _ = toy
    target = X[:, :10].mean(axis=(1, 2, 3)) / 255.0
    for loss in ("squared_error", "huber"):
        reg = PartiallyFrozenRegressor(trainable_blocks=1, image_size=SIZE, max_epochs=6,
                                       batch_size=16, cache=tmp_path / "cache", random_state=0,
                                       learning_rate=1e-3, loss=loss, progress=False).fit(X, target)
        pred = reg.predict(X)
        assert pred.shape == (48,) and np.isfinite(pred).all()
        assert reg.score(X, target) > 0.5
    two = PartiallyFrozenRegressor(trainable_blocks=0, image_size=SIZE, max_epochs=2,
                                   cache=tmp_path / "cache", random_state=0, progress=False)
    assert two.fit(X, np.c_[target, -target]).predict(X).shape == (48, 2)
    with pytest.raises(ValueError, match=r"y\[0\] is missing \(nan\)"):
        two.fit(X, np.full(48, np.nan))
    with pytest.raises(ValueError, match=r"y\[3\] is not finite \(inf\)"):
        two.fit(X, np.where(np.arange(48) == 3, np.inf, target))


def test_a_weights_file_changed_since_fit_is_refused(tmp_path, toy):
    import torch

    from featcache.exceptions import FeatcacheError
    from featcache.partial.network import pretrained_network
    from featcache.backbones import get_backbone

    X, y = toy
    ckpt = tmp_path / "lite0.pt"
    torch.save(pretrained_network(get_backbone("efficientnet_lite0"), "DEFAULT").state_dict(), ckpt)
    clf = _clf(tmp_path, trainable_blocks=0, weights=str(ckpt)).fit(X, y)
    state = torch.load(ckpt)
    state["conv_stem.weight"] += 1.0
    torch.save(state, ckpt)
    with pytest.raises(FeatcacheError, match="changed since fit"):
        clf.predict(X)


def test_sklearn_parameter_checks():
    from sklearn.utils import estimator_checks as ec

    for est in (PartiallyFrozenClassifier(), PartiallyFrozenRegressor()):
        name = type(est).__name__
        ec.check_no_attributes_set_in_init(name, est)
        ec.check_parameters_default_constructible(name, est)
        ec.check_get_params_invariance(name, est)
        ec.check_set_params(name, est)
        ec.check_estimator_repr(name, est)
        ec.check_estimator_cloneable(name, est)


@pytest.mark.gpu
def test_on_a_gpu_fp32_matches_the_cpu_and_a_seed_repeats(tmp_path, toy):
    X, y = toy
    cpu = _clf(tmp_path, device="cpu", precision="fp32").fit(X, y)
    gpu = _clf(tmp_path, device="cuda", precision="fp32").fit(X, y)
    again = _clf(tmp_path, device="cuda", precision="fp32").fit(X, y)
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=2e-2)
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), atol=2e-2)
    np.testing.assert_array_equal(again.predict_proba(X), gpu.predict_proba(X))
    assert gpu.fit_stats_["computed"] == 0, "the GPU fit reads the rows the CPU fit cached"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_a_gpu(tmp_path, toy, precision):
    X, y = toy
    reference = _clf(tmp_path, device="cuda", precision="fp32").fit(X, y)
    mixed = _clf(tmp_path, device="cuda", precision=precision).fit(X, y)
    assert mixed.prefix_precision_ == precision and reference.prefix_precision_ == "fp32"
    assert np.isfinite(mixed.loss_curve_).all()
    np.testing.assert_allclose(mixed.loss_curve_[0], reference.loss_curve_[0], rtol=0.1)
    proba = mixed.predict_proba(X)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba, reference.predict_proba(X), atol=0.15)


@pytest.mark.parametrize("cache", ["dir", False])
def test_a_broken_input_given_twice_is_failed_twice_and_never_trains(tmp_path, toy, cache):
    """The same truncated file twice and a byte-identical copy: every one of its positions is
    left out of training and gets NaN probabilities (it used to train on a NaN row)."""
    from PIL import Image

    X, y = toy
    paths = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        Image.fromarray(X[i]).save(p)
        paths.append(str(p))
    broken = (tmp_path / "0.png").read_bytes()[:60]
    (tmp_path / "broken.png").write_bytes(broken)
    (tmp_path / "broken copy.png").write_bytes(broken)
    paths += [str(tmp_path / "broken.png"), str(tmp_path / "broken.png"),
              str(tmp_path / "broken copy.png")]
    labels = np.r_[y[:8], y[:3]]
    clf = _clf(tmp_path, trainable_blocks=0, on_error="skip",
               cache=tmp_path / "cache" if cache else False)
    with pytest.warns(UserWarning, match="3 of 11 training inputs could not be read"):
        clf.fit(paths, labels)
    assert np.isfinite(clf.loss_curve_).all()
    assert clf.fit_stats_["failed"] == 3
    proba = clf.predict_proba(paths)
    assert np.isnan(proba[8:]).all() and np.isfinite(proba[:8]).all()
    assert sorted(clf.failures_) == [8, 9, 10]


def _poison_cache(tmp_path, X, value):
    """A cache whose row of X[0] (at the cut of trainable_blocks=1) holds ``value``."""
    from featcache.inputs import as_items, content_key

    fitted = _clf(tmp_path, trainable_blocks=1, cache_dtype="float32").fit(X[1:8], np.arange(7) % 2)
    cache = FeatureCache(tmp_path / "cache")
    ns = cache.namespace(fitted.prefix_fingerprint_)
    row = np.full((1, int(np.prod(fitted.row_shape_))), value, dtype=np.float32)
    with ns.writer() as writer:
        writer.add([content_key(as_items(X[:1])[0], 0)], row, ["poisoned"])


@pytest.mark.parametrize("max_memory", ["auto", 1024])
def test_non_finite_training_rows_are_refused(tmp_path, toy, max_memory):
    """A cached activation holding inf (a float16 overflow, a damaged cache) never trains: the
    fit stops with NonFiniteError naming the input, held in memory or streamed."""
    from featcache.exceptions import NonFiniteError

    X, y = toy
    _poison_cache(tmp_path, X, np.inf)
    clf = _clf(tmp_path, trainable_blocks=1, cache_dtype="float32", max_memory=max_memory)
    with pytest.raises(NonFiniteError, match=r"training input 0 .*non-finite.*cache"):
        clf.fit(X[:8], np.arange(8) % 2)
    assert not hasattr(clf, "tail_state_")


def test_a_diverging_fit_is_an_error_not_a_nan_model(tmp_path, toy):
    from featcache.exceptions import NonFiniteError

    X, y = toy
    clf = _clf(tmp_path, trainable_blocks=1, learning_rate=1e30, head_learning_rate=1e30)
    with pytest.raises(NonFiniteError, match=r"in epoch \d.*diverged.*learning_rate"):
        clf.fit(X[:16], y[:16])
    assert not hasattr(clf, "tail_state_")


def _no_prefix(monkeypatch):
    import featcache.engine.batches as engine

    monkeypatch.setattr(engine, "run_batches", lambda *a, **k: pytest.fail("the prefix ran"))


@pytest.mark.parametrize("n, fraction", [(4, 0.9), (2, 0.6), (3, 0.7)])
def test_an_impossible_validation_split_is_refused_before_extraction(tmp_path, toy, monkeypatch,
                                                                     n, fraction):
    X, y = toy
    _no_prefix(monkeypatch)
    clf = _clf(tmp_path, trainable_blocks=0, early_stopping=True, validation_fraction=fraction)
    with pytest.raises(InvalidParameterError,
                       match=rf"validation_fraction={fraction} .*{n} training image"):
        clf.fit(X[:n], y[:n])
    assert not (tmp_path / "cache").exists()


def test_a_validation_split_emptied_by_failed_inputs_is_named(tmp_path, toy):
    from PIL import Image

    X, y = toy
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(X[i]).save(p)
        paths.append(str(p))
    (tmp_path / "1.png").write_bytes(b"broken")
    clf = _clf(tmp_path, trainable_blocks=0, early_stopping=True, validation_fraction=0.5,
               on_error="skip")
    with pytest.warns(UserWarning, match="1 of 4"), \
            pytest.raises(InvalidParameterError,
                          match=r"validation_fraction=0.7 .*3 readable training"):
        _clf(tmp_path, trainable_blocks=0, early_stopping=True, validation_fraction=0.7,
             on_error="skip").fit(paths, y[:4])
    clf.fit(paths, y[:4])  # 3 readable images: 1 to train, 2 to validate
    assert clf.n_iter_ >= 1


@pytest.mark.parametrize("label", [None, float("nan")])
def test_a_missing_label_is_named_before_extraction(tmp_path, toy, monkeypatch, label):
    from featcache.exceptions import TargetError

    X, y = toy
    _no_prefix(monkeypatch)
    labels = y[:8].astype(object)
    labels[5] = label
    with pytest.raises(TargetError, match=r"y\[5\] is missing \((None|nan)\)"):
        _clf(tmp_path).fit(X[:8], labels)
    assert not (tmp_path / "cache").exists()


def test_the_new_errors_are_public_featcache_errors():
    import featcache
    import featcache.exceptions as exceptions

    for name in ("NonFiniteError", "TargetError", "InvalidModelError", "SchedulerLostError"):
        error = getattr(featcache, name)
        assert error is getattr(exceptions, name) and name in exceptions.__all__
        assert issubclass(error, exceptions.FeatcacheError) and name in featcache.__all__


def test_fit_stats_keep_loading_apart_and_a_batch_log_sees_every_step(tmp_path, toy, monkeypatch,
                                                                       capsys):
    """stderr under pytest is no terminal: lines, here one per update (interval 0)."""
    from collections import OrderedDict

    import featcache.backbones.loading as loading
    import featcache.partial.network as network

    X, y = toy
    for memo in (network, "_MEMO"), (loading, "_NETWORKS"), (loading, "_LOADED"):
        monkeypatch.setattr(*memo, OrderedDict())  # this process loads both networks anew
    monkeypatch.setenv("FEATCACHE_PROGRESS_INTERVAL", "0")
    cold = _clf(tmp_path, trainable_blocks=1, progress=None).fit(X, y)
    stats = cold.fit_stats_
    assert stats["computed"] == 48 and stats["load_seconds"] > 0 and stats["prefix_seconds"] > 0
    parts = stats["load_seconds"] + stats["prefix_seconds"] + sum(stats["epoch_seconds"])
    assert parts <= stats["seconds"]
    err = capsys.readouterr().err.splitlines()
    loaded = [line for line in err if line.startswith("featcache: loaded efficientnet_lite0 ")]
    assert len(loaded) == 2, err  # the tail's source network, and the prefix's folded one
    assert "featcache (0 cached): 48/48 img (100%)" in "\n".join(err)
    training = [line for line in err if line.startswith("featcache training: ")]
    assert [line.split(" (")[0] for line in training[:-1]] == [
        f"featcache training: {n}/6 batch" for n in range(1, 7)]
    assert training[0].endswith("epoch=1/2") and "epoch=2/2, loss=" in training[3]
    assert training[-1].startswith("featcache training: done 6/6 batch in ")
    assert training[-1].endswith(f", epoch=2/2, loss={cold.loss_curve_[-1]:.4g}")  # the last

    warm = _clf(tmp_path, trainable_blocks=1, progress=None).fit(X, y)
    assert warm.fit_stats_["computed"] == 0 and warm.fit_stats_["load_seconds"] == 0
    assert "loaded" not in capsys.readouterr().err  # held by this process: nothing loaded
    _clf(tmp_path, trainable_blocks=1, progress=False).fit(X, y)
    assert capsys.readouterr().err == ""
