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

The cache-facing half (:func:`~featcache.probe_cache.probe_cache`,
:func:`~featcache.probe_cache.add_probe_arguments`,
:func:`~featcache.probe_cache.run_probe_command`) lives in :mod:`featcache.probe_cache`, which
imports this module. Those names are also reachable from here
(``from featcache.probe import probe_cache``): they are loaded on first access, so that
neither module imports the other while it is being initialised.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import warnings
from numbers import Integral, Real

import numpy as np

from .exceptions import ProbeError

#: Names of :mod:`featcache.probe_cache` also reachable from here, loaded on first access (see
#: ``__getattr__`` at the end: importing them at module level would be an import cycle).
_FROM_PROBE_CACHE = ("probe_cache", "add_probe_arguments", "run_probe_command")

__all__ = ["linear_probe", "ProbeReport", "Metric", "ProbeError", "make_head", "HEADS",
           "DEFAULT_CS", *_FROM_PROBE_CACHE]

#: The default sweep of the logistic regression's ``C`` (inverse L2 strength).
DEFAULT_CS = np.logspace(-4, 2, 13)
METRIC_NAMES = {"roc_auc": "ROC AUC", "accuracy": "accuracy",
                "balanced_accuracy": "balanced accuracy", "f1_macro": "macro F1"}
#: The figures :meth:`ProbeReport.save` writes: ROC curve(s), confusion matrix, selection sweep.
PLOTS = ("roc.png", "confusion_matrix.png", "c_sweep.png")


# ----------------------------------------------------------------------------- report
@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric value with its 95% bootstrap confidence interval (NaN when undefined)."""

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return {k: _json_float(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class ProbeReport:
    """What :func:`linear_probe` measured.

    Attributes
    ----------
    metrics : dict of str -> Metric
        ``roc_auc``, ``accuracy``, ``balanced_accuracy``, ``f1_macro``.
    head : str
        The head's class name.
    best_params : dict
        The chosen hyper-parameters of the head (``{"C": ...}`` for the logistic regression).
    sweep : list of dict
        ``{"params": {...}, "score": float}`` for every candidate, in grid order.
    scoring, selection, evaluated_on : str
        The selection score, how the candidates were compared, what the metrics are computed on.
    n_train, n_val : int
        Training and evaluated samples (with cross-validation both are the number of rows).
    classes : list
        Class labels, in the column order of ``y_score``.
    y_true, y_pred, y_score : ndarray
        The evaluated samples' labels, predictions and per-class scores.
    n_bootstrap, random_state : int
    info : dict
        Extra facts (rows skipped by :func:`probe_cache`, the namespace, timings ...).
    estimator_ : Pipeline or None
        The pipeline refitted on all labelled rows with the chosen hyper-parameters.
    """

    metrics: dict
    head: str
    best_params: dict
    sweep: list
    scoring: str
    selection: str
    evaluated_on: str
    n_train: int
    n_val: int
    classes: list
    y_true: np.ndarray = dataclasses.field(repr=False)
    y_pred: np.ndarray = dataclasses.field(repr=False)
    y_score: np.ndarray = dataclasses.field(repr=False)
    n_bootstrap: int = 1000
    random_state: int | None = 0
    info: dict = dataclasses.field(default_factory=dict)
    estimator_: object = dataclasses.field(default=None, repr=False)

    @property
    def C(self):
        """The chosen ``C`` (None for heads without one)."""
        return self.best_params.get("C")

    @property
    def C_sweep(self) -> dict:
        """``{C: selection score}`` when the sweep is over ``C`` alone, else ``{}``."""
        if any(set(s["params"]) != {"C"} for s in self.sweep):
            return {}
        return {s["params"]["C"]: s["score"] for s in self.sweep}

    def to_dict(self) -> dict:
        """JSON-serialisable summary (no arrays, no estimator)."""
        return _jsonable({
            "head": self.head, "best_params": self.best_params, "C": self.C,
            "scoring": self.scoring, "selection": self.selection,
            "evaluated_on": self.evaluated_on,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "confidence": 0.95, "n_bootstrap": self.n_bootstrap,
            "random_state": self.random_state, "n_train": self.n_train, "n_val": self.n_val,
            "classes": list(self.classes), "sweep": self.sweep, "info": self.info,
        })

    def to_markdown(self) -> str:
        """A caption and a markdown table: metric | value | 95% CI."""
        params = ", ".join(f"{k}={_fmt_param(v)}" for k, v in self.best_params.items())
        lines = [f"probe: {self.head}({params}) chosen by {self.scoring} on {self.selection}",
                 f"n_train={self.n_train}, n_val={self.n_val}, classes: "
                 f"{', '.join(map(str, self.classes))}; "
                 f"metrics on {self.evaluated_on.split(':')[0]}",
                 "", "| metric | value | 95% CI |", "|---|---:|:---:|"]
        for name, m in self.metrics.items():
            lines.append(f"| {METRIC_NAMES.get(name, name)} | {m.value:.4f} | "
                         f"[{m.ci_low:.3f}, {m.ci_high:.3f}] |")
        skipped = self.info.get("skipped")
        if skipped and any(skipped.values()):
            lines += ["", "skipped rows: " + ", ".join(f"{v} {k}" for k, v in skipped.items())]
        lines += [f"note: {note}" for note in self.info.get("notes", [])]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def save(self, out_dir) -> pathlib.Path:
        """Write ``report.json``, ``predictions.csv`` and the :data:`PLOTS` into ``out_dir``."""
        from . import plots

        out = pathlib.Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n", "utf-8")
            self._write_predictions(out / "predictions.csv")
            roc_png, confusion_png, sweep_png = (out / name for name in PLOTS)
            plots.save_figure(plots.plot_roc(self.y_true, self.y_score, self.classes,
                                             title=f"ROC ({self.head})"), roc_png)
            plots.save_figure(plots.plot_confusion_matrix(self.y_true, self.y_pred, self.classes),
                              confusion_png)
            plots.save_figure(plots.plot_sweep(self.sweep, scoring=self.scoring,
                                               chosen=self.best_params,
                                               title=f"{self.head}: selection sweep"),
                              sweep_png)
        except OSError as exc:
            raise ProbeError(f"cannot write the probe report to '{out}': {exc}; pass a "
                             "writable directory as out_dir") from exc
        return out

    def _write_predictions(self, path) -> None:
        import pandas as pd

        frame = pd.DataFrame({"y_true": self.y_true, "y_pred": self.y_pred})
        for k, c in enumerate(self.classes):
            frame[f"score_{c}"] = self.y_score[:, k]
        frame.to_csv(path, index=False)


def _fmt_param(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _json_float(v):
    return None if v is None or not math.isfinite(v) else float(v)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, Integral):
        return int(obj)
    if isinstance(obj, Real):
        return _json_float(float(obj))
    if obj is None or isinstance(obj, str):
        return obj
    return repr(obj)


# ----------------------------------------------------------------------------- metrics
def _auc(positive, score) -> float:
    """ROC AUC of one class by the rank (Mann-Whitney) formula; NaN with one class."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _metric_values(yi, pi, score, k) -> dict:
    """Metrics from class indices (true, predicted) and the (n, k) score matrix."""
    cm = np.bincount(yi * k + pi, minlength=k * k).reshape(k, k)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    present = support > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    if k == 2:
        auc = _auc(yi == 1, score[:, 1])
    else:
        auc = math.nan if not present.all() else \
            float(np.mean([_auc(yi == j, score[:, j]) for j in range(k)]))
    return {"roc_auc": auc, "accuracy": tp.sum() / len(yi),
            "balanced_accuracy": float(np.mean(tp[present] / support[present])),
            "f1_macro": float(f1.mean())}


def _bootstrap_metrics(yi, pi, score, k, n_bootstrap, random_state) -> dict:
    """Point values and 95% percentile-bootstrap intervals of every metric."""
    point = _metric_values(yi, pi, score, k)
    rng = np.random.default_rng(random_state)
    draws = {name: [] for name in point}
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(yi), len(yi))
        for name, value in _metric_values(yi[idx], pi[idx], score[idx], k).items():
            if not math.isnan(value):
                draws[name].append(value)
    out = {}
    for name, value in point.items():
        low, high = np.percentile(draws[name], [2.5, 97.5]) if draws[name] else (math.nan,) * 2
        out[name] = Metric(float(value), float(low), float(high))
    return out


# ----------------------------------------------------------------------------- heads
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


def _resolve_head(head, param_grid, Cs, random_state):
    from sklearn.base import clone, is_classifier

    if Cs is not None and head not in (None, "logistic"):
        raise ProbeError(f"Cs= sweeps the logistic-regression head, not head={head!r}; pass "
                         "param_grid={...} with that head's parameters instead")
    if head is None or isinstance(head, str):
        estimator, grid = make_head(head or "logistic", random_state=random_state)
        if Cs is not None:
            grid = {"C": _check_cs(Cs)}
    elif is_classifier(head) and hasattr(head, "fit"):
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


def _scores(model, X, classes):
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


def _score_method(estimator):
    for method in ("predict_proba", "decision_function"):
        if hasattr(estimator, method):
            return method
    return "predict"


def _as_score_matrix(raw, method, classes):
    raw = np.asarray(raw)
    if method == "predict":
        return np.eye(len(classes))[np.searchsorted(classes, raw)]
    raw = raw.astype(float)
    return np.column_stack([-raw, raw]) if raw.ndim == 1 else raw


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
        Metrics with intervals, chosen parameters, the sweep and the evaluated predictions.

    Examples
    --------
    >>> report = linear_probe(F_train, y_train, X_val=F_val, y_val=y_val)  # doctest: +SKIP
    >>> print(report); report.save("probe-output")                         # doctest: +SKIP
    """
    from sklearn.metrics import check_scoring

    X, y, X_val, y_val, groups, classes = _check_inputs(X, y, X_val, y_val, groups)
    if not isinstance(n_bootstrap, Integral) or n_bootstrap < 0:
        raise ProbeError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    estimator, grid = _resolve_head(head, param_grid, Cs, random_state)
    pipe = _pipeline(estimator, scale)
    candidates = _candidates(grid)
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
        final = _clone_with(pipe, candidates[run["best"]]).fit(X_all, y_all) if refit else None
    _rewarn(caught)
    yi = np.searchsorted(classes, run["y_true"])
    metrics = _bootstrap_metrics(yi, run["pred"], run["score"], len(classes), n_bootstrap,
                                 random_state)
    return ProbeReport(
        metrics=metrics, head=type(estimator).__name__,
        best_params=_strip(candidates[run["best"]]),
        sweep=[{"params": _strip(p), "score": _json_float(s)}
               for p, s in zip(candidates, run["scores"])],
        scoring=scoring if isinstance(scoring, str) else getattr(scoring, "__name__", "score"),
        selection=run["selection"], evaluated_on=run["evaluated_on"],
        n_train=len(X), n_val=len(run["y_true"]), classes=classes.tolist(),
        y_true=run["y_true"], y_pred=classes[run["pred"]], y_score=run["score"],
        n_bootstrap=n_bootstrap, random_state=random_state,
        info={"n_features": X.shape[1], "non_converged_fits": _n_convergence(caught)},
        estimator_=final)


def _pipeline(estimator, scale):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [("scale", StandardScaler())] if scale else []
    return Pipeline([*steps, ("head", estimator)])


def _candidates(grid):
    from sklearn.model_selection import ParameterGrid

    return list(ParameterGrid({f"head__{k}": list(v) for k, v in grid.items()}))


def _clone_with(pipe, params):
    """A fresh clone of ``pipe`` with ``params`` set."""
    from sklearn.base import clone

    return clone(pipe).set_params(**params)


def _strip(params) -> dict:
    return {k.split("__", 1)[1]: (v.item() if isinstance(v, np.generic) else v)
            for k, v in params.items()}


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
    score, pred = _scores(model, X_val, classes)
    return {"scores": scores, "best": best, "y_true": y_val, "score": score, "pred": pred,
            "selection": f"the validation split (n={len(y_val)})",
            "evaluated_on": "the validation split: the head fitted on the training split with "
                            "the chosen parameters (chosen on this split too, so slightly "
                            "optimistic)"}


def _run_cv(pipe, candidates, X, y, groups, cv, scorer, classes, n_jobs, random_state):
    from sklearn.model_selection import cross_val_predict

    splitter = _splitter(cv, y, groups, random_state)
    scores, best = _select_by_cv(pipe, candidates, X, y, groups, splitter, scorer, n_jobs)
    method = _score_method(pipe)
    raw = cross_val_predict(_clone_with(pipe, candidates[best]), X, y, groups=groups,
                            cv=splitter, method=method, n_jobs=n_jobs)
    score = _as_score_matrix(raw, method, classes)
    n_splits = splitter.get_n_splits(X, y, groups)
    return {"scores": scores, "best": best, "y_true": y, "score": score,
            "pred": score.argmax(axis=1),
            "selection": f"{n_splits}-fold {type(splitter).__name__} (mean fold score)",
            "evaluated_on": "out-of-fold predictions: every row predicted once by the fold "
                            "model that did not see it, at the chosen parameters"}


# ----------------------------------------------------------------------------- lazy names
# The cache-facing half lives in featcache.probe_cache, which imports this module; importing it
# here at module level would be a cycle. Its public names are loaded on first access instead
# (PEP 562), so ``from featcache.probe import probe_cache`` keeps working.
def __getattr__(name):
    if name in _FROM_PROBE_CACHE:
        from importlib import import_module

        value = getattr(import_module(".probe_cache", __package__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_FROM_PROBE_CACHE})
