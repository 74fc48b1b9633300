"""The report of a linear probe: metrics with confidence intervals, and how it is written.

:class:`ProbeReport` is what :func:`featcache.probe.linear_probe` returns; :meth:`ProbeReport.save`
writes ``report.json``, ``predictions.csv`` and the :data:`PLOTS`. numpy only at import time
(pandas and matplotlib are loaded when a report is saved).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from numbers import Integral, Real

import numpy as np

from ..exceptions import ProbeError
from . import plots

__all__ = ["Metric", "ProbeReport", "METRIC_NAMES", "PLOTS", "EVALUATION_PLOTS", "HELD_OUT",
           "OPTIMISTIC", "json_float", "jsonable", "fmt_param", "csv_safe", "FORMULA_STARTS"]

#: Display names of the reported metrics, in report order.
METRIC_NAMES = {"roc_auc": "ROC AUC", "accuracy": "accuracy",
                "balanced_accuracy": "balanced accuracy", "f1_macro": "macro F1",
                "sensitivity": "sensitivity", "specificity": "specificity",
                "brier": "Brier score (lower is better)",
                "ece": "expected calibration error (lower is better)"}
#: ``metrics_source["metrics_from"]`` when no evaluated sample took part in any choice.
HELD_OUT = "held-out data not used for selection"
#: ``metrics_source["metrics_from"]`` when the evaluated samples also chose the hyper-parameters.
OPTIMISTIC = "the data that chose the hyperparameters (optimistic)"
#: First characters that make a spreadsheet read a CSV cell as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
#: The figures :meth:`ProbeReport.save` writes: ROC curve(s), confusion matrix, selection sweep.
PLOTS = ("roc.png", "confusion_matrix.png", "c_sweep.png")
#: The figures an evaluation report (:func:`featcache.evaluate`) writes: ROC and
#: precision-recall curves, confusion matrix, reliability diagram (two classes).
EVALUATION_PLOTS = ("roc.png", "pr.png", "confusion_matrix.png", "reliability.png")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric value with its 95% bootstrap confidence interval (NaN when undefined)."""

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return {k: json_float(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class ProbeReport:
    """What :func:`~featcache.probe.linear_probe` measured.

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
        Extra facts (rows skipped by :func:`~featcache.probe.from_cache.probe_cache`, the namespace,
        the dataset, notes ...).
    leaks : dict
        Byte-identical inputs (one content key) recorded in more than one split or group,
        found by :func:`~featcache.probe.from_cache.probe_cache` (which also warns,
        :class:`~featcache.exceptions.ContentLeakWarning`): ``{"splits": {"count", "examples"},
        "groups": {...}}`` (see :func:`featcache.cache.annotations.find_leaks`); ``{}`` when
        none. Written to ``report.json`` as ``"leaks"``.
    metrics_source : dict
        Whether the metrics come from data that took part in selection: ``held_out`` (True,
        False, or None when the caller did not say), ``metrics_from`` (:data:`HELD_OUT`,
        :data:`OPTIMISTIC` or another sentence), ``protocol`` (how), and ``group_overlap``
        (groups on both sides of the split, ``{"count", "examples"}``, when allowed with a
        warning). In ``report.json`` and on the ``metrics from:`` line of the text summary.
    calibration : dict
        Two classes with probabilities (:func:`featcache.evaluate`): the reliability diagram's
        bins, ``{"n_bins", "prob_true", "prob_pred", "count", "ece"}``
        (:func:`featcache.probe.metrics.reliability`); ``{}`` otherwise.
    operating_point : dict
        The decision threshold the predictions used (:func:`featcache.evaluate`):
        ``{"threshold", "source", "positive_class", "response"}``; ``{}`` for the class of
        highest score.
    samples : dict of str -> array
        Columns that identify each evaluated sample, aligned with ``y_true``: ``row`` (its
        position in ``X_val``, or in ``X`` with cross-validation) from :func:`linear_probe`;
        ``key`` (the content key, hex) and ``source`` (the input's path or description) from
        :func:`~featcache.probe.from_cache.probe_cache`. They lead ``predictions.csv``.
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
    leaks: dict = dataclasses.field(default_factory=dict)
    metrics_source: dict = dataclasses.field(default_factory=dict)
    calibration: dict = dataclasses.field(default_factory=dict)
    operating_point: dict = dataclasses.field(default_factory=dict)
    samples: dict = dataclasses.field(default_factory=dict, repr=False)
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
        return jsonable({
            "head": self.head, "best_params": self.best_params, "C": self.C,
            "scoring": self.scoring, "selection": self.selection,
            "evaluated_on": self.evaluated_on,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "confidence": 0.95, "n_bootstrap": self.n_bootstrap,
            "random_state": self.random_state, "n_train": self.n_train, "n_val": self.n_val,
            "classes": list(self.classes), "sweep": self.sweep, "info": self.info,
            "leaks": self.leaks, "metrics_source": self.metrics_source,
            "operating_point": self.operating_point, "calibration": self.calibration,
        })

    def to_markdown(self) -> str:
        """A caption and a markdown table: metric | value | 95% CI."""
        params = ", ".join(f"{k}={fmt_param(v)}" for k, v in self.best_params.items())
        if self.scoring:
            first = f"probe: {self.head}({params}) chosen by {self.scoring} on {self.selection}"
        else:
            first = f"evaluation: {self.head} on {self.selection}"
        counts = f"n_train={self.n_train}, n_val={self.n_val}" if self.scoring else \
            f"n={self.n_val}"
        lines = [first, f"{counts}, classes: {', '.join(map(str, self.classes))}; "
                        f"metrics on {self.evaluated_on.split(':')[0]}"]
        lines += self._source_lines()
        lines += ["", "| metric | value | 95% CI |", "|---|---:|:---:|"]
        for name, m in self.metrics.items():
            lines.append(f"| {METRIC_NAMES.get(name, name)} | {m.value:.4f} | "
                         f"[{m.ci_low:.3f}, {m.ci_high:.3f}] |")
        skipped = self.info.get("skipped")
        if skipped and any(skipped.values()):
            lines += ["", "skipped rows: " + ", ".join(f"{v} {k}" for k, v in skipped.items())]
        lines += [f"note: {note}" for note in self.info.get("notes", [])]
        for kind, word in (("splits", "split"), ("groups", "group")):
            if self.leaks.get(kind):
                n = self.leaks[kind]["count"]
                lines.append(f"leak: {n} byte-identical image{'s' * (n != 1)} (one content key "
                             f"each) recorded in more than one {word}; see report.json 'leaks'")
        return "\n".join(lines)

    def _source_lines(self) -> list:
        """The ``metrics from:``, ``operating point:`` and group-overlap lines of the summary."""
        src, lines = self.metrics_source, []
        if src.get("metrics_from"):
            lines.append(f"metrics from: {src['metrics_from']}"
                         + (f" ({src['protocol']})" if src.get("protocol") else ""))
        overlap = src.get("group_overlap")
        if overlap:
            lines.append(f"WARNING: {overlap['count']} group(s) on both sides of the split "
                         f"(e.g. {', '.join(map(str, overlap['examples']))}): the validation "
                         "metrics include patients the model trained on")
        op = self.operating_point
        if op.get("threshold") is not None:
            lines.append(f"operating point: {op['positive_class']!s} when the "
                         f"{op.get('response', 'score')} >= {op['threshold']:.4g} "
                         f"({op.get('source', 'given')})")
        return lines

    def plot_files(self) -> tuple:
        """The figures :meth:`save` writes for this report (:data:`PLOTS`, or
        :data:`EVALUATION_PLOTS` for an evaluation; precision-recall and reliability need two
        classes, the reliability diagram probabilities too)."""
        if self.scoring:
            return PLOTS
        skip = set() if len(self.classes) == 2 else {"pr.png", "reliability.png"}
        if not self.calibration:
            skip.add("reliability.png")
        return tuple(name for name in EVALUATION_PLOTS if name not in skip)

    def __str__(self) -> str:
        return self.to_markdown()

    def save(self, out_dir) -> pathlib.Path:
        """Write ``report.json``, ``predictions.csv`` and the figures (:meth:`plot_files`).

        ``predictions.csv`` has one row per evaluated sample: the :attr:`samples` columns
        (``key`` and ``source`` for a cache probe, else ``row``), ``y_true``, ``y_pred`` and
        ``score_<class>`` per class. Text cells (and header cells) that a spreadsheet would
        run as a formula, those beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
        return (a label ``=1+1``, a file named ``@SUM(A1).png``), are written with a leading
        ``'`` (OWASP's CSV-injection rule; see :func:`csv_safe`); numbers are written as they
        are. Lines end in CRLF (RFC 4180), so a cell holding a line break is quoted.
        """
        out = pathlib.Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n", "utf-8")
            csv_safe(self.predictions()).to_csv(out / "predictions.csv", index=False,
                                                lineterminator="\r\n")
            for name in self.plot_files():
                plots.save_figure(self._figure(plots, name), out / name)
        except OSError as exc:
            raise ProbeError(f"cannot write the probe report to '{out}': {exc}; pass a "
                             "writable directory as out_dir") from exc
        return out

    def _figure(self, plots, name):
        if name == "roc.png":
            return plots.plot_roc(self.y_true, self.y_score, self.classes,
                                  title=f"ROC ({self.head})")
        if name == "pr.png":
            return plots.plot_pr(self.y_true, self.y_score, self.classes,
                                 title=f"Precision-recall ({self.head})")
        if name == "confusion_matrix.png":
            return plots.plot_confusion_matrix(self.y_true, self.y_pred, self.classes)
        if name == "reliability.png":
            return plots.plot_reliability(self.calibration, title=f"Reliability ({self.head})")
        return plots.plot_sweep(self.sweep, scoring=self.scoring, chosen=self.best_params,
                                title=f"{self.head}: selection sweep")

    def predictions(self):
        """The evaluated samples as a pandas DataFrame (the content of ``predictions.csv``)."""
        import pandas as pd

        frame = pd.DataFrame({name: np.asarray(values) for name, values in self.samples.items()})
        frame["y_true"], frame["y_pred"] = self.y_true, self.y_pred
        for k, c in enumerate(self.classes):
            frame[f"score_{c}"] = self.y_score[:, k]
        return frame


def csv_safe(frame):
    """A copy of ``frame`` whose text cells and column names cannot run in a spreadsheet.

    A string beginning with one of :data:`FORMULA_STARTS` (``=``, ``+``, ``-``, ``@``, tab,
    carriage return) gets a leading single quote, as OWASP's CSV-injection guidance says: a
    spreadsheet then shows it as text. Numbers, and strings that are plain numbers
    (``-0.5``), are data and stay as they are.
    """
    def escape(value):
        if isinstance(value, str) and value.startswith(FORMULA_STARTS) \
                and not _NUMBER.fullmatch(value):
            return "'" + value
        return value

    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            out[column] = out[column].map(escape)
    out.columns = [escape(str(c)) for c in out.columns]
    return out


def fmt_param(value) -> str:
    """A hyper-parameter value as the report prints it (``0.01``, ``'lbfgs'`` -> ``lbfgs``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def json_float(v):
    """``v`` as a float, or None when it is None or not finite (JSON has no NaN)."""
    return None if v is None or not math.isfinite(v) else float(v)


def jsonable(obj):
    """``obj`` with numpy scalars and arrays turned into JSON types (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, Integral):
        return int(obj)
    if isinstance(obj, Real):
        return json_float(float(obj))
    if obj is None or isinstance(obj, str):
        return obj
    return repr(obj)
