"""Plots of a probe report: ROC and precision-recall curves, confusion matrix, reliability
diagram, hyper-parameter sweep.

Figures are built with :class:`matplotlib.figure.Figure` and written with the Agg canvas, so
pyplot's global state and the user's backend are never touched (no ``plt.show``, safe in
notebooks, on headless servers and in threads).
"""

from __future__ import annotations

import pathlib
import textwrap

import numpy as np

__all__ = ["plot_roc", "plot_pr", "plot_confusion_matrix", "plot_reliability", "plot_sweep",
           "save_figure"]


def _figure(size=(4.8, 4.2)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


#: Characters of a title per inch of figure width (a 12 pt title font, centred on the axes).
TITLE_CHARS_PER_INCH = 9


def _wrapped(title: str, fig) -> str:
    """``title`` broken into lines that fit ``fig``'s width (a long estimator name in a
    report's title was cut off at both sides); the constrained layout makes room for them."""
    width = max(20, int(fig.get_figwidth() * TITLE_CHARS_PER_INCH))
    return textwrap.fill(str(title), width=width)


def save_figure(fig, path) -> pathlib.Path:
    """Write ``fig`` as PNG with the Agg canvas; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = pathlib.Path(path)
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def plot_roc(y_true, y_score, classes, *, title="ROC"):
    """ROC curve(s): one curve for two classes, one-vs-rest curves for more.

    Parameters
    ----------
    y_true : array of shape (n,)
        True labels (values from ``classes``).
    y_score : array of shape (n, n_classes)
        Per-class scores (probabilities or decision values).
    classes : sequence
        Class labels in the column order of ``y_score``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sklearn.metrics import auc, roc_curve

    fig, ax = _figure()
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    shown = [1] if len(classes) == 2 else range(len(classes))
    for k in shown:
        positive = y_true == classes[k]
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, y_score[:, k])
        name = f"{classes[k]}" if len(classes) > 2 else f"positive = {classes[k]}"
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
           ylabel="true positive rate", title=_wrapped(title, fig))
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_pr(y_true, y_score, classes, *, title="Precision-recall"):
    """Precision-recall curve of the positive class (``classes[1]``; two classes).

    The dotted line is the prevalence (a classifier without skill); the legend gives the
    average precision (:func:`sklearn.metrics.average_precision_score`).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = _figure()
    positive = np.asarray(y_true) == classes[1]
    score = np.asarray(y_score)[:, 1]
    if positive.any() and not positive.all():
        precision, recall, _ = precision_recall_curve(positive, score)
        ap = average_precision_score(positive, score)
        ax.plot(recall, precision, lw=1.6, label=f"positive = {classes[1]} (AP {ap:.3f})")
        ax.axhline(positive.mean(), ls=":", lw=0.8, color="grey",
                   label=f"prevalence {positive.mean():.2f}")
        ax.legend(loc="lower left", fontsize="small")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)",
           ylabel="precision (positive predictive value)", title=_wrapped(title, fig))
    return fig


def plot_reliability(calibration, *, title="Reliability"):
    """Reliability diagram: observed frequency against mean predicted probability per bin.

    ``calibration`` is a report's ``calibration`` dict (``prob_true``, ``prob_pred``,
    ``count``, ``n_bins``, ``ece``; see :func:`featcache.probe.metrics.reliability`); the
    marker areas follow the bin counts, the diagonal is perfect calibration.
    """
    fig, ax = _figure()
    true, pred = np.asarray(calibration["prob_true"]), np.asarray(calibration["prob_pred"])
    count = np.asarray(calibration["count"], dtype=float)
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="perfect calibration")
    ax.plot(pred, true, lw=1.4, color="C0")
    ax.scatter(pred, true, s=12 + 120 * count / max(count.max(), 1), color="C0", zorder=3,
               label=f"{calibration['n_bins']} bins, ECE {calibration['ece']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="mean predicted probability",
           ylabel="observed frequency of the positive class", title=_wrapped(title, fig))
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_confusion_matrix(y_true, y_pred, classes, *, title="Confusion matrix"):
    """Confusion matrix: counts, with the row-normalised share (recall) in brackets."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=list(classes))
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = _figure((1.6 + 0.9 * len(classes), 1.4 + 0.8 * len(classes)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}\n({share[i, j]:.0%})", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize="small")
    ticks = np.arange(len(classes))
    names = [str(c) for c in classes]
    ax.set_xticks(ticks, names)
    ax.set_yticks(ticks, names)
    ax.set(xlabel="predicted", ylabel="true", title=_wrapped(title, fig))
    return fig


def plot_sweep(sweep, *, scoring="score", chosen=None, title="Hyper-parameter sweep"):
    """Selection score of every candidate of the sweep.

    Parameters
    ----------
    sweep : list of dict
        ``{"params": {...}, "score": float}`` per candidate, as in ``ProbeReport.sweep``.
        With one numeric parameter (``C`` of a logistic regression) it is the x axis, on a
        log scale when it spans more than a decade; otherwise candidates are numbered.
    scoring : str
        The y-axis label.
    chosen : dict, optional
        The chosen parameters, marked on the plot.
    """
    fig, ax = _figure((5.2, 3.6))
    params = [s["params"] for s in sweep]
    scores = np.array([np.nan if s["score"] is None else s["score"] for s in sweep], float)
    names = sorted({k for p in params for k in p})
    numeric = len(names) == 1 and all(isinstance(p.get(names[0]), (int, float)) and
                                      not isinstance(p.get(names[0]), bool) for p in params)
    if numeric:
        x = np.array([p[names[0]] for p in params], float)
        ax.plot(x, scores, marker="o", lw=1.4)
        if x.min() > 0 and x.max() / x.min() > 10:
            ax.set_xscale("log")
        ax.set_xlabel(names[0])
        if chosen is not None and names[0] in chosen:
            ax.axvline(chosen[names[0]], ls="--", color="grey", lw=0.9,
                       label=f"chosen {names[0]} = {chosen[names[0]]:g}")
            ax.legend(fontsize="small")
    else:
        x = np.arange(len(sweep))
        ax.plot(x, scores, marker="o", lw=1.4)
        labels = [", ".join(f"{k}={v}" for k, v in p.items()) or "default" for p in params]
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize="x-small")
        if chosen is not None and chosen in params:
            ax.axvline(params.index(chosen), ls="--", color="grey", lw=0.9)
    ax.set(ylabel=scoring, title=_wrapped(title, fig))
    return fig
