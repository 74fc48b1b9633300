"""An operating point for a change of class prevalence, computed from the labels given to fit.

:class:`PriorShiftClassifier` wraps any classifier with ``predict_proba`` and adjusts its
probabilities from the class frequencies of the training labels (the *training prior*) to
the class frequencies expected where it is used (the *target prior*): each probability is
multiplied by ``target prior / training prior`` of its class and the row renormalised
(Saerens, Latinne and Decaestecker, "Adjusting the outputs of a classifier to new a priori
probabilities", Neural Computation 14, 2002). With ``target_prior="balanced"`` this is the
operating point of equal class priors; for two classes it equals thresholding the wrapped
probability of the positive class at its training prevalence.

scikit-learn has ``FixedThresholdClassifier`` (a threshold given as a number) and
``TunedThresholdClassifierCV`` (a threshold chosen on held-out folds for a metric); this
estimator computes the point from ``y`` at fit, so it stays right when refitted on other data.

May import: :mod:`featcache.exceptions`; numpy at import time, scikit-learn. Never torch.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.utils import get_tags
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ..exceptions import ProbeError

__all__ = ["PriorShiftClassifier"]

#: Tolerance of the sum of a target prior given as per-class values.
PRIOR_SUM_TOL = 1e-6


class PriorShiftClassifier(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """A classifier whose probabilities are adjusted from the training prior to a target prior.

    ``fit`` fits a clone of ``estimator`` (wrap a fitted model in
    ``sklearn.frozen.FrozenEstimator`` to use it without refitting) and records the class
    frequencies of ``y``; ``predict_proba`` multiplies the wrapped probabilities by
    ``weights_ = target_prior_ / train_prior_`` and renormalises each row (Saerens et al.,
    2002); ``predict`` gives the class of highest adjusted probability.

    Parameters
    ----------
    estimator : classifier
        Fitted or not, with ``fit`` and ``predict_proba`` (a ``Pipeline`` with
        :class:`~featcache.FrozenBackbone`, a :class:`~featcache.PartiallyFrozenClassifier`,
        a ``FrozenEstimator`` around a fitted model ...). Its probabilities should reflect
        the training prior (e.g. no ``class_weight="balanced"``, which already shifts them).
    target_prior : "balanced", float or array-like of shape (n_classes,), default="balanced"
        The class prevalences where the model is used. ``"balanced"``: equal priors
        (``1 / n_classes`` each). A float ``p`` in (0, 1), two classes only: the positive
        class ``classes_[1]`` has prevalence ``p`` (priors ``[1 - p, p]``). An array-like:
        one prior per class in ``classes_`` order, each > 0, summing to 1.

    Attributes
    ----------
    estimator_ : classifier
        The fitted clone of ``estimator`` that gives the wrapped probabilities.
    classes_ : ndarray of shape (n_classes,)
        The class labels, those of ``estimator_``.
    train_prior_ : ndarray of shape (n_classes,)
        The class frequencies of ``y`` at fit, in ``classes_`` order (weighted by
        ``sample_weight`` when it is given to ``fit``).
    target_prior_ : ndarray of shape (n_classes,)
        ``target_prior`` as per-class priors in ``classes_`` order.
    weights_ : ndarray of shape (n_classes,)
        ``target_prior_ / train_prior_``: the factor of each class's probability.
    threshold_ : float
        Two classes only: the threshold on the wrapped estimator's probability of
        ``classes_[1]`` at which the adjusted probabilities are equal; ``predict`` says
        ``classes_[1]`` when the wrapped probability is at least this. With
        ``target_prior="balanced"`` it is the training prevalence of ``classes_[1]``.
    n_features_in_ : int
        Copied from ``estimator_`` when it has it.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Copied from ``estimator_`` when it has it.

    See Also
    --------
    sklearn.model_selection.FixedThresholdClassifier : A decision threshold given as a number.
    featcache.probe.tuned_threshold : A threshold chosen on held-out folds for a target
        sensitivity or specificity.

    Notes
    -----
    For two classes, with training prior ``(1 - t, t)`` and target prior ``(1 - p, p)``, the
    adjusted probability of ``classes_[1]`` is at least 0.5 exactly when the wrapped one is at
    least ``threshold_ = t (1 - p) / (t (1 - p) + (1 - t) p)``; ``predict`` compares the
    wrapped probability with ``threshold_`` (ties go to ``classes_[1]``, as in
    ``FixedThresholdClassifier``), so its predictions equal those of
    ``FixedThresholdClassifier(estimator, threshold=threshold_)`` exactly. The ranking of the
    samples (and so ROC AUC) is that of the wrapped estimator; the probabilities, and so the
    Brier score and calibration, are those of the target prior.

    The training prior is that of the ``y`` given to ``fit``: with a ``FrozenEstimator``,
    give the labels the model was trained on (or data of the same prevalence).

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from featcache.probe import PriorShiftClassifier
    >>> X, y = make_classification(400, weights=[0.8], random_state=0)
    >>> clf = PriorShiftClassifier(LogisticRegression()).fit(X, y)
    >>> clf.train_prior_.round(3).tolist(), clf.threshold_ == float(y.mean())
    ([0.798, 0.202], True)
    """

    def __init__(self, estimator, *, target_prior="balanced"):
        self.estimator = estimator
        self.target_prior = target_prior

    def fit(self, X, y, **fit_params):
        """Fit a clone of ``estimator`` and record the training prior of ``y``.

        Parameters
        ----------
        X : array-like, images or features
            Whatever ``estimator`` fits on.
        y : array-like of shape (n_samples,)
            Class labels, at least two classes.
        **fit_params : dict
            Passed to ``estimator.fit``. A ``sample_weight`` there also weights the class
            frequencies of ``train_prior_`` (the prior the weighted fit learned).

        Returns
        -------
        self : PriorShiftClassifier
            The fitted estimator.
        """
        if not hasattr(self.estimator, "fit") or not hasattr(self.estimator, "predict_proba"):
            raise ProbeError(
                f"PriorShiftClassifier needs an estimator with fit and predict_proba (it "
                f"adjusts probabilities), got {type(self.estimator).__name__}; wrap it in "
                "sklearn.calibration.CalibratedClassifierCV to get probabilities")
        y = self._check_y(y)
        weight = fit_params.get("sample_weight")
        _class_mass_of_each(y, np.unique(y), weight)  # bad weights fail before a long fit
        self.estimator_ = clone(self.estimator).fit(X, y, **fit_params)
        classes = getattr(self.estimator_, "classes_", None)
        if classes is None:
            raise ProbeError(f"the fitted {type(self.estimator_).__name__} has no classes_; "
                             "PriorShiftClassifier needs a classifier")
        self.classes_ = np.asarray(classes)
        mass = _class_mass_of_each(y, self.classes_, weight)
        self.train_prior_ = mass / mass.sum()
        self.target_prior_ = _target_prior(self.target_prior, self.classes_)
        self.weights_ = self.target_prior_ / self.train_prior_
        if len(self.classes_) == 2:
            # counts (or weight sums) ratio: with equal target priors this is c1 / n exactly,
            # the float y.mean() a FixedThresholdClassifier would be given
            (t0, t1), (n0, n1) = self.target_prior_, mass
            self.threshold_ = float(n1 * t0 / (n1 * t0 + n0 * t1))
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(self.estimator_, name):
                setattr(self, name, getattr(self.estimator_, name))
        return self

    @staticmethod
    def _check_y(y):
        if y is None:
            raise ProbeError("PriorShiftClassifier requires y to be passed, but the target y is "
                             "None; pass the training labels (their class frequencies are the "
                             "training prior)")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind not in ("binary", "multiclass") or len(np.unique(y)) < 2:
            raise ProbeError(
                f"PriorShiftClassifier needs y of one class label per sample with at least two "
                f"classes, got {kind} y of shape {y.shape} with "
                f"{len(np.unique(y)) if y.ndim == 1 else '?'} distinct value(s); a prior shift "
                "needs the training frequency of every class")
        return y

    def predict_proba(self, X):
        """The wrapped probabilities adjusted to the target prior.

        Parameters
        ----------
        X : array-like, images or features
            What ``estimator_.predict_proba`` takes.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            ``estimator_.predict_proba(X) * weights_``, each row divided by its sum.
        """
        check_is_fitted(self, "weights_")
        scaled = np.asarray(self.estimator_.predict_proba(X), dtype=float) * self.weights_
        return scaled / scaled.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """The logarithm of :meth:`predict_proba` (``-inf`` where it is 0).

        Parameters
        ----------
        X : array-like, images or features
            What ``estimator_.predict_proba`` takes.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """The class of highest adjusted probability.

        Two classes: ``classes_[1]`` when the wrapped probability of ``classes_[1]`` is at
        least ``threshold_`` (the same decision, computed without rounding the adjustment).

        Parameters
        ----------
        X : array-like, images or features
            What ``estimator_.predict_proba`` takes.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Labels of ``classes_``.
        """
        check_is_fitted(self, "weights_")
        if len(self.classes_) == 2:
            p = np.asarray(self.estimator_.predict_proba(X), dtype=float)[:, 1]
            return self.classes_[(p >= self.threshold_).astype(int)]
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = get_tags(self.estimator).input_tags.sparse
        return tags


def _class_mass(y, classes, weight):
    """Count (or summed ``weight``) of each class of ``classes`` in ``y``; labels checked."""
    y = np.asarray(y)
    known = np.asarray(classes).tolist()
    unknown = sorted({str(v) for v in set(y.tolist()) - set(known)})
    if unknown:
        raise ProbeError(f"y holds labels {unknown[:5]} that the estimator does not predict (its "
                         f"classes: {known}); give PriorShiftClassifier the labels the model "
                         "was trained on")
    weight = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
    if weight.shape != y.shape or not np.all(np.isfinite(weight)) or np.any(weight < 0):
        raise ProbeError(f"sample_weight must be one finite non-negative weight per sample "
                         f"({len(y)}), got shape {weight.shape}; fix the weights given to fit")
    return np.array([weight[y == c].sum() for c in classes])


def _class_mass_of_each(y, classes, weight):
    """:func:`_class_mass`, refusing a class of ``classes`` with none (no prior to shift)."""
    mass = _class_mass(y, classes, weight)
    missing = [c for c, m in zip(np.asarray(classes).tolist(), mass) if m <= 0]
    if missing:
        which = "sample in y" if weight is None else "sample in y with a positive sample_weight"
        raise ProbeError(f"class(es) {missing} of the estimator have no {which}, so their "
                         "training prior is 0 and cannot be shifted; fit on labels (and "
                         "weights) that hold every class")
    return mass


def _target_prior(target, classes):
    """``target_prior`` as an array of per-class priors in ``classes`` order, validated."""
    classes, k = np.asarray(classes).tolist(), len(classes)
    if isinstance(target, str):
        if target != "balanced":
            raise ProbeError(f"target_prior must be 'balanced', a float in (0, 1) (two "
                             f"classes) or one prior per class, got the string {target!r}; "
                             "use target_prior='balanced' for equal priors")
        return np.full(k, 1.0 / k)
    if isinstance(target, Real) and not isinstance(target, bool):
        if k != 2:
            raise ProbeError(f"target_prior={target!r} (a float, the positive class's "
                             f"prevalence) needs two classes, the estimator has {k}; give one "
                             "prior per class instead")
        if not 0 < target < 1:
            raise ProbeError(f"target_prior={target!r} must be the prevalence of the positive "
                             f"class {classes[1]!r}, strictly between 0 and 1")
        return np.array([1.0 - target, float(target)])
    try:
        prior = np.asarray(target, dtype=float)
    except (TypeError, ValueError):
        prior = None
    if prior is None or prior.ndim != 1 or isinstance(target, bool):
        raise ProbeError(f"target_prior must be 'balanced', a float in (0, 1) or one prior per "
                         f"class ({k}), got {target!r}")
    if len(prior) != k:
        raise ProbeError(f"target_prior has {len(prior)} values, the estimator has {k} classes "
                         f"({classes}); give one prior per class, in classes_ order")
    if not np.all(np.isfinite(prior)) or np.any(prior <= 0):
        raise ProbeError(f"target_prior values must all be > 0, got {prior.tolist()}; a class "
                         "expected never cannot be shifted to (give it a small prior)")
    if abs(prior.sum() - 1) > PRIOR_SUM_TOL:
        raise ProbeError(f"target_prior must sum to 1, got {prior.tolist()} (sum "
                         f"{prior.sum():g}); divide by the sum")
    return prior
