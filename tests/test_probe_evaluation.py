"""Tests for featcache.probe.evaluation: featcache.evaluate on any fitted classifier, its
calibration numbers, group bootstrap and aggregation, operating points, and scikit-learn's
threshold/calibration/CV tools over a featcache pipeline without running the network again."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, recall_score, roc_auc_score
from sklearn.model_selection import (FixedThresholdClassifier, GroupKFold,
                                     TunedThresholdClassifierCV, cross_validate)
from sklearn.pipeline import Pipeline

import featcache
from featcache import FrozenBackbone, PartiallyFrozenClassifier
from featcache.probe import (PriorShiftClassifier, ProbeError, evaluate, fixed_threshold,
                             tuned_threshold)
from featcache.probe.evaluation import constrained_score, constrained_scorer
from featcache.probe.metrics import _resample, binary_values, reliability
from featcache.probe.report import EVALUATION_PLOTS, HELD_OUT

SIZE = 32
KEYS = {"roc_auc", "accuracy", "balanced_accuracy", "f1_macro", "sensitivity", "specificity",
        "brier", "ece"}


class Fixed(ClassifierMixin, BaseEstimator):
    """A 'fitted' classifier whose positive-class probability is X[:, 0]."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        p = np.asarray(X, dtype=float)[:, 0]
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]


@pytest.fixture(scope="module")
def linear():
    X, y = make_classification(300, 8, random_state=0)
    return LogisticRegression().fit(X[:200], y[:200]), X[200:], y[200:], X[:200], y[:200]


# ----------------------------------------------------------------------------- numbers
def test_calibration_numbers_match_a_hand_computed_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    # two bins, [0, 0.5] and (0.5, 1]: gaps |1/3 - 0.85/3| and |1 - 0.8|, weights 3/4 and 1/4
    cal = reliability(y == 1, p, n_bins=2)
    assert cal["count"] == [3, 1]
    assert cal["prob_true"] == pytest.approx([1 / 3, 1.0])
    assert cal["prob_pred"] == pytest.approx([0.85 / 3, 0.8])
    assert cal["ece"] == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    report = evaluate(Fixed().fit(None, y), p[:, None], y, n_bins=2, n_bootstrap=0)
    m = {k: v.value for k, v in report.metrics.items()}
    assert set(m) == KEYS
    assert m["brier"] == pytest.approx((0.1 ** 2 + 0.4 ** 2 + 0.65 ** 2 + 0.2 ** 2) / 4)
    assert m["ece"] == pytest.approx(0.0875)
    assert m["sensitivity"] == 0.5 and m["specificity"] == 1.0      # 0.35 < 0.5: missed
    assert report.calibration["ece"] == pytest.approx(0.0875)
    assert list(report.samples) == ["row"]      # a feature matrix: rows, not images


def test_metrics_agree_with_scikit_learn_and_say_where_they_come_from(linear, tmp_path):
    clf, X, y, _, _ = linear
    report = evaluate(clf, X, y, held_out=True, n_bootstrap=200, out_dir=tmp_path / "r")
    proba = clf.predict_proba(X)[:, 1]
    expected = {"roc_auc": roc_auc_score(y, proba), "brier": brier_score_loss(y, proba),
                "sensitivity": recall_score(y, clf.predict(X)),
                "specificity": recall_score(y, clf.predict(X), pos_label=0)}
    for name, value in expected.items():
        m = report.metrics[name]
        assert m.value == pytest.approx(value), name
        assert m.ci_low <= m.value <= m.ci_high or name == "ece", name
    assert report.metrics_source == {"held_out": True, "metrics_from": HELD_OUT}
    text = str(report)
    assert text.startswith("evaluation: LogisticRegression on the data given to evaluate")
    assert f"metrics from: {HELD_OUT}" in text and "| sensitivity |" in text
    written = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(written["metrics"]) == KEYS and written["metrics_source"]["held_out"] is True
    assert written["calibration"]["n_bins"] == 10
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.json", "predictions.csv",
                                                            *EVALUATION_PLOTS}
    unknown = evaluate(clf, X, y, n_bootstrap=0)
    assert unknown.metrics_source["held_out"] is None
    assert "not stated" in str(unknown)


def test_decision_function_only_and_multiclass(linear):
    from sklearn.svm import LinearSVC

    _, X, y, Xt, yt = linear
    svm = LinearSVC().fit(Xt, yt)
    report = evaluate(svm, X, y, n_bootstrap=0)
    assert math.isnan(report.metrics["brier"].value) and report.calibration == {}
    assert report.metrics["roc_auc"].value > 0.8 and report.info["probabilities"] is False
    assert "reliability.png" not in report.plot_files()
    X3, y3 = make_classification(200, 6, n_informative=4, n_classes=3, random_state=0)
    multi = evaluate(LogisticRegression().fit(X3, y3), X3, y3, n_bootstrap=10)
    assert set(multi.metrics) == {"roc_auc", "accuracy", "balanced_accuracy", "f1_macro"}
    assert multi.plot_files() == ("roc.png", "confusion_matrix.png")


def test_bad_calls_raise_clear_errors(linear):
    clf, X, y, _, _ = linear
    with pytest.raises(ProbeError, match="labels the estimator never learned"):
        evaluate(clf, X, np.where(y == 1, "yes", "no"), n_bootstrap=0)
    with pytest.raises(ProbeError, match="needs groups="):
        evaluate(clf, X, y, aggregate="mean", n_bootstrap=0)
    with pytest.raises(ProbeError, match="one group"):
        evaluate(clf, X, y, groups=[1, 2], n_bootstrap=0)
    with pytest.raises(ProbeError, match="threshold must be a number"):
        evaluate(clf, X, y, threshold="high", n_bootstrap=0)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="fitted classifier"):
        evaluate(LogisticRegression(), X, y)


# ----------------------------------------------------------------------------- groups
def test_the_group_bootstrap_resamples_whole_groups():
    rng = np.random.default_rng(0)
    members = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5])]
    for _ in range(20):
        idx = _resample(rng, 6, members)
        for m in members:   # a group is drawn whole, or not at all
            assert np.isin(m, idx).all() or not np.isin(m, idx).any()
            counts = [int((idx == i).sum()) for i in m]
            assert len(set(counts)) == 1


def test_groups_widen_the_interval_of_correlated_images(linear):
    clf, X, y, _, _ = linear
    # every patient contributes 10 copies of one image: 10 patients, not 100 samples
    Xg, yg = np.repeat(X[:10], 10, axis=0), np.repeat(y[:10], 10)
    groups = np.repeat([f"p{i}" for i in range(10)], 10)
    naive = evaluate(clf, Xg, yg, n_bootstrap=300)
    grouped = evaluate(clf, Xg, yg, groups=groups, n_bootstrap=300)
    width = lambda r: r.metrics["accuracy"].ci_high - r.metrics["accuracy"].ci_low  # noqa: E731
    assert width(grouped) > 2 * width(naive)
    assert grouped.info["bootstrap"] == "groups"
    assert list(grouped.predictions()["group"][:2]) == ["p0", "p0"]


def test_per_group_aggregation_scores_each_patient():
    p = np.array([0.2, 0.4, 0.9, 0.7, 0.6, 0.1])
    y = np.array([0, 0, 1, 1, 0, 0])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    est = Fixed().fit(None, y)
    report = evaluate(est, p[:, None], y, groups=groups, aggregate="mean", n_bootstrap=0)
    assert report.n_val == 3 and list(report.samples["group"]) == ["a", "b", "c"]
    np.testing.assert_allclose(report.y_score[:, 1], [0.3, 0.8, 0.35])
    assert list(report.samples["n_images"]) == [2, 2, 2]
    assert report.metrics["accuracy"].value == 1.0
    worst = evaluate(est, p[:, None], y, groups=groups, aggregate="max", threshold=0.5,
                     n_bootstrap=0)
    np.testing.assert_allclose(worst.y_score[:, 1], [0.4, 0.9, 0.6])
    assert list(worst.y_pred) == [0, 1, 1]
    assert "each group scored by the max" in worst.evaluated_on
    with pytest.raises(ProbeError, match="group 'a' holds images of 2 classes"):
        evaluate(est, p[:, None], np.array([0, 1, 1, 1, 0, 0]), groups=groups,
                 aggregate="mean", n_bootstrap=0)


# ----------------------------------------------------------------------------- thresholds
def test_threshold_is_read_from_threshold_classifiers_and_numbers(linear):
    clf, X, y, Xt, yt = linear
    fixed = FixedThresholdClassifier(clf, threshold=0.2)
    report = evaluate(fixed, X, y, n_bootstrap=0)
    assert report.operating_point == {"threshold": 0.2, "source": "FixedThresholdClassifier",
                                      "response": "probability", "positive_class": 1}
    np.testing.assert_array_equal(report.y_pred, fixed.predict(X))
    given = evaluate(clf, X, y, threshold=0.2, n_bootstrap=0)
    np.testing.assert_array_equal(given.y_pred, fixed.predict(X))
    assert given.operating_point["source"] == "given"
    assert evaluate(clf, X, y, threshold=fixed, n_bootstrap=0).operating_point["threshold"] == 0.2
    low = evaluate(clf, X, y, threshold=0.05, n_bootstrap=0).metrics
    high = evaluate(clf, X, y, threshold=0.95, n_bootstrap=0).metrics
    assert low["sensitivity"].value > high["sensitivity"].value
    assert low["specificity"].value < high["specificity"].value
    assert "operating point: 1 when the probability >= 0.2 (given)" in str(given)


def _pairs(y):
    """Groups of two images of the same label (a patient's two views)."""
    groups = np.empty(len(y), dtype=object)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        groups[rows] = [f"{c}-{k // 2}" for k in range(len(rows))]
    return groups


def _group_classes(report, groups, response, threshold, positive, negative):
    """Each group's class at the point: its mean response against the threshold."""
    means = np.array([response[groups == g].mean() for g in report.samples["group"]])
    return np.where(means >= threshold, positive, negative), means


def test_a_decision_function_threshold_is_on_the_decision_scale(linear):
    """FixedThresholdClassifier(response_method="decision_function"): the report says
    "decision value", and each image's and each group's class is the one its decision value
    gives, as its own predict, never its probability against that number."""
    clf, X, y, Xt, yt = linear
    fixed = FixedThresholdClassifier(clf, response_method="decision_function", threshold=0.3)
    decision, proba = clf.decision_function(X), clf.predict_proba(X)[:, 1]
    assert ((decision >= 0.3) != (proba >= 0.3)).any()  # the two scales disagree here
    report = evaluate(fixed, X, y, n_bootstrap=0)
    assert report.operating_point == {"threshold": 0.3, "source": "FixedThresholdClassifier",
                                      "response": "decision value", "positive_class": 1}
    assert "operating point: 1 when the decision value >= 0.3 (FixedThresholdClassifier)" \
        in str(report)
    np.testing.assert_array_equal(report.y_pred, fixed.predict(X))
    np.testing.assert_array_equal(report.y_score, clf.predict_proba(X))  # AUC, Brier: probs
    given = evaluate(clf, X, y, threshold=fixed, n_bootstrap=0)
    assert given.operating_point["response"] == "decision value"
    np.testing.assert_array_equal(given.y_pred, fixed.predict(X))
    groups = _pairs(y)
    for model, threshold in ((fixed, None), (clf, fixed)):
        grouped = evaluate(model, X, y, groups=groups, aggregate="mean", threshold=threshold,
                           n_bootstrap=0)
        want, _ = _group_classes(grouped, groups, decision, 0.3, 1, 0)
        on_proba, _ = _group_classes(grouped, groups, proba, 0.3, 1, 0)
        assert (want != on_proba).any()
        np.testing.assert_array_equal(grouped.y_pred, want)
        np.testing.assert_allclose(grouped.y_score[:, 1], _group_classes(
            grouped, groups, proba, 0.3, 1, 0)[1])  # the group's score: its mean probability
    tuned = TunedThresholdClassifierCV(LogisticRegression(), response_method="decision_function",
                                       cv=3).fit(Xt, yt)
    op = evaluate(tuned, X, y, n_bootstrap=0).operating_point
    assert op["response"] == "decision value"
    assert op["threshold"] == pytest.approx(tuned.best_threshold_)


def test_the_first_class_as_a_wrappers_positive_class(linear):
    """pos_label=classes_[0] on a FixedThresholdClassifier, or on the scorer of a tuned one:
    the report's positive class, its sensitivity, and every image's and group's class are
    that class's, given as the estimator or as threshold=."""
    clf, X, y, Xt, yt = linear
    first = FixedThresholdClassifier(clf, threshold=0.3, pos_label=0)
    p0 = clf.predict_proba(X)[:, 0]
    for model, threshold in ((first, None), (clf, first)):
        report = evaluate(model, X, y, threshold=threshold, n_bootstrap=0)
        assert report.operating_point["positive_class"] == 0
        assert "operating point: 0 when the probability >= 0.3" in str(report)
        np.testing.assert_array_equal(report.y_pred, first.predict(X))
        assert report.metrics["sensitivity"].value == pytest.approx(
            recall_score(y, first.predict(X), pos_label=0))
    with pytest.raises(ProbeError, match=r"pos_label=1, but FixedThresholdClassifier predicts "
                                         r"0 where the probability of 0 is >= 0.3.*pass "
                                         r"pos_label=0 or none"):
        evaluate(clf, X, y, threshold=first, pos_label=1, n_bootstrap=0)
    tuned = tuned_threshold(LogisticRegression(), sensitivity=0.9, pos_label=0, cv=3)
    tuned.fit(Xt, yt)
    assert (tuned.predict(X) != (clf.predict_proba(X)[:, 1] >= tuned.best_threshold_)).any()
    report = evaluate(tuned, X, y, n_bootstrap=0)
    assert report.operating_point["positive_class"] == 0
    assert report.metrics["sensitivity"].value == pytest.approx(
        recall_score(y, tuned.predict(X), pos_label=0))
    groups = _pairs(y)
    grouped = evaluate(tuned, X, y, groups=groups, aggregate="mean", n_bootstrap=0)
    t = tuned.best_threshold_
    want, _ = _group_classes(grouped, groups, tuned.estimator_.predict_proba(X)[:, 0], t, 0, 1)
    np.testing.assert_array_equal(grouped.y_pred, want)
    frozen = fixed_threshold(tuned)
    assert frozen.pos_label == 0
    np.testing.assert_array_equal(frozen.predict(X), tuned.predict(X))
    grouped = evaluate(first, X, y, groups=groups, aggregate="mean", n_bootstrap=0)
    np.testing.assert_array_equal(grouped.y_pred,
                                  _group_classes(grouped, groups, p0, 0.3, 0, 1)[0])


def test_a_frozen_threshold_classifier_keeps_its_operating_point(linear):
    from sklearn.frozen import FrozenEstimator

    clf, X, y, _, _ = linear
    fixed = FixedThresholdClassifier(clf, response_method="decision_function", threshold=0.3)
    report = evaluate(FrozenEstimator(fixed), X, y, n_bootstrap=0)
    assert report.head == "FrozenEstimator(FixedThresholdClassifier(LogisticRegression))"
    assert report.operating_point["response"] == "decision value"
    np.testing.assert_array_equal(report.y_pred, fixed.predict(X))
    given = evaluate(clf, X, y, threshold=FrozenEstimator(fixed), n_bootstrap=0)
    np.testing.assert_array_equal(given.y_pred, fixed.predict(X))


def test_a_threshold_on_a_response_the_model_lacks_is_refused(linear):
    clf, X, y, _, _ = linear
    fixed = FixedThresholdClassifier(clf, response_method="decision_function", threshold=0.3)
    only_proba = Fixed().fit(X, y)
    probabilities = np.clip(clf.predict_proba(X)[:, 1:], 0, 1)
    with pytest.raises(ProbeError, match=r"thresholds decision_function of the model, and "
                                         r"Fixed has none; pass threshold= as a number on the "
                                         r"scale of its probabilities"):
        evaluate(only_proba, probabilities, y, threshold=fixed, n_bootstrap=0)
    three = LogisticRegression().fit(X, np.arange(len(X)) % 3)
    with pytest.raises(ProbeError, match="threshold= needs two classes"):
        evaluate(three, X, np.arange(len(X)) % 3, threshold=fixed, n_bootstrap=0)


def test_a_tuned_threshold_reaches_its_target_and_freezes_for_sharing(linear, tmp_path):
    import skops.io as sio

    from featcache.sharing import load

    _, X, y, Xt, yt = linear
    tuned = tuned_threshold(LogisticRegression(), sensitivity=0.95).fit(Xt, yt)
    assert recall_score(yt, tuned.predict(Xt)) >= 0.93
    report = evaluate(tuned, X, y, held_out=True, n_bootstrap=100)
    op = report.operating_point
    assert op["threshold"] == pytest.approx(tuned.best_threshold_)
    assert op["source"] == ("TunedThresholdClassifierCV, highest specificity at "
                            "sensitivity >= 0.95")
    sens = report.metrics["sensitivity"]
    assert sens.ci_low <= sens.value <= sens.ci_high and sens.value >= 0.85
    frozen = fixed_threshold(tuned)
    np.testing.assert_array_equal(frozen.predict(X), tuned.predict(X))
    sio.dump(frozen, tmp_path / "m.skops")
    np.testing.assert_array_equal(load(tmp_path / "m.skops").predict(X), tuned.predict(X))
    balanced = tuned_threshold(LogisticRegression()).fit(Xt, yt)
    assert balanced.scoring == "balanced_accuracy"
    spec = tuned_threshold(LogisticRegression(), specificity=0.98).fit(Xt, yt)
    assert recall_score(yt, spec.predict(Xt), pos_label=0) >= 0.95


def test_a_prior_shift_reports_its_operating_point_and_predicts_exactly():
    X, y = make_classification(400, 6, weights=[0.3], flip_y=0.05, random_state=4)
    model = PriorShiftClassifier(LogisticRegression()).fit(X[:250], y[:250])
    t = y[:250].mean()
    report = evaluate(model, X[250:], y[250:], n_bootstrap=0)
    assert report.operating_point == {
        "threshold": 0.5, "response": "adjusted probability", "wrapped_threshold": t,
        "positive_class": 1,
        "source": f"PriorShiftClassifier, training prior {t:.3f} -> target prior 0.500: the "
                  f"wrapped model's probability >= {t:.3f}"}
    assert report.head == "PriorShiftClassifier(LogisticRegression)"
    pred, truth = model.predict(X[250:]), y[250:]
    np.testing.assert_array_equal(report.y_pred, pred)
    assert (pred != model.estimator_.predict(X[250:])).any()     # not the model at 0.5
    m = report.metrics
    assert m["sensitivity"].value == ((pred == 1) & (truth == 1)).sum() / (truth == 1).sum()
    assert m["specificity"].value == ((pred == 0) & (truth == 0)).sum() / (truth == 0).sum()
    np.testing.assert_array_equal(report.y_score, model.predict_proba(X[250:]))
    assert m["brier"].value == pytest.approx(brier_score_loss(truth, report.y_score[:, 1]))
    assert (f"operating point: 1 when the adjusted probability >= 0.5 (PriorShiftClassifier, "
            f"training prior {t:.3f} -> target prior 0.500") in str(report)
    # class 0 as the positive class: its own priors, the same predictions
    flipped = evaluate(model, X[250:], y[250:], pos_label=0, n_bootstrap=0)
    assert flipped.operating_point["wrapped_threshold"] == pytest.approx(1 - t)
    assert flipped.operating_point["source"].startswith(
        f"PriorShiftClassifier, training prior {1 - t:.3f} -> target prior 0.500")
    np.testing.assert_array_equal(flipped.y_pred, pred)
    three = np.array([0, 1, 2] * 40)
    multi = PriorShiftClassifier(LogisticRegression(), target_prior=[0.5, 0.3, 0.2]).fit(
        X[:120] + three[:, None], three)
    r = evaluate(multi, X[:120] + three[:, None], three, n_bootstrap=0)
    assert r.operating_point == {}
    np.testing.assert_array_equal(r.y_pred, multi.predict(X[:120] + three[:, None]))


def test_constrained_score_prefers_every_feasible_point():
    y = np.array([0, 0, 0, 1, 1])
    assert constrained_score(y, np.array([0, 0, 1, 1, 1]), sensitivity=1.0) == \
        pytest.approx(2 / 3)
    assert constrained_score(y, np.array([0, 0, 0, 1, 0]), sensitivity=1.0) == -0.5
    assert constrained_score(y, np.array([0, 0, 0, 1, 0]), specificity=1.0) == 0.5
    with pytest.raises(ProbeError, match="exactly one"):
        constrained_scorer()
    with pytest.raises(ProbeError, match=r"\(0, 1\]"):
        constrained_scorer(sensitivity=95)


def test_binary_values_without_one_class_are_nan():
    out = binary_values(np.zeros(3, int), np.zeros(3, int), np.full((3, 2), 0.5), 2)
    assert math.isnan(out["sensitivity"]) and out["specificity"] == 1.0
    assert math.isnan(out["brier"]) and math.isnan(out["ece"])


# ----------------------------------------------------------------------------- featcache models
def test_a_frozen_backbone_pipeline_and_sklearn_tools_reuse_the_cache(xray, tmp_path,
                                                                      forbid_network):
    images, labels = xray
    groups = np.arange(60) // 2
    pipe = Pipeline([("backbone", FrozenBackbone(image_size=SIZE, cache=tmp_path,
                                                 progress=False)),
                     ("clf", LogisticRegression(max_iter=2000))])
    pipe.fit(images[::2], labels[::2])
    report = featcache.evaluate(pipe, images[1::2], labels[1::2], groups=groups[1::2],
                                held_out=True, n_bootstrap=50, out_dir=tmp_path / "r")
    assert set(report.metrics) == KEYS and report.head == "Pipeline(FrozenBackbone, " \
                                                           "LogisticRegression)"
    frame = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert list(frame.columns[:3]) == ["key", "source", "group"] and len(frame) == 30
    assert frame["source"][0] == "input 0 (array (28, 28) uint8)"
    forbid_network()     # every image is cached now: no tool below may run the network
    folds = list(GroupKFold(3).split(images, labels, groups))
    tuned = TunedThresholdClassifierCV(pipe, scoring="balanced_accuracy", cv=folds)
    tuned.fit(images, labels)
    calibrated = CalibratedClassifierCV(pipe, cv=3).fit(images, labels)
    scores = cross_validate(pipe, images, labels, groups=groups, cv=GroupKFold(3),
                            scoring="roc_auc")
    assert len(scores["test_score"]) == 3
    for model in (tuned, calibrated):
        r = evaluate(model, images, labels, groups=groups, aggregate="mean", n_bootstrap=20)
        assert r.n_val == 30 and 0 <= r.metrics["roc_auc"].value <= 1
    assert evaluate(tuned, images, labels, n_bootstrap=0).operating_point["threshold"] == \
        pytest.approx(tuned.best_threshold_)


def test_a_partially_frozen_classifier_from_png_files(xray_pngs, tmp_path):
    paths, labels = xray_pngs
    clf = PartiallyFrozenClassifier(image_size=SIZE, max_epochs=1, batch_size=16,
                                    cache=tmp_path / "cache", random_state=0, progress=False)
    clf.fit(paths[::2], labels[::2])
    report = evaluate(clf, paths[1::2], labels[1::2], n_bootstrap=20)
    assert set(report.metrics) == KEYS and report.head == "PartiallyFrozenClassifier"
    assert report.samples["source"][0] == paths[1]
    from featcache.inputs import content_key

    assert report.samples["key"][0] == content_key(paths[1], 0).hex()
