"""The heads a probe trains, their hyper-parameter grids, and how their scores are read.

:func:`make_head` builds a named head (:data:`HEADS`) with its default grid;
:func:`resolve_head` turns ``linear_probe``'s ``head``/``param_grid``/``Cs`` into an estimator
and a checked grid; :func:`pipeline` puts a ``StandardScaler`` before it. scikit-learn is
imported inside the functions, so importing this module costs numpy only.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import ProbeError

__all__ = ["DEFAULT_CS", "HEADS", "make_head", "resolve_head", "pipeline", "candidates",
           "clone_with", "strip_prefix", "scores", "score_method", "as_score_matrix"]

#: The default sweep of the logistic regression's ``C`` (inverse L2 strength).
DEFAULT_CS = np.logspace(-4, 2, 13)


def _logistic_head(random_state):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000), {"C": list(DEFAULT_CS)}


def _mlp_head(random_state):
    from sklearn.neural_network import MLPClassifier

    return (MLPClassifier((256,), early_stopping=True, max_iter=500, random_state=random_state),
            {"alpha": [1e-4, 1e-2, 1.0]})


def _svc_head(random_state):
    from sklearn.svm import SVC

    return SVC(probability=True, random_state=random_state), {"C": [0.1, 1.0, 10.0]}


def _knn_head(random_state):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(weights="distance"), {"n_neighbors": [5, 15, 31]}


# The one list of named heads: name -> builder(random_state) -> (estimator, default grid).
_HEAD_BUILDERS = {"logistic": _logistic_head, "mlp": _mlp_head, "svc": _svc_head,
                  "knn": _knn_head}
#: Head names accepted by :func:`make_head`, ``linear_probe(head=...)`` and ``featcache probe``.
HEADS = tuple(_HEAD_BUILDERS)


def make_head(name="logistic", *, random_state=0):
    """A named head and its default hyper-parameter grid.

    - ``"logistic"``: ``LogisticRegression(max_iter=5000)``; ``C`` in :data:`DEFAULT_CS`
      (1e-4 to 1e2, 13 values).
    - ``"mlp"``: ``MLPClassifier((256,), early_stopping=True, max_iter=500)``; ``alpha`` in
      1e-4, 1e-2, 1.
    - ``"svc"``: ``SVC(probability=True)`` (RBF kernel); ``C`` in 0.1, 1, 10.
    - ``"knn"``: ``KNeighborsClassifier(weights="distance")``; ``n_neighbors`` in 5, 15, 31.

    Parameters
    ----------
    name : {"logistic", "mlp", "svc", "knn"}, default="logistic"
        The head, one of :data:`HEADS`.
    random_state : int or None, default=0
        Seeds the heads with randomness of their own (``"mlp"``, ``"svc"``).

    Returns
    -------
    estimator : classifier
        A new, unfitted scikit-learn classifier.
    param_grid : dict
        Its default hyper-parameter grid (parameter name -> list of values).

    Raises
    ------
    ProbeError
        If ``name`` is not one of :data:`HEADS`.
    """
    if not isinstance(name, str) or name not in _HEAD_BUILDERS:
        raise ProbeError(f"head={name!r} is not a known head; expected one of {', '.join(HEADS)}, "
                         "or pass a scikit-learn classifier instance")
    return _HEAD_BUILDERS[name](random_state)


def resolve_head(head, param_grid, Cs, random_state):
    """``(estimator, grid)`` for ``linear_probe``'s ``head``, ``param_grid`` and ``Cs``."""
    from sklearn.base import clone, is_classifier

    if Cs is not None and head not in (None, "logistic"):
        raise ProbeError(f"Cs= sweeps the logistic-regression head, not head={head!r}; pass "
                         "param_grid={...} with that head's parameters instead")
    if head is None or isinstance(head, str):
        estimator, grid = make_head(head or "logistic", random_state=random_state)
        if Cs is not None:
            grid = {"C": _check_cs(Cs)}
    elif hasattr(head, "fit") and hasattr(head, "get_params") and is_classifier(head):
        estimator, grid = clone(head), {}
    else:
        raise ProbeError(f"head must be a head name ({', '.join(HEADS)}) or a scikit-learn "
                         f"classifier, got {type(head).__name__}; wrap a custom model as a "
                         "ClassifierMixin estimator")
    grid = dict(grid if param_grid is None else param_grid)
    for key, values in grid.items():
        if key not in estimator.get_params():
            raise ProbeError(f"param_grid names {key!r}, which {type(estimator).__name__} does "
                             f"not have; use its parameters: {sorted(estimator.get_params())}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or not len(values):
            raise ProbeError(f"param_grid[{key!r}] must be a non-empty list of values, "
                             f"got {values!r}")
    return estimator, grid


def _check_cs(Cs):
    Cs = np.asarray(Cs, dtype=float).ravel()
    if not len(Cs) or not np.all(np.isfinite(Cs)) or np.any(Cs <= 0):
        raise ProbeError(f"Cs must be a non-empty list of positive numbers, got {Cs!r}; e.g. "
                         "np.logspace(-4, 2, 13)")
    return [float(c) for c in np.sort(Cs)]


def pipeline(estimator, scale):
    """``Pipeline([("scale", StandardScaler()), ("head", estimator)])`` (no scaler if not scale)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [("scale", StandardScaler())] if scale else []
    return Pipeline([*steps, ("head", estimator)])


def candidates(grid) -> list:
    """Every parameter combination of ``grid``, as ``head__<name>`` pipeline parameters."""
    from sklearn.model_selection import ParameterGrid

    return list(ParameterGrid({f"head__{k}": list(v) for k, v in grid.items()}))


def clone_with(pipe, params):
    """A fresh clone of ``pipe`` with ``params`` set."""
    from sklearn.base import clone

    return clone(pipe).set_params(**params)


def strip_prefix(params) -> dict:
    """``{"head__C": 0.1}`` -> ``{"C": 0.1}`` (numpy scalars as Python ones)."""
    return {k.split("__", 1)[1]: (v.item() if isinstance(v, np.generic) else v)
            for k, v in params.items()}


def scores(model, X, classes):
    """(n, k) per-class scores and class-index predictions of a fitted model."""
    if hasattr(model, "predict_proba"):
        score = np.asarray(model.predict_proba(X), dtype=float)
    elif hasattr(model, "decision_function"):
        score = np.asarray(model.decision_function(X), dtype=float)
        if score.ndim == 1:
            score = np.column_stack([-score, score])
    else:
        pred = np.searchsorted(classes, model.predict(X))
        return np.eye(len(classes))[pred], pred
    return score, score.argmax(axis=1)


def score_method(estimator) -> str:
    """The method that gives per-class scores: predict_proba, decision_function or predict."""
    for method in ("predict_proba", "decision_function"):
        if hasattr(estimator, method):
            return method
    return "predict"


def as_score_matrix(raw, method, classes):
    """Output of ``method`` (e.g. from ``cross_val_predict``) as an (n, k) score matrix."""
    raw = np.asarray(raw)
    if method == "predict":
        return np.eye(len(classes))[np.searchsorted(classes, raw)]
    raw = raw.astype(float)
    return np.column_stack([-raw, raw]) if raw.ndim == 1 else raw
