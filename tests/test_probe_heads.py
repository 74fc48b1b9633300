"""Tests for featcache.probe.heads: the named heads, their grids, reading their scores."""

import numpy as np
import pytest
from sklearn.base import is_classifier
from sklearn.linear_model import LogisticRegression

from featcache.exceptions import ProbeError
from featcache.probe.heads import (DEFAULT_CS, HEADS, as_score_matrix, make_head, resolve_head,
                                   scores)


@pytest.mark.parametrize("name", HEADS)
def test_make_head_builds_every_named_head(name):
    estimator, grid = make_head(name, random_state=3)
    assert is_classifier(estimator) and grid
    assert set(grid) <= set(estimator.get_params())
    assert all(len(values) for values in grid.values())
    if name in ("mlp", "svc"):  # the heads with randomness of their own are seeded
        assert estimator.random_state == 3


@pytest.mark.parametrize("name", ["forest", "", ["mlp"], None])
def test_make_head_rejects_unknown_names(name):
    with pytest.raises(ProbeError, match="not a known head; expected one of logistic, mlp, svc, "
                                         "knn, or pass a scikit-learn classifier"):
        make_head(name)


def test_resolve_head_sorts_cs_and_clones_instances():
    estimator, grid = resolve_head(None, None, [1.0, 0.01], 0)
    assert grid == {"C": [0.01, 1.0]}
    _, default = resolve_head("logistic", None, None, 0)
    assert default == {"C": list(DEFAULT_CS)}
    mine = LogisticRegression(C=3.0)
    estimator, grid = resolve_head(mine, None, None, 0)
    assert estimator is not mine and estimator.C == 3.0 and grid == {}
    with pytest.raises(ProbeError, match="head must be a head name"):
        resolve_head(object(), None, None, 0)


def test_scores_of_a_decision_function_become_two_columns():
    raw = np.array([-1.0, 2.0])
    np.testing.assert_array_equal(as_score_matrix(raw, "decision_function", [0, 1]),
                                  [[1.0, -1.0], [-2.0, 2.0]])
    np.testing.assert_array_equal(as_score_matrix(np.array(["b", "a"]), "predict", ["a", "b"]),
                                  [[0, 1], [1, 0]])
    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    score, pred = scores(model, [[0.0], [3.0]], np.array([0, 1]))
    assert score.shape == (2, 2) and list(pred) == [0, 1]
