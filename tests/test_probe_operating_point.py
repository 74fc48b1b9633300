"""Tests for featcache.probe.operating_point: the one reading of a wrapper's operating point
(response method, threshold, positive class), checked against the wrapper's own ``predict``."""

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import FixedThresholdClassifier, TunedThresholdClassifierCV

from featcache.probe import PriorShiftClassifier, tuned_threshold
from featcache.probe.operating_point import (OperatingPoint, operating_point, unfrozen,
                                             wrapped_estimator)


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(300, 6, weights=[0.35], flip_y=0.05, random_state=3)
    return X[:200], y[:200], X[200:], y[200:]


@pytest.fixture(scope="module")
def fitted(data):
    X, y, _, _ = data
    names = np.where(y == 1, "pneumonia", "normal")
    return (LogisticRegression().fit(X, names), RidgeClassifier().fit(X, names), names)


def _apply(point, inner, X):
    """The class each input gets at ``point``: the positive class where its response is
    ``>= threshold`` (a decision function negated for ``classes_[0]``), else the other."""
    values = np.asarray(getattr(inner, point.response)(X), dtype=float)
    if values.ndim == 2:
        values = values[:, point.positive]
    elif point.positive == 0:
        values = -values
    classes = np.asarray(inner.classes_)
    return np.where(values >= point.threshold, classes[point.positive],
                    classes[1 - point.positive])


def _wrappers(fitted, X, y):
    """(name, wrapper, expected OperatingPoint or None to read the tuned one) around the
    fitted logistic regression and ridge classifier, string labels, each at a point that moves
    predictions."""
    logistic, ridge, names = fitted
    d = logistic.decision_function(X)
    yield "auto", FixedThresholdClassifier(logistic), OperatingPoint("predict_proba", 0.5, 1)
    yield "fitted, 0.3", FixedThresholdClassifier(logistic, threshold=0.3).fit(X, names), \
        OperatingPoint("predict_proba", 0.3, 1)
    yield "classes_[0]", FixedThresholdClassifier(logistic, threshold=0.3,
                                                  pos_label="normal"), \
        OperatingPoint("predict_proba", 0.3, 0)
    yield "decision", FixedThresholdClassifier(logistic, threshold=float(np.quantile(d, 0.7)),
                                               response_method="decision_function"), \
        OperatingPoint("decision_function", float(np.quantile(d, 0.7)), 1)
    yield "decision, classes_[0]", FixedThresholdClassifier(
        logistic, threshold=float(np.quantile(-d, 0.4)), response_method="decision_function",
        pos_label="normal"), OperatingPoint("decision_function", float(np.quantile(-d, 0.4)), 0)
    yield "ridge, auto", FixedThresholdClassifier(ridge), \
        OperatingPoint("decision_function", 0.0, 1)
    yield "frozen", FixedThresholdClassifier(FrozenEstimator(logistic), threshold=0.7), \
        OperatingPoint("predict_proba", 0.7, 1)
    tuned = tuned_threshold(LogisticRegression(), sensitivity=0.9, pos_label="normal", cv=3)
    yield "tuned, scorer's classes_[0]", tuned.fit(X, names), None


def test_the_point_read_is_the_one_predict_applies(fitted, data):
    X, _, Xt, _ = data
    _, _, names = fitted
    for name, wrapper, want in _wrappers(fitted, X, names):
        inner = wrapped_estimator(wrapper)
        point = operating_point(wrapper)
        assert point == operating_point(wrapper, inner), name
        if want is None:  # the tuned one: its best threshold and its scorer's positive class
            want = OperatingPoint("predict_proba", wrapper.best_threshold_, 0)
        assert point == want, name
        np.testing.assert_array_equal(_apply(point, inner, Xt), wrapper.predict(Xt),
                                      err_msg=name)
    plain = fitted[0].predict(Xt)
    moved = _apply(OperatingPoint("predict_proba", 0.3, 0), fitted[0], Xt)
    assert (moved != plain).any()  # the class and threshold matter on these data


def test_a_prior_shift_predicts_at_its_threshold_on_the_wrapped_probability(data):
    X, y, Xt, _ = data
    shifted = PriorShiftClassifier(LogisticRegression()).fit(X, y)
    point = operating_point(shifted)
    assert point == OperatingPoint("predict_proba", shifted.threshold_, 1)
    assert point.threshold == pytest.approx(y.mean())  # "balanced": the training prevalence
    np.testing.assert_array_equal(_apply(point, shifted.estimator_, Xt), shifted.predict(Xt))
    three = np.arange(len(X)) % 3
    multi = PriorShiftClassifier(LogisticRegression()).fit(X, three)
    with pytest.raises(ValueError, match="PriorShiftClassifier has 3 classes: its predict is "
                                         "the class of highest adjusted probability"):
        operating_point(multi)


def test_wrapped_estimator_finds_the_fitted_model_in_every_wrapper(fitted, data):
    X, y, _, _ = data
    logistic = fitted[0]
    assert wrapped_estimator(FixedThresholdClassifier(logistic)) is logistic
    refit = FixedThresholdClassifier(LogisticRegression()).fit(X, y)
    assert wrapped_estimator(refit) is refit.estimator_
    assert wrapped_estimator(FrozenEstimator(logistic)) is logistic
    shifted = PriorShiftClassifier(LogisticRegression()).fit(X, y)
    assert wrapped_estimator(shifted) is shifted.estimator_
    assert wrapped_estimator(logistic) is None
    with pytest.raises(NotFittedError):
        wrapped_estimator(FixedThresholdClassifier(LogisticRegression()))
    with pytest.raises(NotFittedError):
        wrapped_estimator(TunedThresholdClassifierCV(LogisticRegression()))
    with pytest.raises(NotFittedError):
        wrapped_estimator(PriorShiftClassifier(LogisticRegression()))


def test_unfrozen_takes_off_every_frozen_layer(fitted):
    fixed = FixedThresholdClassifier(fitted[0], threshold=0.2)
    assert unfrozen(FrozenEstimator(FrozenEstimator(fixed))) is fixed
    assert unfrozen(fixed) is fixed
    # an unfitted threshold classifier around a fitted model predicts: its point is read
    assert operating_point(unfrozen(FrozenEstimator(fixed))).threshold == 0.2


def test_a_point_that_cannot_be_read_says_why_and_what_to_do(fitted, data):
    X, y, _, _ = data
    logistic, ridge, _ = fitted
    with pytest.raises(ValueError, match=r"FixedThresholdClassifier\(response_method="
                                         r"'predict_proba'\) needs predict_proba of its "
                                         r"estimator, and RidgeClassifier has none; set "
                                         r"response_method"):
        operating_point(FixedThresholdClassifier(ridge, response_method="predict_proba"))
    with pytest.raises(ValueError, match=r"pos_label='lung', which is not one of its "
                                         r"estimator's classes \['normal', 'pneumonia'\]"):
        operating_point(FixedThresholdClassifier(logistic, pos_label="lung"))
    three = LogisticRegression().fit(X, np.arange(len(X)) % 3)
    with pytest.raises(ValueError, match=r"thresholds a binary classifier; its estimator has "
                                         r"classes \[0, 1, 2\]"):
        operating_point(FixedThresholdClassifier(three))
    with pytest.raises(TypeError, match="LogisticRegression sets no operating point; expected "
                                        "a FixedThresholdClassifier"):
        operating_point(logistic)
    with pytest.raises(TypeError, match="FrozenEstimator sets no operating point.*unfrozen"):
        operating_point(FrozenEstimator(FixedThresholdClassifier(logistic)))
