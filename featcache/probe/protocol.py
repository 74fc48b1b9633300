"""Linear-probe protocol: a head on frozen embeddings, selected and reported with confidence.

The recipe of :func:`linear_probe` (the "linear probe" of self-supervised and transfer-learning
papers, made explicit):

1. Standardise the features (``StandardScaler``, fitted on the training rows only, inside a
   :class:`~sklearn.pipeline.Pipeline`).
2. Sweep the head's hyper-parameters: for the default logistic regression, its inverse L2
   strength ``C`` over ``np.logspace(-4, 2, 13)``; for any other head, the ``param_grid`` the
   caller gives (or none). Each candidate is scored with ``scoring`` (ROC AUC by default).
3. Select on the validation split when one is given (fit on train, score on val;
   ``select_on="train"``: by cross-validation within the training split, so the validation
   split stays held out); otherwise by cross-validation over the training rows
   (``StratifiedKFold``, or ``StratifiedGroupKFold`` when ``groups`` are given, so one patient
   never sits on both sides of a fold); ties go to the first candidate (the strongest
   regularisation for ``C``). With ``groups`` and ``groups_val``, a group on both sides of
   the validation split is refused (``group_overlap="warn"``: a
   :class:`~featcache.exceptions.GroupOverlapWarning`, recorded in the report).
4. Report accuracy, balanced accuracy, ROC AUC (one-vs-rest macro for more than two classes)
   and macro F1, each with a 95% percentile-bootstrap confidence interval over the evaluated
   samples (``n_bootstrap`` resamples, seeded; resamples lacking a class are skipped for AUC).

   *With a validation split*, the metrics are those of the head fitted on the training split
   with the chosen hyper-parameters, predicting the validation split. When the same split
   chose the hyper-parameters (the default, ``select_on="val"``) they are optimistic; the
   report says so. *Without one*, nested cross-validation (``nested=True``, the default):
   each outer fold is predicted by a model whose hyper-parameters an inner cross-validation
   chose on the other folds only (``GridSearchCV`` inside ``cross_validate``), and the
   metrics are computed on the pooled outer-fold predictions, so no evaluated sample took
   part in choosing its own model. ``nested=False`` scores the out-of-fold predictions of the
   selecting cross-validation itself (optimistic, and said so). Every report states which
   in ``report.metrics_source`` (``held_out``, ``metrics_from``, ``protocol``).
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

from ..exceptions import GroupOverlapWarning, ProbeError
from . import heads
from .heads import DEFAULT_CS, HEADS, make_head
from .metrics import bootstrap_metrics
from .report import HELD_OUT, METRIC_NAMES, OPTIMISTIC, PLOTS, Metric, ProbeReport, json_float

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


def _check_groups(groups, n, name="groups", rows="X"):
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n:
        raise ProbeError(f"{name} must be one group (patient) per row of {rows} ({n}), "
                         f"got shape {groups.shape}")
    return groups


def check_group_overlap(groups, groups_val, policy) -> dict | None:
    """``{"count", "examples"}`` of groups on both sides of a split (None when none).

    ``policy``: ``"raise"`` refuses with a :class:`ProbeError`, ``"warn"`` issues a
    :class:`~featcache.exceptions.GroupOverlapWarning`; either names the count and examples.
    """
    if policy not in ("raise", "warn"):
        raise ProbeError(f"group_overlap must be 'raise' or 'warn', got {policy!r}")
    if groups is None or groups_val is None:
        return None
    both = sorted(set(np.asarray(groups).tolist()) & set(np.asarray(groups_val).tolist()),
                  key=str)
    if not both:
        return None
    found = {"count": len(both), "examples": both[:5]}
    message = (f"{len(both)} group(s) have rows in both the training and the validation split "
               f"(e.g. {', '.join(map(repr, both[:5]))}): the validation metrics would include "
               "patients the model trained on")
    if policy == "raise":
        raise ProbeError(message + "; split by group (a validation fraction with groups is "
                         "drawn group-aware: val=0.2), or pass group_overlap='warn' to go on "
                         "with the overlap recorded in the report")
    warnings.warn(message + "; recorded in the report (metrics_source['group_overlap'])",
                  GroupOverlapWarning, stacklevel=3)
    return found


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
    return X, y, X_val, y_val, _check_groups(groups, len(X)), classes


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
def linear_probe(X, y, *, groups=None, X_val=None, y_val=None, groups_val=None, head=None,
                 param_grid=None, Cs=None, cv=5, scoring=None, scale=True, refit=True,
                 nested=True, select_on="val", group_overlap="raise", n_bootstrap=1000,
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
        (``StratifiedGroupKFold``), outer and inner folds alike.
    X_val, y_val : arrays, optional
        The validation split: metrics are reported on it, and hyper-parameters chosen on it
        (``select_on="val"``) or by cross-validation on the training rows
        (``select_on="train"``). Without it, both come from ``cv``-fold cross-validation on
        ``X, y`` (nested unless ``nested=False``).
    groups_val : array of shape (n_val,), optional
        Group (patient) of each validation row: with ``groups``, a group on both sides is
        refused or warned about (``group_overlap``).
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
    nested : bool, default=True
        Without a validation split: score by nested cross-validation (outer folds score,
        inner folds choose; ``cv`` folds each), so the metrics come from held-out data. The
        reported sweep and ``estimator_`` are those of a plain cross-validation on all rows.
        False: the out-of-fold predictions of the selecting cross-validation (optimistic).
    select_on : {"val", "train"}, default="val"
        With a validation split: choose on it (its metrics are then optimistic), or by
        cross-validation within the training rows (the validation split stays held out).
    group_overlap : {"raise", "warn"}, default="raise"
        What a group in both ``groups`` and ``groups_val`` does: a :class:`ProbeError`, or a
        :class:`~featcache.exceptions.GroupOverlapWarning` and
        ``report.metrics_source["group_overlap"]``.
    n_bootstrap : int, default=1000
        Bootstrap resamples of the evaluated samples for the 95% intervals (0: no intervals).
    random_state : int, default=0
        Seeds the folds, the bootstrap and the heads' own randomness.
    n_jobs : int, optional
        Parallel fits (joblib).

    Returns
    -------
    ProbeReport
        Metrics with intervals, chosen parameters, the sweep, the evaluated predictions
        (``samples["row"]``: each evaluated sample's position in ``X_val``, or in ``X`` with
        cross-validation) and ``metrics_source``: whether the evaluated samples took part in
        the selection (``held_out``), in words (``metrics_from``) and how (``protocol``).

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
    if select_on not in ("val", "train"):
        raise ProbeError(f"select_on must be 'val' or 'train', got {select_on!r}")
    overlap = None
    if X_val is not None:
        groups_val = _check_groups(groups_val, len(y_val), "groups_val", "X_val")
        overlap = check_group_overlap(groups, groups_val, group_overlap)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", _convergence_warning())
        if X_val is not None:
            split = (_splitter(cv, y, groups, random_state) if select_on == "train" and
                     len(candidates) > 1 else None)
            run = _run_val(pipe, candidates, (X, y, groups, X_val, y_val), split, scorer,
                           classes, n_jobs)
            X_all, y_all = np.vstack([X, X_val]), np.concatenate([y, y_val])
        else:
            run = _run_cv(pipe, candidates, X, y, groups, cv, scorer, classes, n_jobs,
                          random_state, nested)
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
        info={"n_features": X.shape[1], "non_converged_fits": _n_convergence(caught),
              **run.get("info", {})},
        metrics_source={**run["source"], **({"group_overlap": overlap} if overlap else {})},
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


def _source(held_out, protocol) -> dict:
    return {"held_out": held_out, "metrics_from": HELD_OUT if held_out else OPTIMISTIC,
            "protocol": protocol}


def _run_val(pipe, candidates, data, split, scorer, classes, n_jobs):
    """Choose on the validation split (``split`` None) or by ``split`` folds of the training
    rows; predict the validation split with the head fitted on the training split."""
    X, y, groups, X_val, y_val = data
    if split is None:
        scores, best, model = _select_on_val(pipe, candidates, X, y, X_val, y_val, scorer,
                                             n_jobs)
        selection = f"the validation split (n={len(y_val)})"
        chose = "no hyper-parameter to choose" if len(candidates) == 1 else \
            "chosen and scored on the validation split"
        source = _source(len(candidates) == 1, chose)
        note = "chosen on this split too, so optimistic" if len(candidates) > 1 else \
            "nothing was chosen on it"
    else:
        scores, best = _select_by_cv(pipe, candidates, X, y, groups, split, scorer, n_jobs)
        model = heads.clone_with(pipe, candidates[best]).fit(X, y)
        n_splits = split.get_n_splits(X, y, groups)
        selection = (f"{n_splits}-fold {type(split).__name__} within the training split (mean "
                     "fold score)")
        source = _source(True, "chosen by cross-validation within the training split, "
                               "scored on the validation split")
        note = "held out from the choice"
    score, pred = heads.scores(model, X_val, classes)
    return {"scores": scores, "best": best, "y_true": y_val, "score": score, "pred": pred,
            "selection": selection, "source": source,
            "evaluated_on": "the validation split: the head fitted on the training split with "
                            f"the chosen parameters ({note})"}


def _run_cv(pipe, candidates, X, y, groups, cv, scorer, classes, n_jobs, random_state,
            nested=True):
    from sklearn.model_selection import cross_val_predict

    splitter = _splitter(cv, y, groups, random_state)
    scores, best = _select_by_cv(pipe, candidates, X, y, groups, splitter, scorer, n_jobs)
    n_splits = splitter.get_n_splits(X, y, groups)
    run = {"scores": scores, "best": best, "y_true": y,
           "selection": f"{n_splits}-fold {type(splitter).__name__} (mean fold score)"}
    if nested and len(candidates) > 1:
        score, folds = _nested_predictions(pipe, candidates, X, y, groups, splitter, scorer,
                                           classes, n_jobs)
        run.update(score=score, info={"outer_folds": folds}, source=_source(
            True, f"nested cross-validation: {n_splits} outer folds score, {n_splits}-fold "
                  f"{type(splitter).__name__} within each outer training part chooses"),
            evaluated_on="out-of-fold predictions of nested cross-validation: every row "
                         "predicted once by an outer-fold model whose parameters were chosen "
                         "without it")
    else:
        method = heads.score_method(pipe)
        raw = cross_val_predict(heads.clone_with(pipe, candidates[best]), X, y, groups=groups,
                                cv=splitter, method=method, n_jobs=n_jobs)
        score = heads.as_score_matrix(raw, method, classes)
        chose = "no hyper-parameter to choose" if len(candidates) == 1 else \
            "the same cross-validation chose the parameters (not nested)"
        run.update(score=score, source=_source(len(candidates) == 1, chose),
                   evaluated_on="out-of-fold predictions: every row predicted once by the "
                                "fold model that did not see it, at the chosen parameters")
    run["pred"] = run["score"].argmax(axis=1)
    return run


def _nested_predictions(pipe, candidates, X, y, groups, splitter, scorer, classes, n_jobs):
    """Outer-fold scores of a ``GridSearchCV`` (inner folds: ``splitter`` again, on each
    outer training part) run by ``cross_validate``; and each outer fold's choice."""
    from sklearn.model_selection import GridSearchCV, cross_validate

    search = GridSearchCV(pipe, [{k: [v] for k, v in p.items()} for p in candidates],
                          scoring=scorer, cv=splitter, error_score="raise")
    params = None if groups is None else {"groups": groups}
    result = cross_validate(search, X, y, groups=groups, cv=splitter, scoring=scorer,
                            return_estimator=True, return_indices=True, params=params,
                            n_jobs=n_jobs, error_score="raise")
    score = np.full((len(y), len(classes)), np.nan)
    folds = []
    for model, test, outer in zip(result["estimator"], result["indices"]["test"],
                                  result["test_score"]):
        score[test] = heads.scores(model, X[test], classes)[0]
        folds.append({"best_params": heads.strip_prefix(model.best_params_),
                      "inner_score": json_float(model.best_score_),
                      "outer_score": json_float(outer), "n_test": len(test)})
    return score, folds
