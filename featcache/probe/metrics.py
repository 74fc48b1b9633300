"""Metrics of a probe with 95% percentile-bootstrap confidence intervals.

Accuracy, balanced accuracy, ROC AUC (one-vs-rest macro for more than two classes) and macro
F1, computed from class indices and a per-class score matrix; the bootstrap resamples the
evaluated samples (seeded), skipping resamples where a metric is undefined. numpy and scipy.
"""

from __future__ import annotations

import math

import numpy as np

from .report import Metric

__all__ = ["bootstrap_metrics", "metric_values", "auc"]


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


def bootstrap_metrics(yi, pi, score, k, n_bootstrap, random_state) -> dict:
    """Point values and 95% percentile-bootstrap intervals of every metric (name -> Metric)."""
    point = metric_values(yi, pi, score, k)
    rng = np.random.default_rng(random_state)
    draws = {name: [] for name in point}
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(yi), len(yi))
        for name, value in metric_values(yi[idx], pi[idx], score[idx], k).items():
            if not math.isnan(value):
                draws[name].append(value)
    out = {}
    for name, value in point.items():
        low, high = np.percentile(draws[name], [2.5, 97.5]) if draws[name] else (math.nan,) * 2
        out[name] = Metric(float(value), float(low), float(high))
    return out
