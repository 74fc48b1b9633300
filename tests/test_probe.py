"""Tests for featcache.probe: the linear-probe protocol, probing a cache, the probe command."""

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score,
                             roc_auc_score)
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline

from featcache import FeatureCache, FrozenBackbone
from featcache.inputs import content_key
from featcache.probe import (DEFAULT_CS, PLOTS, Metric, ProbeError, ProbeReport,
                             _splitter, add_probe_arguments, linear_probe, probe_cache,
                             run_probe_command)

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
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
    X, y = kwargs.pop("X"), kwargs.pop("y")
    with pytest.raises(ProbeError, match=match):
        linear_probe(X, y, n_bootstrap=0, **kwargs)


def test_report_saves_json_predictions_and_plots(data, tmp_path):
    X, y, X_val, y_val = data
    report = linear_probe(X, y, X_val=X_val, y_val=y_val, **FAST)
    out = report.save(tmp_path / "out")
    saved = json.loads((out / "report.json").read_text())
    assert saved["C"] == report.C and saved["n_val"] == 80 and saved["classes"] == [0, 1]
    assert set(saved["metrics"]["roc_auc"]) == {"value", "ci_low", "ci_high"}
    assert [s["params"]["C"] for s in saved["sweep"]] == FAST["Cs"]
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert len((out / "predictions.csv").read_text().splitlines()) == 81
    table = str(report)
    assert "| metric | value | 95% CI |" in table and "| ROC AUC |" in table
    assert f"{report.metrics['accuracy'].value:.4f}" in table
    assert isinstance(report.metrics["accuracy"], Metric)


# ----------------------------------------------------------------------------- probe_cache
def _fill(cache_dir, features, keys, fingerprint="fp_a", sources=None):
    cache = FeatureCache(cache_dir)
    config = {"model": "toy", "layer": "default", "preprocessing": {"image_size": 8}}
    sources = sources or [f"row{i}" for i in range(len(keys))]
    with cache.namespace(fingerprint, config).writer() as writer:
        writer.add(keys, features, sources)
        writer.add_failure(b"\xff" * 16, "broken.png", "truncated file")
    return cache


@pytest.fixture
def toy_cache(tmp_path):
    """100 annotated rows: 70 train, 20 val, 5 test, 5 unlabelled; 25 patients."""
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 50)
    X = rng.normal(size=(100, 6)).astype(np.float32) + y[:, None]
    keys = [bytes([i]) * 16 for i in range(100)]
    cache = _fill(tmp_path / "cache", X, keys)
    split = ["train"] * 70 + ["val"] * 20 + ["test"] * 5 + [None] * 5
    labels = [str(v) for v in y[:95]] + [None] * 5
    cache.annotate(keys, label=labels, split=split, group=[f"p{i // 4}" for i in range(100)])
    return tmp_path / "cache"


def test_probe_cache_uses_annotated_labels_and_splits(toy_cache, tmp_path):
    report = probe_cache(toy_cache, labels="from-cache", val="val", out_dir=tmp_path / "o",
                         **FAST)
    assert (report.n_train, report.n_val) == (70, 20) and report.classes == [0, 1]
    assert report.info["skipped"] == {"without a label": 5, "failed": 1, "test split": 5}
    assert report.info["namespace"] == "fp_a" and report.info["image_size"] == 8
    assert "5 without a label" in str(report)
    assert (tmp_path / "o" / "report.json").is_file()


def test_probe_cache_fraction_and_cross_validation(toy_cache):
    fraction = probe_cache(toy_cache, val=0.2, groups=True, **FAST)
    assert fraction.n_train + fraction.n_val == 90 and 14 <= fraction.n_val <= 22
    assert not fraction.info["notes"]
    cv = probe_cache(toy_cache, val=None, groups=True, cv=3, **FAST)
    assert cv.n_train == cv.n_val == 90 and "StratifiedGroupKFold" in cv.selection
    ungrouped = probe_cache(toy_cache, val=None, cv=3, **FAST)
    assert "StratifiedKFold" in ungrouped.selection
    assert "note: the cache records groups but groups=None" in str(ungrouped)


def test_probe_cache_errors_name_the_fix(toy_cache, tmp_path):
    with pytest.raises(ProbeError, match="no labelled row has split 'holdout'.*val=0.2"):
        probe_cache(toy_cache, val="holdout", **FAST)
    with pytest.raises(ProbeError, match="names a CSV column"):
        probe_cache(toy_cache, groups="patient", **FAST)
    _fill(toy_cache, np.zeros((2, 6), np.float32), [b"\x01" * 16, b"\x02" * 16], "fp_b")
    with pytest.raises(ProbeError, match="holds 2 namespaces: fp_a .*toy.*pass namespace="):
        probe_cache(toy_cache, **FAST)
    with pytest.raises(ProbeError, match="'zz' matches no namespace"):
        probe_cache(toy_cache, "zz", **FAST)
    assert probe_cache(toy_cache, "fp_a", **FAST).n_val == 20


def test_probe_cache_with_a_csv_matches_by_content_key_and_source(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 20)
    paths, keys = [], []
    for i in range(40):
        path = tmp_path / "imgs" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
        keys.append(content_key(path, i))
    X = rng.normal(size=(40, 5)).astype(np.float32) + y[:, None]
    cache = _fill(tmp_path / "cache", X, keys)
    # the last image was moved away: its row is found by its recorded source
    cache.annotate(keys[-1:], source=[str(paths[-1])])
    paths[-1].rename(tmp_path / "moved.png")
    csv = tmp_path / "labels.csv"
    lines = ["path,label,split,patient"] + [
        f"imgs/{i}.png,{'pneumonia' if y[i] else 'normal'},{'val' if i >= 30 else 'train'},"
        f"p{i // 2}" for i in range(40)] + ["imgs/unknown.png,normal,train,p99"]
    csv.write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path / "imgs")    # relative paths resolve from the CSV's folder too
    report = probe_cache(tmp_path / "cache", labels=csv, groups="patient", **FAST)
    assert (report.n_train, report.n_val) == (30, 10)
    assert report.classes == ["normal", "pneumonia"]
    assert report.info["notes"] == ["1 CSV row(s) matched no cached embedding (files not "
                                    "extracted into this namespace, or changed since)"]
    with pytest.raises(ProbeError, match=r"lacks column\(s\) \['ward'\]"):
        probe_cache(tmp_path / "cache", labels=csv, groups="ward", **FAST)


def test_probe_command_prints_the_table_and_writes_the_report(toy_cache, tmp_path, capsys):
    parser = add_probe_arguments(argparse.ArgumentParser(prog="featcache probe"))
    args = parser.parse_args([str(toy_cache), "--val", "val", "--out", str(tmp_path / "r"),
                              "--n-bootstrap", "20", "--head", "logistic"])
    assert run_probe_command(args) == 0
    out = capsys.readouterr().out
    assert "| ROC AUC |" in out and "report.json" in out
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"report.json", *PLOTS}
    assert parser.parse_args([str(toy_cache), "--val", "none"]).val is None
    assert parser.parse_args([str(toy_cache), "--val", "0.25"]).val == 0.25
    with pytest.raises(SystemExit):
        parser.parse_args([str(toy_cache), "--val", "1.5"])
    with pytest.raises(SystemExit):
        parser.parse_args([str(toy_cache), "--head", "forest"])


# ----------------------------------------------------------------------------- layers, best
def test_grid_search_over_layers_reads_only_the_cache(xray, tmp_path, monkeypatch):
    import featcache.engine

    images, labels = xray
    images, labels = images[10:50], labels[10:50]
    for layer in ("blocks.5", None):
        backbone = FrozenBackbone(layer=layer, image_size=32, cache=tmp_path, progress=False)
        backbone.fit_transform(images)
        assert backbone.transform_stats_["computed"] == 40

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("the network ran although every row is cached")

    monkeypatch.setattr(featcache.engine, "run_batches", no_forward_pass)
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


def test_best_pipeline_is_an_unfitted_frozen_backbone_pipeline(xray, tmp_path):
    pipe = _benchmark_module().best_pipeline()
    assert isinstance(pipe, Pipeline) and isinstance(pipe.steps[0][1], FrozenBackbone)
    assert not hasattr(pipe.steps[0][1], "fingerprint_")
    images, labels = xray
    images, labels = images[10:50], labels[10:50]
    pipe.set_params(backbone__image_size=32, backbone__cache=tmp_path, backbone__progress=False)
    proba = pipe.fit(images, labels).predict_proba(images)
    assert proba.shape == (40, 2) and np.allclose(proba.sum(axis=1), 1)
