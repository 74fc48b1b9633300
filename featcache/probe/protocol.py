"""Linear-probe protocol: a head on frozen embeddings, selected and reported with confidence.

The recipe of :func:`linear_probe` (the "linear probe" of self-supervised and transfer-learning
papers, made explicit):

1. Standardise the features (``StandardScaler``, fitted on the training rows only, inside a
   :class:`~sklearn.pipeline.Pipeline`).
2. Sweep the head's hyper-parameters: for the default logistic regression, its inverse L2
   strength ``C`` over ``np.logspace(-4, 2, 13)``; for any other head, the ``param_grid`` the
   caller gives (or none). Each candidate is scored with ``scoring`` (ROC AUC by default).
3. Select on the validation split when one is given (fit on train, score on val); otherwise by
   cross-validation over the training rows (``StratifiedKFold``, or ``StratifiedGroupKFold``
   when ``groups`` are given, so one patient never sits on both sides of a fold); ties go to
   the first candidate (the strongest regularisation for ``C``).
4. Report accuracy, balanced accuracy, ROC AUC (one-vs-rest macro for more than two classes)
   and macro F1, each with a 95% percentile-bootstrap confidence interval over the evaluated
   samples (``n_bootstrap`` resamples, seeded; resamples lacking a class are skipped for AUC).

   *With a validation split*, the metrics are those of the head fitted on the training split
   with the chosen hyper-parameters, predicting the validation split. As the same split chose
   the hyper-parameters they are slightly optimistic; keep a test split aside for the final
   number. *Without one*, they are computed on the pooled out-of-fold predictions of the
   cross-validation at the chosen hyper-parameters (each sample predicted once, by the fold
   model that did not see it).
5. Refit the pipeline with the chosen hyper-parameters on train + validation (all rows in the
   cross-validation case): ``report.estimator_``, for use on new data.

The probe package is split by job: this module is the protocol (validation, selection, the
run); :mod:`featcache.probe.heads` the heads and their grids; :mod:`featcache.probe.metrics`
the metrics and their bootstrap; :mod:`featcache.probe.report` the :class:`ProbeReport` and its
files; :mod:`featcache.probe.from_cache` probing a cache namespace. The ``featcache probe``
command is in :mod:`featcache.cli.probe`.
"""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np

from ..exceptions import ProbeError
from . import heads
from .heads import DEFAULT_CS, HEADS, make_head
from .metrics import bootstrap_metrics
from .report import METRIC_NAMES, PLOTS, Metric, ProbeReport, json_float

__all__ = ["linear_probe", "ProbeReport", "Metric", "ProbeError", "make_head", "HEADS",
           "DEFAULT_CS", "PLOTS", "METRIC_NAMES"]


# ----------------------------------------------------------------------------- validation
def _check_xy(X, y, names=("X", "y")):
    from sklearn.utils import check_array

    if not hasattr(X, "shape") or len(getattr(X, "shape", ())) != 2:
        X = np.asarray(X)
    if X.ndim != 2:
        raise ProbeError(f"{names[0]} must be a feature matrix of shape (n_samples, n_features), "
                         f"got shape {X.shape}; embed images first (FrozenBackbone.transform)")
    try:
        X = check_array(X, dtype=np.float64, input_name=names[0])
    except ValueError as exc:
        raise ProbeError(f"{names[0]}: {exc} Drop failed rows (NaN) before probing.") from exc
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or len(y) != len(X):
        raise ProbeError(f"{names[1]} must be one label per row of {names[0]} ({len(X)}), got "
                         f"shape {y.shape}")
    missing = [i for i, v in enumerate(y.tolist()) if v is None or v != v]  # None, NaN
    if missing:
        raise ProbeError(f"{names[1]}[{missing[0]}] is missing ({y[missing[0]]!r}); "
                         f"{len(missing)} of the {len(y)} labels are missing (None or NaN): "
                         f"drop those rows of {names[0]} with their labels")
    return X, y


def _check_inputs(X, y, X_val, y_val, groups):
    X, y = _check_xy(X, y)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ProbeError(f"y holds a single class ({classes.tolist()}); a probe needs at "
                         "least two classes")
    if (X_val is None) != (y_val is None):
        raise ProbeError("pass both X_val and y_val (a validation split), or neither "
                         "(cross-validation)")
    if X_val is not None:
        X_val, y_val = _check_xy(X_val, y_val, ("X_val", "y_val"))
        if X_val.shape[1] != X.shape[1]:
            raise ProbeError(f"X_val has {X_val.shape[1]} features but X has {X.shape[1]}; "
                             "embed both with the same backbone configuration")
        unseen = np.setdiff1d(np.unique(y_val), classes)
        if len(unseen):
            raise ProbeError(f"y_val holds classes absent from y: {unseen.tolist()}; every "
                             "validation class needs training examples")
        if len(np.unique(y_val)) < 2:
            raise ProbeError("y_val holds a single class; ROC AUC and the selection need "
                             "both classes in the validation split")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.ndim != 1 or len(groups) != len(X):
            raise ProbeError(f"groups must be one group (patient) per row of X ({len(X)}), "
                             f"got shape {groups.shape}")
    return X, y, X_val, y_val, groups, classes


def _splitter(cv, y, groups, random_state):
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if not isinstance(cv, Integral):
        return cv
    if cv < 2:
        raise ProbeError(f"cv must be at least 2 folds, got {cv}")
    smallest = np.unique(y, return_counts=True)[1].min()
    if smallest < cv:
        raise ProbeError(f"the smallest class has {smallest} samples but cv={cv} folds need "
                         f"at least {cv}; pass a smaller cv or more data")
    if groups is None:
        return StratifiedKFold(cv, shuffle=True, random_state=random_state)
    if len(np.unique(groups)) < cv:
        raise ProbeError(f"groups holds {len(np.unique(groups))} distinct groups but cv={cv} "
                         "folds need at least as many; pass a smaller cv")
    return StratifiedGroupKFold(cv, shuffle=True, random_state=random_state)


# ----------------------------------------------------------------------------- selection
def _fit_score(pipe, params, X, y, X_val, y_val, scorer):
    from sklearn.base import clone

    model = clone(pipe).set_params(**params).fit(X, y)
    return model, float(scorer(model, X_val, y_val))


def _select_on_val(pipe, candidates, X, y, X_val, y_val, scorer, n_jobs):
    from joblib import Parallel, delayed

    results = Parallel(n_jobs=n_jobs)(
        delayed(_fit_score)(pipe, p, X, y, X_val, y_val, scorer) for p in candidates)
    scores = np.array([s for _, s in results])
    best = int(np.nanargmax(scores))
    return scores, best, results[best][0]


def _select_by_cv(pipe, candidates, X, y, groups, splitter, scorer, n_jobs):
    from sklearn.model_selection import GridSearchCV

    search = GridSearchCV(pipe, [{k: [v] for k, v in p.items()} for p in candidates],
                          scoring=scorer, cv=splitter, refit=False, n_jobs=n_jobs,
                          error_score="raise")
    search.fit(X, y, groups=groups)
    scores = np.asarray(search.cv_results_["mean_test_score"], dtype=float)
    return scores, int(np.nanargmax(scores))


def _default_scoring(n_classes):
    return "roc_auc" if n_classes == 2 else "roc_auc_ovr"


# ----------------------------------------------------------------------------- the probe
def linear_probe(X, y, *, groups=None, X_val=None, y_val=None, head=None, param_grid=None,
                 Cs=None, cv=5, scoring=None, scale=True, refit=True, n_bootstrap=1000,
                 random_state=0, n_jobs=None) -> ProbeReport:
    """Fit and evaluate a head on frozen features, the linear-probe way (see the module doc).

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Training features (finite; drop failed NaN rows first).
    y : array of shape (n_samples,)
        Training labels (any hashable values; at least two classes).
    groups : array of shape (n_samples,), optional
        Group (patient) of each training row; cross-validation keeps a group within one fold
        (``StratifiedGroupKFold``). Used only when there is no validation split.
    X_val, y_val : arrays, optional
        The validation split: hyper-parameters are chosen on it and metrics reported on it.
        Without it, both come from ``cv``-fold cross-validation on ``X, y``.
    head : {"logistic", "mlp", "svc", "knn"}, a scikit-learn classifier, or None
        None or ``"logistic"``: ``LogisticRegression`` with a sweep of ``C``. A name picks a
        head and its default grid (:func:`make_head`). A classifier instance (e.g.
        ``MLPClassifier(...)``, ``SVC(probability=True)``, ``KNeighborsClassifier()``) is
        cloned and used with ``param_grid`` (or as it is). Heads with ``predict_proba`` or
        ``decision_function`` give ROC AUCs; predictions are the class of highest score.
    param_grid : dict, optional
        The head's own parameter names -> lists of values, e.g. ``{"alpha": [1e-4, 1e-2]}``
        for an MLP; replaces the default grid.
    Cs : sequence of float, optional
        The ``C`` values for the logistic regression; default ``np.logspace(-4, 2, 13)``.
    cv : int or CV splitter, default=5
        Folds when there is no validation split.
    scoring : str or callable, optional
        Selection score (a scikit-learn scorer); default ROC AUC (``"roc_auc_ovr"``, macro,
        for more than two classes). Higher is better; ties go to the first candidate.
    scale : bool, default=True
        Put a ``StandardScaler`` before the head.
    refit : bool, default=True
        Refit on train + validation (or all rows) with the chosen parameters:
        ``report.estimator_``. False leaves it None (faster).
    n_bootstrap : int, default=1000
        Bootstrap resamples of the evaluated samples for the 95% intervals (0: no intervals).
    random_state : int, default=0
        Seeds the folds, the bootstrap and the heads' own randomness.
    n_jobs : int, optional
        Parallel fits (joblib).

    Returns
    -------
    ProbeReport
        Metrics with intervals, chosen parameters, the sweep and the evaluated predictions
        (``samples["row"]``: each evaluated sample's position in ``X_val``, or in ``X`` with
        cross-validation).

    Examples
    --------
    >>> report = linear_probe(F_train, y_train, X_val=F_val, y_val=y_val)  # doctest: +SKIP
    >>> print(report); report.save("probe-output")                         # doctest: +SKIP
    """
    from sklearn.metrics import check_scoring

    X, y, X_val, y_val, groups, classes = _check_inputs(X, y, X_val, y_val, groups)
    if not isinstance(n_bootstrap, Integral) or n_bootstrap < 0:
        raise ProbeError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    estimator, grid = heads.resolve_head(head, param_grid, Cs, random_state)
    pipe = heads.pipeline(estimator, scale)
    candidates = heads.candidates(grid)
    scoring = scoring or _default_scoring(len(classes))
    scorer = check_scoring(pipe, scoring=scoring)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", _convergence_warning())
        if X_val is not None:
            run = _run_val(pipe, candidates, X, y, X_val, y_val, scorer, classes, n_jobs)
            X_all, y_all = np.vstack([X, X_val]), np.concatenate([y, y_val])
        else:
            run = _run_cv(pipe, candidates, X, y, groups, cv, scorer, classes, n_jobs,
                          random_state)
            X_all, y_all = X, y
        best = candidates[run["best"]]
        final = heads.clone_with(pipe, best).fit(X_all, y_all) if refit else None
    _rewarn(caught)
    yi = np.searchsorted(classes, run["y_true"])
    metrics = bootstrap_metrics(yi, run["pred"], run["score"], len(classes), n_bootstrap,
                                random_state)
    return ProbeReport(
        metrics=metrics, head=type(estimator).__name__,
        best_params=heads.strip_prefix(best),
        sweep=[{"params": heads.strip_prefix(p), "score": json_float(s)}
               for p, s in zip(candidates, run["scores"])],
        scoring=scoring if isinstance(scoring, str) else getattr(scoring, "__name__", "score"),
        selection=run["selection"], evaluated_on=run["evaluated_on"],
        n_train=len(X), n_val=len(run["y_true"]), classes=classes.tolist(),
        y_true=run["y_true"], y_pred=classes[run["pred"]], y_score=run["score"],
        n_bootstrap=n_bootstrap, random_state=random_state,
        info={"n_features": X.shape[1], "non_converged_fits": _n_convergence(caught)},
        samples={"row": np.arange(len(run["y_true"]))}, estimator_=final)


def _convergence_warning():
    from sklearn.exceptions import ConvergenceWarning

    return ConvergenceWarning


def _n_convergence(caught) -> int:
    return sum(issubclass(w.category, _convergence_warning()) for w in caught)


def _rewarn(caught) -> None:
    """Re-issue the warnings of the fits, convergence ones once, summarised."""
    n = _n_convergence(caught)
    for w in caught:
        if not issubclass(w.category, _convergence_warning()):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if n:
        warnings.warn(f"{n} fit(s) of the sweep stopped before converging (their scores are "
                      "still valid but may be slightly off); raise the head's max_iter to "
                      "silence this", _convergence_warning(), stacklevel=3)


def _run_val(pipe, candidates, X, y, X_val, y_val, scorer, classes, n_jobs):
    scores, best, model = _select_on_val(pipe, candidates, X, y, X_val, y_val, scorer, n_jobs)
    score, pred = heads.scores(model, X_val, classes)
    return {"scores": scores, "best": best, "y_true": y_val, "score": score, "pred": pred,
            "selection": f"the validation split (n={len(y_val)})",
            "evaluated_on": "the validation split: the head fitted on the training split with "
                            "the chosen parameters (chosen on this split too, so slightly "
                            "optimistic)"}


def _run_cv(pipe, candidates, X, y, groups, cv, scorer, classes, n_jobs, random_state):
    from sklearn.model_selection import cross_val_predict

    splitter = _splitter(cv, y, groups, random_state)
    scores, best = _select_by_cv(pipe, candidates, X, y, groups, splitter, scorer, n_jobs)
    method = heads.score_method(pipe)
    raw = cross_val_predict(heads.clone_with(pipe, candidates[best]), X, y, groups=groups,
                            cv=splitter, method=method, n_jobs=n_jobs)
    score = heads.as_score_matrix(raw, method, classes)
    n_splits = splitter.get_n_splits(X, y, groups)
    return {"scores": scores, "best": best, "y_true": y, "score": score,
            "pred": score.argmax(axis=1),
            "selection": f"{n_splits}-fold {type(splitter).__name__} (mean fold score)",
            "evaluated_on": "out-of-fold predictions: every row predicted once by the fold "
                            "model that did not see it, at the chosen parameters"}

