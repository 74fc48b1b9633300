"""What a classifier's ``predict`` is: the wrappers that set an operating point.

scikit-learn's ``FixedThresholdClassifier`` and a fitted ``TunedThresholdClassifierCV``
(featcache's recipe: :func:`featcache.probe.tuned_threshold`, :func:`featcache.probe.
fixed_threshold`) leave the wrapped model's ``predict_proba`` and ``decision_function``
unchanged and move only ``predict``: the positive class's score (a probability or a decision
value, ``response_method``) at or above the threshold gives the positive class
(``pos_label``), else the other. :class:`~featcache.probe.PriorShiftClassifier` reweights the
wrapped probabilities to another class prior (its ``weights_``, its ``threshold_`` for two
classes), and scikit-learn's ``FrozenEstimator`` only keeps a fitted model from refitting.
:func:`wrapped_estimator` finds the fitted model inside any of them, :func:`unfrozen` takes the
``FrozenEstimator`` layers off, :func:`operating_point` reads a threshold as scikit-learn's
``predict`` applies it. The one reading of these facts: :func:`featcache.evaluate` reports and
applies them, :func:`featcache.to_torch` builds them as layers. Imports scikit-learn (loaded
on first use by the probe), never torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import FixedThresholdClassifier, TunedThresholdClassifierCV
from sklearn.utils.validation import check_is_fitted

from .prior_shift import PriorShiftClassifier

try:  # scikit-learn >= 1.6
    from sklearn.frozen import FrozenEstimator
except ImportError:  # pragma: no cover - scikit-learn 1.5
    FrozenEstimator = None

__all__ = ["THRESHOLDED", "OperatingPoint", "wrapped_estimator", "unfrozen",
           "operating_point"]

#: The wrappers whose ``predict`` thresholds the wrapped binary classifier's score.
THRESHOLDED = (FixedThresholdClassifier, TunedThresholdClassifierCV)

_RESPONSES = ("predict_proba", "decision_function")


@dataclass(frozen=True)
class OperatingPoint:
    """A binary classifier's operating point, as its ``predict`` applies it.

    Attributes
    ----------
    response : {"predict_proba", "decision_function"}
        The wrapped estimator's method whose score is thresholded.
    threshold : float
        The positive class is predicted where its score is ``>= threshold``.
    positive : int
        Index of the positive class in ``classes_`` (the other one is ``1 - positive``).
    """

    response: str
    threshold: float
    positive: int


def wrapped_estimator(estimator):
    """The fitted estimator inside a ``FixedThresholdClassifier``, a fitted
    ``TunedThresholdClassifierCV``, a fitted :class:`~featcache.probe.PriorShiftClassifier`
    or a ``FrozenEstimator``; None for any other estimator.

    A ``FixedThresholdClassifier`` made around a fitted estimator without being fitted itself
    (:func:`featcache.probe.fixed_threshold`) uses that estimator, as scikit-learn's does.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        Neither the wrapper nor the estimator it wraps is fitted.
    """
    if isinstance(estimator, PriorShiftClassifier):
        check_is_fitted(estimator, "weights_")
        return estimator.estimator_
    if FrozenEstimator is not None and isinstance(estimator, FrozenEstimator):
        check_is_fitted(estimator.estimator)
        return estimator.estimator
    if isinstance(estimator, TunedThresholdClassifierCV):
        check_is_fitted(estimator, "best_threshold_")
        return estimator.estimator_
    if isinstance(estimator, FixedThresholdClassifier):
        inner = getattr(estimator, "estimator_", None)
        if inner is None:
            check_is_fitted(estimator.estimator)
            inner = estimator.estimator
        return inner
    return None


def unfrozen(estimator):
    """``estimator`` without the ``FrozenEstimator`` layers around it (they change no output;
    whether what is inside is fitted is for its own use to check)."""
    while FrozenEstimator is not None and isinstance(estimator, FrozenEstimator):
        estimator = estimator.estimator
    return estimator


def operating_point(estimator, inner=None) -> OperatingPoint:
    """The :class:`OperatingPoint` of a thresholded ``estimator`` around the fitted ``inner``.

    ``estimator``: a ``FixedThresholdClassifier``, a fitted ``TunedThresholdClassifierCV`` or
    a fitted two-class :class:`~featcache.probe.PriorShiftClassifier`; ``inner``: the fitted
    estimator it wraps (default: :func:`wrapped_estimator` of it). ``response_method="auto"``
    is ``predict_proba`` where ``inner`` has it, else ``decision_function``;
    ``threshold="auto"`` is 0.5 for a probability and 0 for a decision value;
    ``pos_label=None`` is ``classes_[1]``. A ``TunedThresholdClassifierCV`` takes its
    ``best_threshold_`` and the positive class of its scorer, as its ``predict`` does. A
    ``PriorShiftClassifier`` predicts ``classes_[1]`` where the wrapped probability of it is
    at least its ``threshold_``.

    Raises
    ------
    ValueError
        ``inner`` is not a binary classifier, has not the response method asked for, or
        ``pos_label`` is not one of its classes.
    TypeError
        ``estimator`` is none of those wrappers.
    sklearn.exceptions.NotFittedError
        The wrapper (or, for a ``FixedThresholdClassifier``, the estimator it wraps) is not
        fitted.
    """
    name = type(estimator).__name__
    if not isinstance(estimator, (*THRESHOLDED, PriorShiftClassifier)):
        raise TypeError(f"{name} sets no operating point; expected a FixedThresholdClassifier, "
                        "a TunedThresholdClassifierCV or a PriorShiftClassifier (take a "
                        "FrozenEstimator off with featcache.probe.operating_point.unfrozen).")
    inner = wrapped_estimator(estimator) if inner is None else inner
    classes = np.asarray(getattr(inner, "classes_", []))
    if isinstance(estimator, PriorShiftClassifier):
        if len(classes) != 2:
            raise ValueError(f"PriorShiftClassifier has {len(classes)} classes: its predict "
                             "is the class of highest adjusted probability, with no threshold; "
                             "an operating point needs two classes.")
        return OperatingPoint("predict_proba", float(estimator.threshold_), 1)
    if classes.ndim != 1 or len(classes) != 2:
        raise ValueError(f"{name} thresholds a binary classifier; its estimator has classes "
                         f"{classes.tolist()}. Use a binary classifier, or the estimator "
                         "itself (estimator.estimator_: the class of highest score).")
    wanted = estimator.response_method
    candidates = _RESPONSES if wanted == "auto" else (wanted,)
    found = [m for m in candidates if hasattr(inner, m)]
    if not found:
        has = [m for m in _RESPONSES if hasattr(inner, m)]
        raise ValueError(f"{name}(response_method={wanted!r}) needs {' or '.join(candidates)} "
                         f"of its estimator, and {type(inner).__name__} has none; set "
                         f"response_method to one it has ({has}), with a threshold on its scale.")
    response = found[0]
    if isinstance(estimator, TunedThresholdClassifierCV):
        threshold = estimator.best_threshold_
        pos_label = _tuned_pos_label(estimator)
    else:
        threshold = estimator.threshold
        if isinstance(threshold, str) and threshold == "auto":
            threshold = 0.5 if response == "predict_proba" else 0.0
        pos_label = estimator.pos_label
    if pos_label is None:
        positive = 1
    elif pos_label in classes.tolist():
        positive = int(np.flatnonzero(classes == pos_label)[0])
    else:
        raise ValueError(f"{name} has pos_label={pos_label!r}, which is not one of its "
                         f"estimator's classes {classes.tolist()}; set pos_label to one of "
                         "them (or None for the second).")
    return OperatingPoint(response, float(threshold), positive)


def _tuned_pos_label(tuned):
    """The positive class ``TunedThresholdClassifierCV.predict`` uses: its curve scorer's."""
    scorer = getattr(tuned, "_curve_scorer", None)
    get = getattr(scorer, "_get_pos_label", None)
    if get is None:
        raise TypeError(
            "featcache cannot read the positive class of this TunedThresholdClassifierCV (this "
            "scikit-learn version keeps it elsewhere); freeze its operating point with "
            "featcache.probe.fixed_threshold(tuned) and deploy that FixedThresholdClassifier.")
    return get()
