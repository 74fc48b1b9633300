"""Tests for featcache.probe.protocol: the linear-probe protocol, the package's public names,
the benchmark's pipeline."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score,
                             roc_auc_score)
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline

import featcache
import featcache.cli
import featcache.exceptions
import featcache.probe
import featcache.probe.heads
import featcache.probe.report
from featcache import FrozenBackbone
from featcache.probe import DEFAULT_CS, ProbeError, ProbeReport, linear_probe
from featcache.probe.protocol import _splitter

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "pneumoniamnist.py"
FAST = dict(n_bootstrap=50, Cs=[0.01, 0.1, 1.0])


@pytest.fixture(scope="module")
def data():
    """A binary problem: 160 training and 80 validation rows, 12 features."""
    X, y = make_classification(240, 12, n_informative=4, random_state=0)
    return X[:160], y[:160], X[160:], y[160:]


# ----------------------------------------------------------------------------- linear_probe
def test_validation_split_report_matches_sklearn_metrics(data):
    X, y, X_val, y_val = data
    report = linear_probe(X, y, X_val=X_val, y_val=y_val, n_bootstrap=200)
    assert isinstance(report, ProbeReport)
    assert report.n_train == 160 and report.n_val == 80 and report.classes == [0, 1]
    assert report.head == "LogisticRegression" and report.C in DEFAULT_CS
    assert len(report.sweep) == len(DEFAULT_CS) == 13
    best = max(s["score"] for s in report.sweep)
    assert report.sweep[list(DEFAULT_CS).index(report.C)]["score"] == best
    assert list(report.C_sweep) == list(DEFAULT_CS) and report.C_sweep[report.C] == best
    assert "validation split" in report.selection and "validation split" in report.evaluated_on
    proba = report.y_score[:, 1]
    expected = {"roc_auc": roc_auc_score(y_val, proba),
                "accuracy": accuracy_score(y_val, report.y_pred),
                "balanced_accuracy": balanced_accuracy_score(y_val, report.y_pred),
                "f1_macro": f1_score(y_val, report.y_pred, average="macro")}
    assert set(report.metrics) == set(expected)
    for name, value in expected.items():
        m = report.metrics[name]
        assert m.value == pytest.approx(value), name
        assert m.ci_low <= m.value <= m.ci_high and m.ci_high - m.ci_low < 0.5, name
    # the reported predictions are those of the train-only fit at the chosen C ...
    train_only = clone(report.estimator_).fit(X, y)
    np.testing.assert_allclose(train_only.predict_proba(X_val)[:, 1], proba)
    # ... and estimator_ is refitted on train + val
    assert report.estimator_.named_steps["scale"].n_samples_seen_ == 240


def test_bootstrap_is_seeded_and_can_be_switched_off(data):
    X, y, X_val, y_val = data
    a = linear_probe(X, y, X_val=X_val, y_val=y_val, refit=False, **FAST)
    b = linear_probe(X, y, X_val=X_val, y_val=y_val, refit=False, **FAST)
    assert a.metrics == b.metrics and a.estimator_ is None
    c = linear_probe(X, y, X_val=X_val, y_val=y_val, **{**FAST, "n_bootstrap": 0})
    assert c.metrics["accuracy"].value == a.metrics["accuracy"].value
    assert np.isnan(c.metrics["accuracy"].ci_low)
    assert c.to_dict()["metrics"]["accuracy"]["ci_low"] is None      # JSON-safe


def test_cross_validation_reports_out_of_fold_predictions(data):
    X, y, _, _ = data
    report = linear_probe(X, y, cv=4, **FAST)
    assert report.n_train == report.n_val == 160
    assert "4-fold StratifiedKFold" in report.selection
    assert "out-of-fold" in report.evaluated_on
    assert report.metrics["roc_auc"].value == pytest.approx(roc_auc_score(y, report.y_score[:, 1]))


def test_groups_never_straddle_a_fold():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)
    y = np.repeat(rng.integers(0, 2, 30), 4)
    for train, test in _splitter(5, y, groups, 0).split(np.zeros(len(y)), y, groups):
        assert not set(groups[train]) & set(groups[test])
    X = rng.normal(size=(120, 5)) + y[:, None]
    report = linear_probe(X, y, groups=groups, **FAST)
    assert "StratifiedGroupKFold" in report.selection


def test_multiclass_uses_one_vs_rest_macro_auc():
    X, y = make_classification(300, 10, n_informative=5, n_classes=3, random_state=1)
    report = linear_probe(X[:200], y[:200], X_val=X[200:], y_val=y[200:], **FAST)
    assert report.scoring == "roc_auc_ovr" and report.y_score.shape == (100, 3)
    assert report.metrics["roc_auc"].value == pytest.approx(
        roc_auc_score(y[200:], report.y_score, multi_class="ovr", average="macro"))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_non_linear_head_with_its_own_grid(data):
    X, y, X_val, y_val = data
    head = MLPClassifier((16,), max_iter=300, random_state=0)
    report = linear_probe(X, y, X_val=X_val, y_val=y_val, head=head,
                          param_grid={"alpha": [1e-3, 1.0]}, n_bootstrap=20)
    assert report.head == "MLPClassifier" and set(report.best_params) == {"alpha"}
    assert report.C is None and len(report.sweep) == 2 and report.C_sweep == {}
    assert report.metrics["roc_auc"].value > 0.8
    assert head.__dict__.get("coefs_") is None            # the caller's head is not fitted
    knn = linear_probe(X, y, X_val=X_val, y_val=y_val, head="knn", n_bootstrap=20)
    assert knn.head == "KNeighborsClassifier" and "n_neighbors" in knn.best_params


@pytest.mark.parametrize("kwargs, match", [
    (dict(X=np.zeros((4, 2, 2)), y=[0, 1, 0, 1]), "X must be a feature matrix"),
    (dict(X=np.zeros((4, 2)), y=[0, 1, 0]), "one label per row of X"),
    (dict(X=np.zeros((4, 2)), y=[1, 1, 1, 1]), "single class"),
    (dict(X=np.array([[np.nan, 0]] * 4), y=[0, 1, 0, 1]), "NaN"),
    (dict(X=np.zeros((4, 2)), y=[0, 1, 0, 1], X_val=np.zeros((2, 2))), "both X_val and y_val"),
    (dict(X=np.zeros((4, 2)), y=[0, 1, 0, 1], X_val=np.zeros((2, 3)), y_val=[0, 1]),
     "X_val has 3 features"),
    (dict(X=np.zeros((4, 2)), y=[0, 1, 0, 1], X_val=np.zeros((2, 2)), y_val=[0, 2]),
     "absent from y"),
    (dict(X=np.zeros((4, 2)), y=[0, 1, 0, 1], head="mlp", Cs=[1.0]), "Cs= sweeps"),
    (dict(X=np.zeros((4, 2)), y=[0, 1, 0, 1], head="forest"), "not a known head"),
    (dict(X=np.zeros((4, 2)), y=[0, 1, 0, 1], param_grid={"gamma": [1]}), "does not have"),
    (dict(X=np.zeros((4, 2)), y=[0, 1, 0, 1], Cs=[-1]), "positive numbers"),
    (dict(X=np.zeros((4, 2)), y=[0, 1, 0, 1], cv=5), "smallest class has 2 samples"),
    (dict(X=np.zeros((4, 2)), y=["a", None, "b", "a"]), r"y\[1\] is missing \(None\)"),
    (dict(X=np.zeros((4, 2)), y=["a", "b", "b", "a"], X_val=np.zeros((2, 2)),
          y_val=np.array(["a", np.nan], dtype=object)), r"y_val\[1\] is missing \(nan\)"),
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
    X, y = kwargs.pop("X"), kwargs.pop("y")
    with pytest.raises(ProbeError, match=match):
        linear_probe(X, y, n_bootstrap=0, **kwargs)


def test_rows_of_the_evaluated_samples_are_reported(data):
    X, y, X_val, y_val = data
    report = linear_probe(X, y, X_val=X_val, y_val=y_val, refit=False, **FAST)
    np.testing.assert_array_equal(report.samples["row"], np.arange(80))
    cv = linear_probe(X, y, cv=3, refit=False, **FAST)
    np.testing.assert_array_equal(cv.samples["row"], np.arange(160))


# ----------------------------------------------------------------------------- import paths
def test_probe_cache_is_the_cache_front_end_of_the_package():
    import featcache.probe.from_cache

    assert featcache.probe.probe_cache is featcache.probe.from_cache.probe_cache


def test_the_documented_names_of_the_split_modules_import_from_probe():
    documented = ("linear_probe", "ProbeReport", "make_head", "HEADS", "PLOTS", "DEFAULT_CS",
                  "Metric", "METRIC_NAMES", "ProbeError", "probe_cache")
    assert set(documented) <= set(featcache.probe.__all__)
    probe = featcache.probe
    assert probe.make_head is featcache.probe.heads.make_head
    assert probe.HEADS is featcache.probe.heads.HEADS
    assert probe.ProbeReport is ProbeReport is featcache.probe.report.ProbeReport
    assert probe.PLOTS is featcache.probe.report.PLOTS
    for name in featcache.probe.__all__:
        assert getattr(featcache.probe, name) is not None, name
    with pytest.raises(AttributeError, match="'featcache.probe' has no attribute 'nope'"):
        featcache.probe.nope


@pytest.mark.parametrize("module", ["featcache.probe", "featcache.probe.from_cache"])
def test_the_argparse_front_end_lives_in_the_cli_only(module):
    import featcache.cli.probe

    mod = importlib.import_module(module)
    for name in ("add_probe_arguments", "run_probe_command"):
        assert not hasattr(mod, name)
        assert callable(getattr(featcache.cli.probe, name))


def test_probe_error_has_one_home():
    assert ProbeError is featcache.exceptions.ProbeError is featcache.ProbeError
    assert issubclass(ProbeError, featcache.exceptions.FeatcacheError)
    assert issubclass(ProbeError, ValueError)
    assert "ProbeError" in featcache.exceptions.__all__ and "ProbeError" in featcache.__all__


# ----------------------------------------------------------------------------- layers, best
def test_grid_search_over_layers_reads_only_the_cache(xray, tmp_path, monkeypatch):
    import featcache.engine.batches

    images, labels = xray
    images, labels = images[10:50], labels[10:50]
    for layer in ("blocks.5", None):
        backbone = FrozenBackbone(layer=layer, image_size=32, cache=tmp_path, progress=False)
        backbone.fit_transform(images)
        assert backbone.transform_stats_["computed"] == 40

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("the network ran although every row is cached")

    monkeypatch.setattr(featcache.engine.batches, "run_batches", no_forward_pass)
    pipe = Pipeline([("backbone", FrozenBackbone(image_size=32, cache=tmp_path, progress=False)),
                     ("clf", LogisticRegression(max_iter=2000))])
    search = GridSearchCV(pipe, {"backbone__layer": ["blocks.5", None], "clf__C": [0.1, 1]},
                          cv=2, error_score="raise").fit(images, labels)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_params_["backbone__layer"] in ("blocks.5", None)


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("pneumoniamnist_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_best_pipeline_is_the_unfitted_winner_and_fits_the_28px_arrays(xray, tmp_path):
    """Whatever kind wins (a probe Pipeline or a PartiallyFrozenClassifier), best_pipeline()
    returns it unfitted, and it fits and predicts the bundled 28x28 arrays (at a small size).
    A prior shift to balanced classes predicts exactly as a fixed threshold at the training
    prevalence of the labels given to fit (its probabilities are adjusted, their ranking not)."""
    from sklearn.exceptions import NotFittedError
    from sklearn.frozen import FrozenEstimator
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import FixedThresholdClassifier

    from featcache import PartiallyFrozenClassifier
    from featcache.probe import PriorShiftClassifier

    module = _benchmark_module()
    pipe = module.best_pipeline()
    images, labels = xray
    images, labels = images[5:50], labels[5:50]      # 25 normal, 20 pneumonia
    if module.BEST["kind"] == "partial":
        model, prefix = pipe, ""
        if "prior_shift" in module.BEST:  # the winner at the prior shift computed at fit
            assert isinstance(pipe, PriorShiftClassifier)
            assert pipe.target_prior == module.BEST["prior_shift"] == "balanced"
            model, prefix = pipe.estimator, "estimator__"
        elif "threshold" in module.BEST:  # the winner at a fixed decision threshold
            assert isinstance(pipe, FixedThresholdClassifier)
            assert pipe.threshold == module.BEST["threshold"]
            model, prefix = pipe.estimator, "estimator__"
        assert isinstance(model, PartiallyFrozenClassifier)
        assert model.get_params()["trainable_blocks"] == module.BEST["trainable_blocks"]
        with pytest.raises(NotFittedError):
            pipe.predict_proba(images)
        pipe.set_params(**{prefix + k: v for k, v in dict(
            image_size=32, max_epochs=1, cache=tmp_path, progress=False).items()})
    else:
        assert isinstance(pipe, Pipeline) and isinstance(pipe.steps[0][1], FrozenBackbone)
        assert not hasattr(pipe.steps[0][1], "fingerprint_")
        pipe.set_params(backbone__image_size=32, backbone__cache=tmp_path,
                        backbone__progress=False)
    proba = pipe.fit(images, labels).predict_proba(images)
    assert proba.shape == (45, 2) and np.allclose(proba.sum(axis=1), 1)
    if isinstance(pipe, PriorShiftClassifier):
        assert pipe.threshold_ == labels.mean() == 20 / 45
        fixed = FixedThresholdClassifier(FrozenEstimator(pipe.estimator_),
                                         threshold=labels.mean()).fit(images, labels)
        np.testing.assert_array_equal(pipe.predict(images), fixed.predict(images))
        raw = fixed.predict_proba(images)
        assert not np.allclose(proba, raw)
        assert roc_auc_score(labels, proba[:, 1]) == roc_auc_score(labels, raw[:, 1])

# ----------------------------------------------------------------------------- honest numbers
def test_nested_cross_validation_scores_on_rows_that_chose_nothing():
    from featcache.probe.report import HELD_OUT, OPTIMISTIC

    # pure noise with many candidates: picking the best of a sweep on the same folds that
    # score it flatters the noise; the nested estimate does not take part in the choice
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(80, 30)), np.tile([0, 1], 40)
    grid = dict(Cs=np.logspace(-4, 2, 13), n_bootstrap=0, refit=False, cv=4)
    nested = linear_probe(X, y, **grid)
    flat = linear_probe(X, y, nested=False, **grid)
    assert nested.metrics_source["held_out"] is True
    assert nested.metrics_source["metrics_from"] == HELD_OUT
    assert "nested cross-validation: 4 outer folds" in nested.metrics_source["protocol"]
    assert len(nested.info["outer_folds"]) == 4
    assert all(set(f) == {"best_params", "inner_score", "outer_score", "n_test"}
               for f in nested.info["outer_folds"])
    assert flat.metrics_source["held_out"] is False
    assert flat.metrics_source["metrics_from"] == OPTIMISTIC
    assert f"metrics from: {HELD_OUT}" in str(nested) and f"metrics from: {OPTIMISTIC}" in \
        str(flat)
    assert nested.sweep == flat.sweep and nested.best_params == flat.best_params
    assert flat.metrics["roc_auc"].value > nested.metrics["roc_auc"].value
    assert abs(nested.metrics["roc_auc"].value - 0.5) < 0.15


def test_nested_cross_validation_keeps_groups_apart_in_inner_folds(monkeypatch):
    import sklearn.model_selection as ms

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)
    y = np.repeat(rng.integers(0, 2, 30), 4)
    X = rng.normal(size=(120, 5)) + y[:, None]
    seen = []
    original = ms.StratifiedGroupKFold.split

    def spy(self, X, y=None, groups=None):
        for train, test in original(self, X, y, groups):
            seen.append(not set(groups[train]) & set(groups[test]))
            yield train, test

    monkeypatch.setattr(ms.StratifiedGroupKFold, "split", spy)
    report = linear_probe(X, y, groups=groups, refit=False, cv=3, **{**FAST, "n_bootstrap": 0})
    assert report.metrics_source["held_out"] is True
    assert len(seen) >= 3 + 3 * 3 and all(seen)     # outer, inner and the plain selection


def test_every_validation_report_says_whether_the_split_chose(data):
    X, y, X_val, y_val = data
    chose = linear_probe(X, y, X_val=X_val, y_val=y_val, **FAST)
    assert chose.metrics_source["held_out"] is False
    assert "optimistic" in str(chose) and "chosen and scored on the validation split" in \
        str(chose)
    held = linear_probe(X, y, X_val=X_val, y_val=y_val, select_on="train", cv=3, **FAST)
    assert held.metrics_source["held_out"] is True
    assert "3-fold StratifiedKFold within the training split" in held.selection
    single = linear_probe(X, y, X_val=X_val, y_val=y_val, Cs=[1.0], n_bootstrap=0)
    assert single.metrics_source["held_out"] is True     # nothing was chosen on it
    with pytest.raises(ProbeError, match="select_on must be"):
        linear_probe(X, y, X_val=X_val, y_val=y_val, select_on="test")


def test_a_group_on_both_sides_of_the_validation_split_is_refused_or_recorded(data):
    from featcache.exceptions import GroupOverlapWarning

    X, y, X_val, y_val = data
    groups, groups_val = np.arange(160) // 4, np.arange(80) // 4 + 38   # 38, 39 straddle
    with pytest.raises(ProbeError, match=r"2 group\(s\) have rows in both .*e\.g\. 38, 39"):
        linear_probe(X, y, X_val=X_val, y_val=y_val, groups=groups, groups_val=groups_val,
                     **FAST)
    with pytest.warns(GroupOverlapWarning, match="2 group"):
        report = linear_probe(X, y, X_val=X_val, y_val=y_val, groups=groups,
                              groups_val=groups_val, group_overlap="warn", **FAST)
    assert report.metrics_source["group_overlap"] == {"count": 2, "examples": [38, 39]}
    assert report.to_dict()["metrics_source"]["group_overlap"]["count"] == 2
    assert "WARNING: 2 group(s) on both sides of the split" in str(report)
    clean = linear_probe(X, y, X_val=X_val, y_val=y_val, groups=groups,
                         groups_val=groups_val + 100, **FAST)
    assert "group_overlap" not in clean.metrics_source
