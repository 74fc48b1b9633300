"""Tests for featcache.probe.prior_shift: PriorShiftClassifier, the operating point of a target
class prevalence computed from the labels given to fit (Saerens et al. 2002)."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import FixedThresholdClassifier, GridSearchCV, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import estimator_checks_generator

import featcache
from featcache import FrozenBackbone
from featcache.probe import PriorShiftClassifier, ProbeError


@pytest.fixture(scope="module")
def skewed():
    """Binary data with about 75% of class 1, split in train and test."""
    X, y = make_classification(400, 6, weights=[0.25], flip_y=0.05, random_state=1)
    return X[:300], y[:300], X[300:], y[300:]


@pytest.fixture(scope="module")
def three():
    X, y = make_classification(450, 8, n_informative=5, n_classes=3, weights=[0.6, 0.3],
                               random_state=2)
    return X[:300], y[:300], X[300:], y[300:]


# ----------------------------------------------------------------------------- binary
def test_balanced_predicts_as_a_fixed_threshold_at_the_training_prevalence(skewed):
    X, y, Xt, yt = skewed
    shifted = PriorShiftClassifier(LogisticRegression()).fit(X, y)
    prevalence = y.mean()
    assert 0.7 < prevalence < 0.8
    fixed = FixedThresholdClassifier(LogisticRegression(), threshold=prevalence).fit(X, y)
    assert shifted.threshold_ == prevalence
    np.testing.assert_array_equal(shifted.predict(Xt), fixed.predict(Xt))
    np.testing.assert_array_equal(shifted.predict(X), fixed.predict(X))
    # the decision differs from the plain model's at 0.5 (otherwise the test proves nothing)
    assert (shifted.predict(Xt) != shifted.estimator_.predict(Xt)).any()
    np.testing.assert_allclose(shifted.train_prior_, [1 - prevalence, prevalence])
    np.testing.assert_allclose(shifted.target_prior_, [0.5, 0.5])
    np.testing.assert_allclose(shifted.weights_, [0.5 / (1 - prevalence), 0.5 / prevalence])
    # probabilities differ by design, the ranking (AUC) does not
    proba, raw = shifted.predict_proba(Xt), fixed.predict_proba(Xt)
    assert not np.allclose(proba, raw)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    assert roc_auc_score(yt, proba[:, 1]) == roc_auc_score(yt, raw[:, 1])
    # the adjusted probability crosses 0.5 where the wrapped one crosses the prevalence
    np.testing.assert_array_equal(proba[:, 1] >= 0.5, raw[:, 1] >= prevalence)
    np.testing.assert_allclose(shifted.predict_log_proba(Xt), np.log(proba))


def test_adjusted_probabilities_follow_bayes_rule_by_hand():
    X, y = make_classification(200, 4, weights=[0.7], random_state=3)
    shifted = PriorShiftClassifier(LogisticRegression(), target_prior=0.1).fit(X, y)
    t = y.mean()
    p = shifted.estimator_.predict_proba(X)[:, 1]
    odds = p / (1 - p) * (0.1 / t) / (0.9 / (1 - t))
    np.testing.assert_allclose(shifted.predict_proba(X)[:, 1], odds / (1 + odds))
    np.testing.assert_allclose(shifted.target_prior_, [0.9, 0.1])
    expected = t * 0.9 / (t * 0.9 + (1 - t) * 0.1)
    assert shifted.threshold_ == pytest.approx(expected)
    np.testing.assert_array_equal(shifted.predict(X), (p >= shifted.threshold_).astype(int))
    # a rarer positive class in deployment asks more of its probability
    assert shifted.threshold_ > t


def test_a_target_equal_to_the_training_prior_changes_nothing(skewed):
    X, y, Xt, _ = skewed
    same = PriorShiftClassifier(LogisticRegression(), target_prior=float(y.mean())).fit(X, y)
    np.testing.assert_allclose(same.weights_, [1, 1])
    np.testing.assert_allclose(same.predict_proba(Xt), same.estimator_.predict_proba(Xt))
    assert same.threshold_ == pytest.approx(0.5)


def test_string_labels_keep_the_order_of_classes(skewed):
    X, y, Xt, _ = skewed
    names = np.array(["normal", "pneumonia"])[y]
    shifted = PriorShiftClassifier(LogisticRegression(), target_prior=0.3).fit(X, names)
    assert shifted.classes_.tolist() == ["normal", "pneumonia"]
    plain = PriorShiftClassifier(LogisticRegression(), target_prior=0.3).fit(X, y)
    np.testing.assert_array_equal(shifted.predict(Xt), np.array(["normal", "pneumonia"])[
        plain.predict(Xt)])


def test_sample_weight_weights_the_training_prior(skewed):
    X, y, _, _ = skewed
    weight = np.where(y == 1, 1.0, 3.0)
    shifted = PriorShiftClassifier(LogisticRegression()).fit(X, y, sample_weight=weight)
    mass = np.array([3.0 * (y == 0).sum(), (y == 1).sum()])
    np.testing.assert_allclose(shifted.train_prior_, mass / mass.sum())
    assert shifted.threshold_ == pytest.approx(mass[1] / mass.sum())
    with pytest.raises(ProbeError, match="sample_weight must be one finite non-negative"):
        PriorShiftClassifier(LogisticRegression()).fit(X, y, sample_weight=-weight)


# ----------------------------------------------------------------------------- multiclass
def test_multiclass_is_the_argmax_of_weighted_probabilities(three):
    X, y, Xt, _ = three
    target = [0.2, 0.3, 0.5]
    shifted = PriorShiftClassifier(LogisticRegression(max_iter=1000), target_prior=target)
    shifted.fit(X, y)
    train = np.bincount(y) / len(y)
    np.testing.assert_allclose(shifted.train_prior_, train)
    raw = shifted.estimator_.predict_proba(Xt)
    by_hand = raw * (np.array(target) / train)
    by_hand /= by_hand.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shifted.predict_proba(Xt), by_hand)
    np.testing.assert_array_equal(shifted.predict(Xt), by_hand.argmax(axis=1))
    assert (shifted.predict(Xt) != raw.argmax(axis=1)).any()
    assert not hasattr(shifted, "threshold_")
    balanced = PriorShiftClassifier(LogisticRegression(max_iter=1000)).fit(X, y)
    np.testing.assert_allclose(balanced.target_prior_, [1 / 3] * 3)


# ----------------------------------------------------------------------------- a fitted model
def test_a_frozen_estimator_is_wrapped_without_refitting(skewed):
    X, y, Xt, _ = skewed
    fitted = LogisticRegression().fit(X, y)
    coef = fitted.coef_.copy()
    # the labels tell the prior only: fitting on other rows would change the coefficients
    shifted = PriorShiftClassifier(FrozenEstimator(fitted)).fit(X[:50], y[:50])
    assert shifted.estimator_.estimator is fitted
    np.testing.assert_array_equal(fitted.coef_, coef)
    assert shifted.threshold_ == y[:50].mean()
    np.testing.assert_array_equal(shifted.predict(Xt),
                                  (fitted.predict_proba(Xt)[:, 1] >= y[:50].mean()).astype(int))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("target, match", [
    ("uniform", r"must be 'balanced'.*got the string 'uniform'.*target_prior='balanced'"),
    (-0.2, r"target_prior=-0.2 must be the prevalence of the positive class 1, strictly "),
    (1.0, r"strictly between 0 and 1"),
    ([0.5, 0.3, 0.2], r"has 3 values, the estimator has 2 classes.*one prior per class"),
    ([0.7, 0.7], r"must sum to 1, got \[0.7, 0.7\].*divide by the sum"),
    ([1.2, -0.2], r"must all be > 0"),
    ([[0.5, 0.5]], r"one prior per class \(2\)"),
    (True, r"one prior per class \(2\), got True"),
])
def test_bad_target_priors_name_the_fix(skewed, target, match):
    X, y, _, _ = skewed
    with pytest.raises(ProbeError, match=match):
        PriorShiftClassifier(LogisticRegression(), target_prior=target).fit(X, y)


def test_bad_estimators_and_labels_raise_clear_errors(skewed, three):
    X, y, _, _ = skewed
    with pytest.raises(ProbeError, match=r"needs an estimator with fit and predict_proba.*"
                                         r"LinearSVC; wrap it in .*CalibratedClassifierCV"):
        PriorShiftClassifier(LinearSVC()).fit(X, y)
    with pytest.raises(ProbeError, match=r"at least two classes, got binary y .* 1 distinct"):
        PriorShiftClassifier(LogisticRegression()).fit(X[y == 1], y[y == 1])
    with pytest.raises(ProbeError, match=r"at least two classes, got continuous"):
        PriorShiftClassifier(LogisticRegression()).fit(X, y + 0.5)
    with pytest.raises(ProbeError, match=r"requires y to be passed, but the target y is None"):
        PriorShiftClassifier(LogisticRegression()).fit(X, None)
    with pytest.raises(ProbeError, match=r"class\(es\) \[0\] of the estimator have no sample in "
                                         r"y with a positive sample_weight"):
        PriorShiftClassifier(LogisticRegression()).fit(X, y, sample_weight=(y == 1) * 1.0)
    Xm, ym, _, _ = three
    with pytest.raises(ProbeError, match=r"a float, the positive class's prevalence\) needs two "
                                         r"classes, the estimator has 3"):
        PriorShiftClassifier(LogisticRegression(), target_prior=0.3).fit(Xm, ym)
    fitted = LogisticRegression(max_iter=1000).fit(Xm, ym)
    with pytest.raises(ProbeError, match=r"class\(es\) \[2\] of the estimator have no"):
        PriorShiftClassifier(FrozenEstimator(fitted)).fit(Xm[ym < 2], ym[ym < 2])
    with pytest.raises(ProbeError, match=r"y holds labels \['7'\] that the estimator does not"):
        PriorShiftClassifier(FrozenEstimator(fitted)).fit(Xm[:3], [0, 1, 7])


def test_unfitted_use_raises_not_fitted(skewed):
    _, _, Xt, _ = skewed
    shifted = PriorShiftClassifier(LogisticRegression())
    for method in (shifted.predict, shifted.predict_proba, shifted.predict_log_proba):
        with pytest.raises(NotFittedError, match="PriorShiftClassifier instance is not fitted"):
            method(Xt)


# ----------------------------------------------------------------------------- sklearn tools
def test_clone_params_pickle_and_model_selection(skewed):
    X, y, Xt, _ = skewed
    shifted = PriorShiftClassifier(LogisticRegression(C=0.5), target_prior=0.4)
    params = shifted.get_params()
    assert params["target_prior"] == 0.4 and params["estimator__C"] == 0.5
    copy = clone(shifted)
    assert copy is not shifted and copy.get_params()["target_prior"] == 0.4
    assert not hasattr(copy, "estimator_")
    shifted.fit(X, y)
    again = pickle.loads(pickle.dumps(shifted))
    np.testing.assert_array_equal(again.predict_proba(Xt), shifted.predict_proba(Xt))
    assert again.n_features_in_ == X.shape[1]
    search = GridSearchCV(PriorShiftClassifier(LogisticRegression()),
                          {"estimator__C": [0.1, 1.0], "target_prior": ["balanced", 0.3]},
                          cv=3, scoring="balanced_accuracy").fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert isinstance(search.best_estimator_, PriorShiftClassifier)
    scores = cross_validate(PriorShiftClassifier(LogisticRegression()), X, y, cv=3,
                            scoring=["roc_auc", "balanced_accuracy"])
    assert np.all(scores["test_roc_auc"] > 0.5)


def _sklearn_checks():
    """scikit-learn's estimator checks, without the array API one (PriorShiftClassifier
    computes in numpy and does not claim array API support; that check only skips)."""
    return [(estimator, check) for estimator, check
            in estimator_checks_generator(PriorShiftClassifier(LogisticRegression()))
            if getattr(check, "func", check).__name__ != "check_array_api_input"]


@pytest.mark.parametrize("estimator, check", _sklearn_checks(),
                         ids=lambda v: getattr(v, "func", v).__name__
                         if callable(v) and not hasattr(v, "fit") else None)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_exported_from_the_package_and_the_probe():
    assert featcache.PriorShiftClassifier is PriorShiftClassifier
    assert "PriorShiftClassifier" in featcache.probe.__all__
    assert "PriorShiftClassifier" in dir(featcache)


# ----------------------------------------------------------------------------- featcache models
def test_a_frozen_backbone_pipeline_reuses_its_cache(xray, tmp_path, forbid_network):
    images, labels = xray
    images, labels = images[5:], labels[5:]          # 25 normal, 30 pneumonia
    pipe = Pipeline([("backbone", FrozenBackbone(image_size=32, cache=tmp_path, progress=False)),
                     ("clf", LogisticRegression(max_iter=2000))])
    pipe.fit(images, labels)
    assert pipe.named_steps["backbone"].transform_stats_["computed"] == len(images)
    forbid_network()       # every image is cached now: the prior shift never runs the network
    shifted = PriorShiftClassifier(pipe).fit(images, labels)
    assert shifted.estimator_.named_steps["backbone"].transform_stats_["computed"] == 0
    assert shifted.threshold_ == labels.mean()
    fixed = FixedThresholdClassifier(pipe, threshold=labels.mean()).fit(images, labels)
    np.testing.assert_array_equal(shifted.predict(images), fixed.predict(images))
    frozen = PriorShiftClassifier(FrozenEstimator(pipe)).fit(images[::3], labels[::3])
    assert frozen.estimator_.estimator is pipe
    scores = cross_validate(PriorShiftClassifier(pipe), images, labels, cv=3,
                            scoring="balanced_accuracy", error_score="raise")
    assert len(scores["test_score"]) == 3      # three refits, every row read from the cache
