"""Metrics of a probe with 95% percentile-bootstrap confidence intervals.

Accuracy, balanced accuracy, ROC AUC (one-vs-rest macro for more than two classes) and macro
F1, computed from class indices and a per-class score matrix; for two classes
:func:`binary_values` adds sensitivity, specificity, the Brier score and the expected
calibration error (:func:`reliability`). The bootstrap resamples the evaluated samples, or
whole groups (patients) when groups are given (seeded), skipping resamples where a metric is
undefined. numpy and scipy; scikit-learn inside the calibration functions.
"""

from __future__ import annotations

import math

import numpy as np

from .report import Metric

__all__ = ["bootstrap_metrics", "metric_values", "binary_values", "reliability", "auc",
           "N_BINS"]

#: Calibration bins of the reliability diagram and the ECE: equal-width bins over [0, 1].
N_BINS = 10


def auc(positive, score) -> float:
    """ROC AUC of one class by the rank (Mann-Whitney) formula; NaN with one class."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def metric_values(yi, pi, score, k) -> dict:
    """Metrics from class indices (true, predicted) and the (n, k) score matrix."""
    cm = np.bincount(yi * k + pi, minlength=k * k).reshape(k, k)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    present = support > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    if k == 2:
        roc_auc = auc(yi == 1, score[:, 1])
    else:
        roc_auc = math.nan if not present.all() else \
            float(np.mean([auc(yi == j, score[:, j]) for j in range(k)]))
    return {"roc_auc": roc_auc, "accuracy": tp.sum() / len(yi),
            "balanced_accuracy": float(np.mean(tp[present] / support[present])),
            "f1_macro": float(f1.mean())}


def reliability(positive, proba, n_bins=N_BINS) -> dict:
    """Reliability data and expected calibration error of positive-class probabilities.

    The bins are those of :func:`sklearn.calibration.calibration_curve` with
    ``strategy="uniform"``: ``n_bins`` equal-width bins over [0, 1] (a probability on an inner
    edge goes to the lower bin), empty bins dropped. ECE is the bin-size weighted mean gap
    between the observed frequency and the mean predicted probability:
    ``sum_b (n_b / n) * |frac_positive_b - mean_proba_b|``.

    Returns ``{"n_bins", "prob_true", "prob_pred", "count", "ece"}`` (lists per non-empty bin).
    """
    from sklearn.calibration import calibration_curve

    positive, proba = np.asarray(positive, dtype=bool), np.asarray(proba, dtype=float)
    prob_true, prob_pred = calibration_curve(positive, proba, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count = np.bincount(np.searchsorted(edges[1:-1], proba), minlength=n_bins)
    count = count[count > 0]
    ece = float(np.sum(count / len(proba) * np.abs(prob_true - prob_pred)))
    return {"n_bins": n_bins, "prob_true": prob_true.tolist(), "prob_pred": prob_pred.tolist(),
            "count": count.tolist(), "ece": ece}


def binary_values(yi, pi, score, k, *, proba=True, n_bins=N_BINS) -> dict:
    """:func:`metric_values` plus sensitivity, specificity, Brier score and ECE (two classes).

    Class index 1 is the positive class. ``proba``: whether ``score`` holds probabilities
    (Brier score and ECE are NaN when it does not, e.g. decision values).
    """
    from sklearn.metrics import brier_score_loss

    out = metric_values(yi, pi, score, k)
    positive, said = yi == 1, pi == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    out["sensitivity"] = float((said & positive).sum() / n_pos) if n_pos else math.nan
    out["specificity"] = float((~said & ~positive).sum() / n_neg) if n_neg else math.nan
    if proba and n_pos and n_neg:
        p = np.clip(score[:, 1], 0.0, 1.0)
        out["brier"] = float(brier_score_loss(positive, p))
        out["ece"] = reliability(positive, p, n_bins)["ece"]
    else:
        out["brier"] = out["ece"] = math.nan
    return out


def _resample(rng, n, groups):
    """Indices of one bootstrap resample: of the samples, or of whole groups when given."""
    if groups is None:
        return rng.integers(0, n, n)
    members = groups  # a list of index arrays, one per group
    picked = rng.integers(0, len(members), len(members))
    return np.concatenate([members[g] for g in picked])


def bootstrap_metrics(yi, pi, score, k, n_bootstrap, random_state, *, groups=None,
                      values=None) -> dict:
    """Point values and 95% percentile-bootstrap intervals of every metric (name -> Metric).

    ``groups`` (one per sample): resample whole groups with replacement (a patient's images
    stay together; the cluster bootstrap), else samples. ``values``: the function computing
    the metrics (default :func:`metric_values`; e.g. :func:`binary_values`).
    """
    values = values or metric_values
    point = values(yi, pi, score, k)
    rng = np.random.default_rng(random_state)
    members = None
    if groups is not None:
        _, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    draws = {name: [] for name in point}
    for _ in range(n_bootstrap):
        idx = _resample(rng, len(yi), members)
        for name, value in values(yi[idx], pi[idx], score[idx], k).items():
            if not math.isnan(value):
                draws[name].append(value)
    out = {}
    for name, value in point.items():
        low, high = np.percentile(draws[name], [2.5, 97.5]) if draws[name] else (math.nan,) * 2
        out[name] = Metric(float(value), float(low), float(high))
    return out
