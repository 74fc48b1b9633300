"""The linear probe: how good are frozen features for a task, with confidence intervals.

- :mod:`~featcache.probe.protocol`: :func:`linear_probe` (validation, hyper-parameter
  selection on a validation split or by cross-validation, the refit);
- :mod:`~featcache.probe.heads`: the heads and their grids (:func:`make_head`, :data:`HEADS`);
- :mod:`~featcache.probe.metrics`: the metrics and their percentile bootstrap;
- :mod:`~featcache.probe.report`: :class:`ProbeReport` and the files it writes (:data:`PLOTS`);
- :mod:`~featcache.probe.plots`: the figures (matplotlib, loaded when a report is saved);
- :mod:`~featcache.probe.from_cache`: :func:`probe_cache`, probing a cache namespace or one
  dataset of it (the library behind ``featcache probe``);
- :mod:`~featcache.probe.evaluation`: :func:`evaluate` (``featcache.evaluate``), the report of
  any fitted classifier with calibration and an operating point; :func:`tuned_threshold`,
  :func:`fixed_threshold` and :func:`constrained_scorer` choose and freeze that point;
- :mod:`~featcache.probe.prior_shift`: :class:`PriorShiftClassifier`, the operating point of a
  target class prevalence ("balanced" or a known one), computed from the labels given to fit
  (loaded on first access: it imports scikit-learn);
- :mod:`~featcache.probe.operating_point`: the one reading of a wrapper's operating point
  (``FixedThresholdClassifier``, ``TunedThresholdClassifierCV``, ``PriorShiftClassifier``,
  through ``FrozenEstimator``): its response method, threshold and positive class, as its
  ``predict`` applies them; :func:`evaluate` reports and applies it, ``featcache.to_torch``
  deploys it (imports scikit-learn: loaded inside the functions that need it).

May import: :mod:`featcache.exceptions`, :mod:`featcache.inputs` and :mod:`featcache.cache`
(reading rows and labels); numpy at import time, scikit-learn, pandas and matplotlib inside
the functions. Never torch, never :mod:`featcache.cli`.
"""

from importlib import import_module

from ..exceptions import ProbeError
from .evaluation import constrained_scorer, evaluate, fixed_threshold, tuned_threshold
from .from_cache import probe_cache
from .heads import DEFAULT_CS, HEADS, make_head
from .protocol import linear_probe
from .report import METRIC_NAMES, PLOTS, Metric, ProbeReport

__all__ = ["linear_probe", "probe_cache", "evaluate", "tuned_threshold", "fixed_threshold",
           "constrained_scorer", "ProbeReport", "Metric", "ProbeError", "make_head", "HEADS",
           "DEFAULT_CS", "PLOTS", "METRIC_NAMES", "PriorShiftClassifier"]


def __getattr__(name):
    if name == "PriorShiftClassifier":  # a scikit-learn estimator: sklearn loads with it
        value = getattr(import_module(".prior_shift", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
