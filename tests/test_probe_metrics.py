"""Tests for featcache.probe.metrics: metrics and their bootstrap intervals."""

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from featcache.probe.metrics import auc, bootstrap_metrics, metric_values


def test_metric_values_match_scikit_learn():
    rng = np.random.default_rng(0)
    yi = rng.integers(0, 3, 200)
    score = rng.random((200, 3)) + np.eye(3)[yi] * 0.5
    pi = score.argmax(axis=1)
    got = metric_values(yi, pi, score, 3)
    assert got["accuracy"] == pytest.approx(accuracy_score(yi, pi))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yi, pi))
    assert got["f1_macro"] == pytest.approx(f1_score(yi, pi, average="macro"))
    ovr = np.mean([roc_auc_score(yi == j, score[:, j]) for j in range(3)])
    assert got["roc_auc"] == pytest.approx(ovr)


def test_auc_is_nan_with_one_class_and_the_bootstrap_is_seeded():
    assert math.isnan(auc(np.ones(5, bool), np.arange(5.0)))
    yi = np.array([0, 1] * 20)
    score = np.column_stack([1 - yi * 0.6, yi * 0.6]) + np.linspace(0, 0.3, 40)[:, None]
    a = bootstrap_metrics(yi, score.argmax(axis=1), score, 2, 100, 7)
    b = bootstrap_metrics(yi, score.argmax(axis=1), score, 2, 100, 7)
    assert a == b and a["roc_auc"].ci_low <= a["roc_auc"].value <= a["roc_auc"].ci_high
    none = bootstrap_metrics(yi, score.argmax(axis=1), score, 2, 0, 7)
    assert math.isnan(none["accuracy"].ci_low)
