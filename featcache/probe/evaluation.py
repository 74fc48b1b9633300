"""One evaluation report for any fitted classifier, and an operating point a clinician can use.

:func:`evaluate` scores any fitted scikit-learn classifier (a ``Pipeline`` with
:class:`~featcache.FrozenBackbone`, a :class:`~featcache.PartiallyFrozenClassifier`, a
``FixedThresholdClassifier``, ``TunedThresholdClassifierCV`` or
:class:`~featcache.probe.PriorShiftClassifier` around either, anything with ``predict_proba``
or ``decision_function``) on labelled data and returns the probe's
:class:`~featcache.probe.report.ProbeReport`: ROC AUC, accuracy, balanced accuracy, macro F1,
and for two classes sensitivity, specificity, Brier score and expected calibration error, each
with a 95% bootstrap interval (resampling whole groups when groups are given), the
reliability data, the operating point, and optionally one score per group (a patient's score
from their images). :func:`tuned_threshold` builds the ``TunedThresholdClassifierCV`` that
chooses the decision threshold for a target sensitivity or specificity (or balanced
accuracy), with :func:`constrained_scorer` as its objective.

scikit-learn does the work: ``predict_proba``/``decision_function``/``predict`` of the
estimator, ``FixedThresholdClassifier``/``TunedThresholdClassifierCV`` for thresholds,
``calibration_curve`` and ``brier_score_loss`` for calibration. Nothing here runs a network
itself: a featcache estimator reads its cached rows.
"""

from __future__ import annotations

import functools
import math
import os
from numbers import Real

import numpy as np

from ..exceptions import InputError, ProbeError
from ..inputs import as_items, content_key, describe
from .metrics import N_BINS, binary_values, bootstrap_metrics, metric_values, reliability
from .report import HELD_OUT, ProbeReport

__all__ = ["evaluate", "tuned_threshold", "fixed_threshold", "constrained_scorer",
           "constrained_score", "AGGREGATES"]

#: How :func:`evaluate` turns a group's image scores into the group's score.
AGGREGATES = ("mean", "max", "median")
#: Wrappers :func:`evaluate` names in the report's head, with the model inside.
_WRAPPERS = ("FixedThresholdClassifier", "TunedThresholdClassifierCV", "PriorShiftClassifier",
             "FrozenEstimator")
#: How the report names a thresholded response method.
_RESPONSE_NAMES = {"predict_proba": "probability", "decision_function": "decision value"}


# ----------------------------------------------------------------------------- operating point
def constrained_score(y_true, y_pred, *, sensitivity=None, specificity=None, pos_label=None):
    """The objective of a constrained operating point, for ``make_scorer``.

    With ``sensitivity=t``: the specificity where the sensitivity is at least ``t``, else
    ``sensitivity - 1`` (below every feasible value, rising towards the constraint), so that
    maximising it gives the highest specificity among the thresholds that reach ``t``. With
    ``specificity=t`` the same with the roles swapped. ``pos_label``: the positive class
    (default: the larger label present).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if pos_label is None:
        pos_label = np.unique(np.concatenate([y_true, y_pred]))[-1]
    positive, said = y_true == pos_label, y_pred == pos_label
    sens = (said & positive).sum() / max(positive.sum(), 1)
    spec = (~said & ~positive).sum() / max((~positive).sum(), 1)
    if sensitivity is not None:
        return float(spec if sens >= sensitivity else sens - 1.0)
    return float(sens if spec >= specificity else spec - 1.0)


def constrained_scorer(*, sensitivity=None, specificity=None, pos_label=None):
    """A scorer for ``TunedThresholdClassifierCV(scoring=...)``: the best specificity at a
    sensitivity of at least ``sensitivity`` (or the reverse); see :func:`constrained_score`."""
    from sklearn.metrics import make_scorer

    if (sensitivity is None) == (specificity is None):
        raise ProbeError("pass exactly one of sensitivity=TARGET or specificity=TARGET (a "
                         "fraction in (0, 1], e.g. sensitivity=0.95)")
    target = sensitivity if sensitivity is not None else specificity
    if not isinstance(target, Real) or not 0 < target <= 1:
        raise ProbeError(f"the target must be a fraction in (0, 1], got {target!r}")
    return make_scorer(constrained_score, sensitivity=sensitivity, specificity=specificity,
                       pos_label=pos_label)


def tuned_threshold(estimator, *, sensitivity=None, specificity=None, cv=5, pos_label=None,
                    random_state=0, **kwargs):
    """An unfitted ``TunedThresholdClassifierCV`` choosing ``estimator``'s decision threshold.

    The objective: the highest specificity at a sensitivity of at least ``sensitivity``, the
    highest sensitivity at a specificity of at least ``specificity``, or (neither given)
    balanced accuracy. The threshold is chosen on ``cv`` internal folds of the data given to
    ``fit`` (their curves averaged), then the estimator is refitted on all of it. For
    patient-grouped data pass the folds: ``cv=list(StratifiedGroupKFold(5).split(X, y,
    groups))``. A featcache estimator reads its cached rows in every fold. Other keyword
    arguments go to ``TunedThresholdClassifierCV``.
    """
    from sklearn.model_selection import TunedThresholdClassifierCV

    if sensitivity is None and specificity is None:
        scoring = "balanced_accuracy"
    else:
        scoring = constrained_scorer(sensitivity=sensitivity, specificity=specificity,
                                     pos_label=pos_label)
    return TunedThresholdClassifierCV(estimator, scoring=scoring, cv=cv,
                                      random_state=random_state, **kwargs)


def fixed_threshold(tuned):
    """The operating point of a fitted ``TunedThresholdClassifierCV``, frozen for sharing.

    Returns ``FixedThresholdClassifier(tuned.estimator_, threshold=tuned.best_threshold_)``
    with the response method and positive class ``tuned.predict`` uses (its scorer's
    ``pos_label``; None for ``classes_[1]``), read by
    :func:`featcache.probe.operating_point.operating_point`: it predicts exactly as ``tuned``
    does, needs no refit (the wrapped estimator is already fitted), and holds only types that
    :func:`featcache.sharing.load` trusts, where the tuned object also holds its scorer.
    """
    from sklearn.model_selection import FixedThresholdClassifier, TunedThresholdClassifierCV

    from .operating_point import operating_point  # imports scikit-learn

    if not isinstance(tuned, TunedThresholdClassifierCV) or \
            not hasattr(tuned, "best_threshold_"):
        raise ProbeError(f"fixed_threshold needs a fitted TunedThresholdClassifierCV, got "
                         f"{type(tuned).__name__}; fit it first")
    point = operating_point(tuned)
    pos_label = None if point.positive == 1 else np.asarray(tuned.classes_)[0].tolist()
    return FixedThresholdClassifier(tuned.estimator_, threshold=point.threshold,
                                    response_method=point.response, pos_label=pos_label)


def _objective(estimator) -> str:
    scoring = getattr(estimator, "scoring", None)
    kwargs = getattr(scoring, "_kwargs", None)
    if getattr(scoring, "_score_func", None) is constrained_score and kwargs:
        which = "sensitivity" if kwargs.get("sensitivity") is not None else "specificity"
        other = "specificity" if which == "sensitivity" else "sensitivity"
        return f"highest {other} at {which} >= {kwargs[which]:g}"
    return str(scoring)


def _operating_point(estimator, threshold, classes, pos_label, proba) -> dict:
    """The operating point :func:`evaluate` reports and predicts at; ``{}``: the class of
    highest score.

    ``pos_label``: the one given to :func:`evaluate` (a wrapper's own positive class must
    agree with it); for a number or a prior shift, default the estimator's ``pos_label``. The
    report's ``{"threshold", "source", "response"}``, and how to predict there:
    ``"positive"`` (the positive class, None for ``classes_[1]``), ``"predict"`` (each
    input's class is the estimator's own ``predict``), ``"method"`` and ``"model"`` (the
    response thresholded, of which fitted model; None: the report's score of the positive
    class). The facts of a wrapper (response method, threshold, positive class) are
    :func:`featcache.probe.operating_point.operating_point`'s.
    """
    from . import operating_point as points  # imports scikit-learn

    default = pos_label if pos_label is not None else getattr(estimator, "pos_label", None)
    if threshold is None:
        wrapper = points.unfrozen(estimator)
        if isinstance(wrapper, points.PriorShiftClassifier) and len(classes) == 2:
            return _prior_shift_point(wrapper, classes, default, points)
        if isinstance(wrapper, points.THRESHOLDED):
            return {**_threshold_point(wrapper, pos_label, points), "predict": True}
        return {}
    if len(classes) != 2:
        raise ProbeError(f"threshold= needs two classes, the estimator has {len(classes)}")
    if isinstance(threshold, Real) and not isinstance(threshold, bool):
        return {"threshold": float(threshold), "source": "given",
                "response": "probability" if proba else "decision value",
                "positive": default, "predict": False, "method": None}
    wrapper = points.unfrozen(threshold)
    if not isinstance(wrapper, points.THRESHOLDED):
        raise ProbeError(f"threshold must be a number or a fitted FixedThresholdClassifier/"
                         f"TunedThresholdClassifierCV, got {type(threshold).__name__}")
    op = _threshold_point(wrapper, pos_label, points)
    if op["positive"] not in classes.tolist():
        raise ProbeError(f"threshold={type(wrapper).__name__} predicts {op['positive']!r} "
                         f"above its threshold, which is not one of the estimator's classes "
                         f"{classes.tolist()}; give a threshold classifier around a model "
                         "with the same classes")
    return {**op, "predict": False, "model": estimator}


def _threshold_point(wrapper, pos_label, points) -> dict:
    """A ``FixedThresholdClassifier``'s or fitted ``TunedThresholdClassifierCV``'s point."""
    from sklearn.exceptions import NotFittedError

    name = type(wrapper).__name__
    try:
        inner = points.wrapped_estimator(wrapper)
        point = points.operating_point(wrapper, inner)
    except NotFittedError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProbeError(f"evaluate cannot read the operating point of {name}: {exc}") from exc
    positive = np.asarray(inner.classes_)[point.positive].tolist()  # a Python label
    response = _RESPONSE_NAMES[point.response]
    if pos_label is not None and pos_label != positive:
        raise ProbeError(f"pos_label={pos_label!r}, but {name} predicts {positive!r} where "
                         f"the {response} of {positive!r} is >= {point.threshold:.4g}; its "
                         f"operating point is of that class: pass pos_label={positive!r} or "
                         "none")
    source = (f"TunedThresholdClassifierCV, {_objective(wrapper)}"
              if isinstance(wrapper, points.TunedThresholdClassifierCV)
              else "FixedThresholdClassifier")
    return {"threshold": point.threshold, "source": source, "response": response,
            "positive": positive, "method": point.response, "model": inner}


def _prior_shift_point(estimator, classes, pos_label, points) -> dict:
    """The operating point of a fitted two-class ``PriorShiftClassifier``.

    Its ``predict`` is the adjusted probability of the positive class at least 0.5, which is
    the wrapped estimator's probability at least ``threshold_`` (``wrapped_threshold``, of
    ``classes_[1]``; ``1 - threshold_`` when ``pos_label`` is ``classes_[0]``); the source
    names the positive class's training and target priors. Group scores are the adjusted
    probabilities, thresholded at 0.5.
    """
    point = points.operating_point(estimator)
    positive = classes[1] if pos_label is None else pos_label
    i = 1 if positive == estimator.classes_[1] else 0
    wrapped = point.threshold if i else 1.0 - point.threshold
    source = (f"PriorShiftClassifier, training prior {estimator.train_prior_[i]:.3f} -> target "
              f"prior {estimator.target_prior_[i]:.3f}: the wrapped model's probability >= "
              f"{wrapped:.3f}")
    return {"threshold": 0.5, "source": source, "response": "adjusted probability",
            "wrapped_threshold": wrapped, "positive": pos_label, "predict": True,
            "method": None}


# ----------------------------------------------------------------------------- scores
def _classes(estimator):
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        from sklearn.exceptions import NotFittedError

        raise NotFittedError(f"{type(estimator).__name__} has no classes_: evaluate needs a "
                             "fitted classifier; call fit first")
    return np.asarray(classes)


def _scores(estimator, X, classes):
    """``(score matrix (n, k), holds probabilities)`` from predict_proba or decision_function."""
    if hasattr(estimator, "predict_proba"):
        return np.asarray(estimator.predict_proba(X), dtype=float), True
    if hasattr(estimator, "decision_function"):
        raw = np.asarray(estimator.decision_function(X), dtype=float)
        return (np.column_stack([-raw, raw]) if raw.ndim == 1 else raw), False
    raise ProbeError(f"{type(estimator).__name__} has neither predict_proba nor "
                     "decision_function; evaluate needs per-class scores (for curves and AUC)")


def _positive_last(classes, score, pos_label):
    """Two classes ordered (negative, positive), the score columns to match."""
    if len(classes) != 2 or pos_label is None or pos_label == classes[1]:
        return classes, score
    if pos_label != classes[0]:
        raise ProbeError(f"pos_label={pos_label!r} is not a class of the estimator "
                         f"({classes.tolist()})")
    return classes[::-1], score[:, ::-1]


def _check_labels(y, n, classes):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or len(y) != n:
        raise ProbeError(f"y must be one label per input ({n}), got shape {y.shape}")
    unknown = sorted({str(v) for v in set(y.tolist()) - set(classes.tolist())})
    if unknown:
        raise ProbeError(f"y holds labels the estimator never learned: {unknown[:5]} (its "
                         f"classes: {classes.tolist()}); labels must be of the same kind and "
                         "spelling as at fit (e.g. 1 and 0, not '1' and '0')")
    return y


def _response(op, X, score, classes, proba):
    """The positive class's score the operating point thresholds, per input: the report's
    (``score[:, 1]``) where that is the response ``predict`` thresholds, else the model's
    response method (a decision value where the report holds probabilities), for the
    positive class ``classes[1]`` as scikit-learn's ``predict`` reads it."""
    method, model = op.get("method"), op.get("model")
    if method is None or (method == "predict_proba") == proba:
        return score[:, 1]
    if not hasattr(model, method):
        scale = "probabilities" if proba else "decision values"
        raise ProbeError(f"the operating point ({op['source']}) thresholds {method} of the "
                         f"model, and {type(model).__name__} has none; pass threshold= as a "
                         f"number on the scale of its {scale}, or a threshold classifier "
                         "around it")
    values = np.asarray(getattr(model, method)(X), dtype=float)
    own = np.asarray(model.classes_)
    if values.ndim == 2:
        return values[:, int(np.flatnonzero(own == classes[1])[0])]
    return values if classes[1] == own[1] else -values


def _predictions(estimator, X, score, classes, op, response):
    """Class indices predicted: at the operating point (the estimator's own ``predict``, or
    ``response >= threshold``), else the class of highest score."""
    if op.get("predict"):
        index = {c: i for i, c in enumerate(classes.tolist())}
        return np.array([index[v] for v in np.asarray(estimator.predict(X)).tolist()])
    if op:
        return (response >= op["threshold"]).astype(int)
    return score.argmax(axis=1)


# ----------------------------------------------------------------------------- groups
def _aggregate(yi, score, response, groups, how):
    """One row per group: its label (all its images must agree), score, response (the score
    the operating point thresholds, None without one) and name."""
    groups = np.asarray(groups)
    names, inverse = np.unique(groups.astype(str), return_inverse=True)
    func = {"mean": np.mean, "max": np.max, "median": np.median}[how]
    g_y, g_score, g_response, g_name, g_n = [], [], [], [], []
    for g in range(len(names)):
        rows = np.flatnonzero(inverse == g)
        labels = np.unique(yi[rows])
        if len(labels) > 1:
            raise ProbeError(f"group {groups[rows[0]]!r} holds images of {len(labels)} classes; "
                             "a group's score needs one label per group (aggregate=None scores "
                             "the images)")
        g_y.append(labels[0])
        g_score.append(func(score[rows], axis=0))
        if response is not None:
            g_response.append(func(response[rows]))
        g_name.append(groups[rows[0]])
        g_n.append(len(rows))
    return (np.array(g_y), np.vstack(g_score), np.array(g_response) if response is not None
            else None, np.array(g_name, dtype=object), np.array(g_n))


def _check_groups(groups, n, aggregate):
    if aggregate is not None and aggregate not in AGGREGATES:
        raise ProbeError(f"aggregate must be one of {', '.join(AGGREGATES)} or None, got "
                         f"{aggregate!r}")
    if groups is None:
        if aggregate is not None:
            raise ProbeError(f"aggregate={aggregate!r} needs groups= (the patient of each image)")
        return None
    groups = np.asarray(groups, dtype=object)
    if groups.ndim != 1 or len(groups) != n:
        raise ProbeError(f"groups must be one group (patient) per input ({n}), got shape "
                         f"{groups.shape}")
    return groups


# ----------------------------------------------------------------------------- samples
def _samples(X, sources, n) -> dict:
    """``key`` (content key, hex) and ``source`` of each input when X holds images, else ``row``."""
    if sources is not None:
        sources = np.asarray([str(s) for s in sources], dtype=object)
    try:
        items = as_items(X)
    except (InputError, TypeError, ValueError):
        items = None
    if items is None or len(items) != n:
        out = {"row": np.arange(n)}
        if sources is not None:
            out["source"] = sources
        return out
    keys = np.array([content_key(item, i).hex() for i, item in enumerate(items)], dtype=object)
    if sources is None:
        sources = np.array([os.fspath(item) if isinstance(item, (str, os.PathLike))
                            else describe(item, i) for i, item in enumerate(items)], dtype=object)
    return {"key": keys, "source": sources}


def _held_out_source(held_out) -> dict:
    if held_out is True:
        return {"held_out": True, "metrics_from": HELD_OUT}
    if held_out is False:
        return {"held_out": False, "metrics_from": "data that took part in fitting or "
                                                   "selection (optimistic)"}
    return {"held_out": None, "metrics_from": "data of unknown role (not stated: pass "
                                              "held_out=True when it took no part in fitting, "
                                              "selection or threshold tuning)"}


def _describe(estimator) -> str:
    steps = getattr(estimator, "steps", None)
    if steps:
        return f"Pipeline({', '.join(type(s).__name__ for _, s in steps)})"
    inner = getattr(estimator, "estimator", None)
    if type(estimator).__name__ in _WRAPPERS and inner is not None:
        return f"{type(estimator).__name__}({_describe(inner)})"
    return type(estimator).__name__


# ----------------------------------------------------------------------------- evaluate
def evaluate(estimator, X, y, *, groups=None, aggregate=None, threshold=None, pos_label=None,
             held_out=None, sources=None, n_bins=N_BINS, n_bootstrap=1000, random_state=0,
             out_dir=None) -> ProbeReport:
    """Evaluate any fitted classifier on labelled data: the probe's report, with calibration.

    Parameters
    ----------
    estimator : fitted classifier
        Anything with ``classes_`` and ``predict_proba`` (or ``decision_function``): a
        ``Pipeline`` with :class:`~featcache.FrozenBackbone`, a
        :class:`~featcache.PartiallyFrozenClassifier`, a ``FixedThresholdClassifier`` or
        ``TunedThresholdClassifierCV`` (its threshold is the operating point), a two-class
        :class:`~featcache.probe.PriorShiftClassifier` (its probabilities are the adjusted
        ones and its operating point is 0.5 on them, with ``wrapped_threshold``, its
        ``threshold_`` on the wrapped model's probability) ...
    X : images or features
        What ``estimator`` predicts from (paths, arrays, ...); a featcache estimator reads its
        cached rows.
    y : array of shape (n_samples,)
        True labels, of the estimator's classes.
    groups : array of shape (n_samples,), optional
        Group (patient) of each input: the bootstrap resamples whole groups, and
        ``predictions.csv`` gets a ``group`` column.
    aggregate : {"mean", "max", "median"}, optional
        Score each group instead of each image: the group's per-class scores are the
        ``aggregate`` of its images' (all its images must share one label), and the metrics,
        curves and ``predictions.csv`` are per group. At an operating point a group's class
        is the ``aggregate`` of the response ``predict`` thresholds (the wrapped model's
        decision value for ``response_method="decision_function"``, of its positive class)
        against the threshold.
    threshold : float, FixedThresholdClassifier or TunedThresholdClassifierCV, optional
        Two classes: predict the positive class when its score (probability, or decision
        value without ``predict_proba``) is at least this; a fitted threshold classifier (or
        a ``FrozenEstimator`` around one) gives its operating point, applied to
        ``estimator``: its response method, threshold and positive class, as its ``predict``
        applies them (:func:`featcache.probe.operating_point.operating_point`). Default: the
        estimator's own operating point when it is such a classifier or a two-class
        :class:`~featcache.probe.PriorShiftClassifier` (through a ``FrozenEstimator`` too;
        each input's class is its ``predict``), else the class of highest score.
    pos_label : label, optional
        The positive class (two classes); default the estimator's ``pos_label`` if it has
        one, else ``classes_[1]``. A threshold classifier's operating point is of its own
        positive class (its ``pos_label``; a ``TunedThresholdClassifierCV``'s scorer's), which
        is the default; another ``pos_label`` raises ``ProbeError``.
    held_out : bool, optional
        Whether X took no part in fitting, hyper-parameter selection or threshold tuning;
        recorded in ``report.metrics_source`` and the ``metrics from:`` line.
    sources : sequence of str, optional
        Names of the inputs for ``predictions.csv`` (default: paths, or descriptions).
    n_bins : int, default=10
        Equal-width calibration bins of the reliability diagram and the ECE.
    n_bootstrap, random_state : int
        Bootstrap resamples for the 95% intervals (0: none) and their seed.
    out_dir : str or PathLike, optional
        Write ``report.json``, ``predictions.csv`` and the plots there.

    Returns
    -------
    ProbeReport
        ``metrics``: ``roc_auc``, ``accuracy``, ``balanced_accuracy``, ``f1_macro``, and for
        two classes ``sensitivity``, ``specificity``, ``brier``, ``ece`` (Brier and ECE need
        probabilities); ``calibration``, ``operating_point`` (``threshold``, ``source``,
        ``response``, ``positive_class``; ``wrapped_threshold`` for a PriorShiftClassifier),
        ``metrics_source``; ``samples``
        ``key``/``source``/``group`` per input (``group``/``n_images`` with ``aggregate``).
    """
    classes = _classes(estimator)
    score, proba = _scores(estimator, X, classes)
    y = _check_labels(y, len(score), classes)
    groups = _check_groups(groups, len(score), aggregate)
    for given in (pos_label, getattr(estimator, "pos_label", None)):
        if given is not None and given not in classes.tolist():
            raise ProbeError(f"pos_label={given!r} is not a class of the estimator "
                             f"({classes.tolist()})")
    op = _operating_point(estimator, threshold, classes, pos_label, proba)
    positive = op["positive"] if op else (
        pos_label if pos_label is not None else getattr(estimator, "pos_label", None))
    order, score = _positive_last(classes, score, positive)
    index = {c: i for i, c in enumerate(order.tolist())}
    yi = np.array([index[v] for v in y.tolist()])
    response = _response(op, X, score, order, proba) if op and (
        aggregate is not None or not op["predict"]) else None
    pi = _predictions(estimator, X, score, order, op, response)
    samples = _samples(X, sources, len(score))
    boot_groups = groups
    if aggregate is not None:
        yi, score, response, names, counts = _aggregate(yi, score, response, groups, aggregate)
        pi = (response >= op["threshold"]).astype(int) if op else score.argmax(axis=1)
        samples, boot_groups = {"group": names, "n_images": counts}, None
    elif groups is not None:
        samples["group"] = groups
    report = _report(estimator, order, yi, pi, score, proba, boot_groups, op, samples,
                     held_out, aggregate, n_bins, n_bootstrap, random_state)
    if out_dir is not None:
        report.save(out_dir)
    return report


def _report(estimator, classes, yi, pi, score, proba, groups, op, samples, held_out,
            aggregate, n_bins, n_bootstrap, random_state) -> ProbeReport:
    k = len(classes)
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ProbeError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    values = functools.partial(binary_values, proba=proba, n_bins=n_bins) if k == 2 \
        else metric_values
    metrics = bootstrap_metrics(yi, pi, score, k, n_bootstrap, random_state, groups=groups,
                                values=values)
    binary_proba = k == 2 and proba and 0 < int((yi == 1).sum()) < len(yi)
    calibration = reliability(yi == 1, np.clip(score[:, 1], 0, 1), n_bins) if binary_proba \
        else {}
    unit = "groups" if aggregate else "images"
    n_groups = None if groups is None else len(set(np.asarray(groups, dtype=str).tolist()))
    what = f"{len(yi)} {unit}" + (f" in {n_groups} groups" if n_groups else "")
    op = {key: v for key, v in op.items() if key not in ("positive", "predict", "method",
                                                          "model")}
    if op:
        op["positive_class"] = classes[1]
    return ProbeReport(
        metrics=metrics, head=_describe(estimator), best_params={}, sweep=[], scoring="",
        selection=f"the data given to evaluate ({what})",
        evaluated_on=f"the data given to evaluate: {what}" + (
            f", each group scored by the {aggregate} of its images' scores" if aggregate else ""),
        n_train=0, n_val=len(yi), classes=list(classes.tolist()), y_true=classes[yi],
        y_pred=classes[pi], y_score=score, n_bootstrap=n_bootstrap, random_state=random_state,
        info={"aggregate": aggregate, "probabilities": bool(proba),
              "bootstrap": "groups" if groups is not None else "samples",
              "calibration_bins": f"{n_bins} equal-width bins over [0, 1] "
                                  "(sklearn.calibration.calibration_curve, uniform)"},
        metrics_source=_held_out_source(held_out),
        calibration=calibration, operating_point=op, samples=samples)
