"""Partially frozen networks as scikit-learn estimators: frozen prefix cached, tail trained.

:class:`PartiallyFrozenClassifier` and :class:`PartiallyFrozenRegressor` freeze the first
stages of a pretrained network, cache the frozen prefix's output once
(:mod:`featcache.partial.activations`, through the one unit of work), and train the last
``trainable_blocks`` stages plus a new linear head on the cache
(:mod:`featcache.partial.training`). Every epoch, fold, grid-search candidate and refit reads
the cache: the prefix never runs twice for an input. This module holds what differs between
the two (parameters, targets, losses, predictions); what they share, the fit and the outputs,
is :class:`featcache.partial.base.PartiallyFrozen`. Importing this module does not import
torch; fitting does.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from ..exceptions import InputError, TargetError
from ..inputs import as_items
from ..options import option_constraints
from .base import PartiallyFrozen

__all__ = ["PartiallyFrozenClassifier", "PartiallyFrozenRegressor"]


class PartiallyFrozenClassifier(ClassifierMixin, PartiallyFrozen):
    """Freeze the first stages of a pretrained network, train the last ones and a head.

    The frozen prefix runs once per input and configuration: its activations (feature maps,
    float16 by default) are cached, and the last ``trainable_blocks`` stages, initialised from
    the pretrained weights, are trained with a new linear head on the cache. Which layers to
    freeze is a hyperparameter: ``GridSearchCV(clf, {"trainable_blocks": [0, 1, 2]})`` caches
    each cut point once and never runs a frozen prefix again, in any fold or candidate.

    Parameters
    ----------
    model : str, default="efficientnet_lite0"
        Backbone name (``featcache.list_backbones()``); its stages are
        ``featcache.backbones.stages(model)``.
    trainable_blocks : int, default=1
        How many of the last stages train (0: the head alone, on the frozen pooled features).
    weights : str, path or None, default="DEFAULT"
        Pretrained weights of the whole network (see :class:`~featcache.FrozenBackbone`).
    image_size : int or None, default=None
        Network input side; None uses the backbone's.
    max_epochs : int, default=10
        Passes over the training rows.
    batch_size : int, default=64
        Rows per optimisation step (and images per forward pass of the prefix).
    learning_rate : float, default=3e-4
        AdamW learning rate of the pretrained stages; it follows a cosine schedule to 0 over
        ``max_epochs``.
    head_learning_rate : float or None, default=None
        Learning rate of the new head; None is ``10 * learning_rate``. The head starts from
        random weights and must move far, the pretrained stages only a little: a common
        fine-tuning rule that keeps their features from being wrecked by early large
        gradients of a random head.
    weight_decay : float, default=0.01
        AdamW's decoupled weight decay.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training rows (stratified), score them after
        each epoch (accuracy), stop after ``n_iter_no_change`` epochs without an improvement of
        ``tol``, and keep the best epoch's weights.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=5
    tol : float, default=1e-4
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the cross-entropy loss; ``"balanced"`` is
        ``n_samples / (n_classes * np.bincount(y))``.
    batchnorm : {"frozen", "train"}, default="frozen"
        BatchNorm layers of the trainable stages: ``"frozen"`` keeps their pretrained running
        statistics (their scale and shift still train), ``"train"`` normalises with batch
        statistics. Frozen is the default: small medical datasets and batches give noisy
        statistics (see the documentation for the measured difference).
    augment_views : int, default=0
        K seeded augmented views of each training image (:mod:`featcache.inputs.augment`), each
        cached once; each epoch trains on one view per image drawn from the image itself and
        its K views. Prediction uses the unaugmented input (unless ``tta_views``).
    augment_policy : featcache.inputs.augment.AugmentPolicy or None, default=None
        None uses ``featcache.inputs.augment.DEFAULT_POLICY`` (``"mild-v1"``: no flips).
    tta_views : int, default=0
        Test-time augmentation: predictions average over the input and its first K augmented
        views (the views of ``augment_policy``, the same ones ``augment_views`` trains on),
        each view's prefix rows computed once and cached, so a second prediction on the same
        inputs runs no prefix. ``predict_proba`` is the mean of the views' probabilities;
        ``predict`` its most probable class; ``decision_function`` the log of the mean
        probabilities (for two classes the log-odds ``log(p1 / p0)``), so its sign agrees
        with ``predict``. Only predictions read it: it can be set on a fitted estimator
        (``set_params``) without refitting. ``featcache.to_torch`` refuses ``tta_views > 0``
        (a view depends on the input's content key, which the deployed module does not
        compute). 0: the input alone, as trained.
    cache_dtype : {"float16", "float32"}, default="float16"
        Storage of the cached activations (in the fingerprint).
    max_memory : "auto" or int, default="auto"
        Cached activations are read into memory when they take at most this many bytes
        (``"auto"``: a quarter of the machine's memory); otherwise every batch is read from the
        cache's shards.
    random_state : int, RandomState or None, default=None
        Seeds the head, the shuffling, the augmentation draws and the validation split: the
        same seed on the same machine gives identical predictions.
    device, precision, cache, num_workers, on_error, progress, window, decode_scale, decoder, retry_failed, verify_inputs
        As in :class:`~featcache.FrozenBackbone`; ``precision`` also sets the autocast of
        training (bf16/fp16 on a GPU). With ``on_error="skip"`` unreadable training inputs
        are left out (with a warning), and unreadable inputs get NaN probabilities.

    Attributes
    ----------
    classes_ : ndarray
    n_stages_ : int
        Stages of the backbone; ``stages_`` names them.
    cut_layer_ : str
        The module whose output is cached.
    row_shape_ : tuple
        Shape of one cached activation.
    prefix_fingerprint_ : str
        Fingerprint of the cached activations.
    prefix_precision_ : {"fp32", "bf16", "fp16"}
        The precision the frozen prefix ran in at fit (``precision`` resolved on the fit's
        device: ``"auto"`` is fp32 on a CPU, bf16 or fp16 on a GPU); it enters
        ``prefix_fingerprint_``, and :func:`featcache.to_torch` checks the prefix under it.
    tail_state_ : dict of ndarray
        The trained weights of the tail and head (plain arrays: pickles carry no torch module).
    loss_curve_ : list of float
        Mean training loss of each epoch.
    validation_scores_ : list of float or None
        Validation accuracy of each epoch (``early_stopping=True``).
    best_epoch_ : int
        The epoch whose weights are kept.
    n_iter_ : int
        Epochs run.
    fit_stats_ : dict
        ``computed`` and ``cached`` prefix rows, ``failed`` inputs, ``in_memory`` (the
        rows held in memory while training), ``load_seconds`` (resolving and loading the
        network: about 0 once this process holds it), ``prefix_seconds`` (computing or
        reading the prefix's rows, loading excluded), ``epoch_seconds`` (one per epoch) and
        ``seconds`` (the whole fit).

    Notes
    -----
    scikit-learn's estimator checks that apply to an estimator of images are run in the test
    suite: ``check_no_attributes_set_in_init``, ``check_parameters_default_constructible``,
    ``check_get_params_invariance``, ``check_set_params``, ``check_estimator_repr`` and
    ``check_estimator_cloneable``, plus image-based versions of fit idempotence, pickling and
    ``clone``. The checks that feed random numeric matrices do not apply: X is images.

    Examples
    --------
    >>> clf = PartiallyFrozenClassifier(trainable_blocks=2, image_size=96)  # doctest: +SKIP
    >>> clf.fit(train_paths, y_train).predict_proba(val_paths)  # doctest: +SKIP
    """

    def __init__(self, model="efficientnet_lite0", *, trainable_blocks=1, weights="DEFAULT",
                 image_size=None, max_epochs=10, batch_size=64, learning_rate=3e-4,
                 head_learning_rate=None, weight_decay=0.01, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=5, tol=1e-4, class_weight=None,
                 batchnorm="frozen", augment_views=0, augment_policy=None, tta_views=0,
                 cache_dtype="float16",
                 max_memory="auto", random_state=None, device="auto", precision="auto",
                 cache="auto", num_workers=None, on_error="raise", progress=None, window=None,
                 decode_scale="reduced", decoder="pillow", retry_failed=False,
                 verify_inputs="stat"):
        _store_parameters(self, locals())

    # The options' constraints come from featcache.options (OPTIONS), the one validation.
    _parameter_constraints: dict = {
        **option_constraints(__init__),
        **PartiallyFrozen._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Cache the frozen prefix's activations of X (where missing) and train the tail.

        Parameters
        ----------
        X : images
            Anything :class:`~featcache.FrozenBackbone` takes.
        y : array-like of shape (n_samples,)
            Class labels (any type scikit-learn accepts: strings, ints).

        Returns
        -------
        self
        """
        import torch
        from sklearn.utils.class_weight import compute_class_weight
        from sklearn.utils.multiclass import check_classification_targets

        y = _check_targets(X, y, as_items)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"PartiallyFrozenClassifier needs at least 2 classes in y; got "
                             f"{len(self.classes_)} ({self.classes_.tolist()})")
        weight = None
        if self.class_weight is not None:
            weight = torch.tensor(compute_class_weight(self.class_weight, classes=self.classes_,
                                                       y=y), dtype=torch.float32)
        targets = torch.as_tensor(encoded, dtype=torch.long)

        def loss_fn(out, target):
            return torch.nn.functional.cross_entropy(
                out, target, weight=None if weight is None else weight.to(out.device))

        def score_fn(out, target):
            return float(np.mean(out.argmax(axis=1) == target))

        return self._fit(X, targets, len(self.classes_), loss_fn, score_fn, encoded)

    def _combine_views(self, outputs):
        """Logits of one view; with ``tta_views`` the log of the views' mean probabilities
        (whose softmax is that mean)."""
        if len(outputs) == 1:
            return outputs[0]
        logits = outputs.astype(np.float64)
        logits -= logits.max(axis=2, keepdims=True)
        proba = np.exp(logits)
        proba /= proba.sum(axis=2, keepdims=True)
        with np.errstate(divide="ignore"):  # a probability that underflowed to 0: -inf
            return np.log(proba.mean(axis=0))

    def decision_function(self, X):
        """Logits, shape (n, n_classes); for two classes the difference (n,), as scikit-learn.

        With ``tta_views`` the log of the views' mean probabilities instead of logits (their
        differences are log-odds).
        """
        out = self._outputs(X)
        return out[:, 1] - out[:, 0] if len(self.classes_) == 2 else out

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits; with ``tta_views``, the mean of the
        views' probabilities); NaN rows for unreadable inputs."""
        out = self._outputs(X).astype(np.float64)
        out -= out.max(axis=1, keepdims=True)
        np.exp(out, out=out)
        return out / out.sum(axis=1, keepdims=True)

    def predict(self, X):
        """The most probable class of each input.

        Raises
        ------
        InputError
            When an input could not be read (``on_error="skip"``): it has no class; use
            :meth:`predict_proba`, whose row for it is NaN.
        """
        proba = self.predict_proba(X)
        bad = np.flatnonzero(np.isnan(proba).any(axis=1))
        if len(bad):
            raise InputError(f"{len(bad)} inputs could not be read and have no class (first: "
                             f"{self.failures_.get(int(bad[0]), 'position %d' % bad[0])}); use "
                             "predict_proba, which gives them NaN rows")
        return self.classes_[proba.argmax(axis=1)]


class PartiallyFrozenRegressor(RegressorMixin, PartiallyFrozen):
    """The regression twin of :class:`PartiallyFrozenClassifier`.

    Parameters are those of :class:`PartiallyFrozenClassifier` without ``class_weight``, plus:

    loss : {"squared_error", "huber"}, default="squared_error"
        Training loss on standardised targets (``huber`` with delta 1, in standard deviations).

    Targets are standardised for training (mean 0, standard deviation 1 per output) and
    predictions brought back to their scale; early stopping scores R^2. With
    ``tta_views=K``, :meth:`predict` is the mean of the predictions for the input and its K
    augmented views.

    Attributes
    ----------
    As the classifier's, without ``classes_``; ``n_outputs_`` is the number of targets.
    """

    def __init__(self, model="efficientnet_lite0", *, trainable_blocks=1, weights="DEFAULT",
                 image_size=None, max_epochs=10, batch_size=64, learning_rate=3e-4,
                 head_learning_rate=None, weight_decay=0.01, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=5, tol=1e-4, loss="squared_error",
                 batchnorm="frozen", augment_views=0, augment_policy=None, tta_views=0,
                 cache_dtype="float16",
                 max_memory="auto", random_state=None, device="auto", precision="auto",
                 cache="auto", num_workers=None, on_error="raise", progress=None, window=None,
                 decode_scale="reduced", decoder="pillow", retry_failed=False,
                 verify_inputs="stat"):
        _store_parameters(self, locals())

    # The options' constraints come from featcache.options (OPTIONS), the one validation.
    _parameter_constraints: dict = {
        **option_constraints(__init__),
        **PartiallyFrozen._parameter_constraints,
        "loss": [StrOptions({"squared_error", "huber"})],
    }

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Cache the frozen prefix's activations of X (where missing) and train the tail.

        Parameters
        ----------
        X : images
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self
        """
        import torch

        y = np.asarray(_check_targets(X, y, as_items, multi_output=True), dtype=np.float64)
        if not np.isfinite(y).all():
            bad = int(np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))[0])
            raise TargetError(f"y[{bad}] is not finite ({y[bad].tolist()!r}); Partially"
                              "FrozenRegressor needs finite targets: drop those images with "
                              "their targets")
        self._y_1d = y.ndim == 1
        y2 = y.reshape(len(y), -1)
        self.n_outputs_ = y2.shape[1]
        self.y_mean_, self.y_scale_ = y2.mean(axis=0), y2.std(axis=0)
        self.y_scale_[self.y_scale_ == 0] = 1.0
        targets = torch.as_tensor((y2 - self.y_mean_) / self.y_scale_, dtype=torch.float32)
        loss = torch.nn.HuberLoss(delta=1.0) if self.loss == "huber" else torch.nn.MSELoss()

        def score_fn(out, target):
            ss = ((target - target.mean(axis=0)) ** 2).sum()
            return float(1 - ((target - out) ** 2).sum() / ss) if ss > 0 else 0.0

        return self._fit(X, targets, self.n_outputs_, loss, score_fn, None)

    def predict(self, X):
        """Predicted targets (NaN for unreadable inputs with ``on_error="skip"``)."""
        out = self._outputs(X).astype(np.float64) * self.y_scale_ + self.y_mean_
        return out[:, 0] if self.returns_1d() else out

    def returns_1d(self) -> bool:
        """Whether :meth:`predict` returns a 1-D array: ``y`` was 1-D at fit, one output."""
        check_is_fitted(self)
        return bool(self.__dict__.get("_y_1d", True)) and self.n_outputs_ == 1


def _store_parameters(estimator, params: dict) -> None:
    """Store every ``__init__`` argument as an attribute of the same name (nothing else)."""
    for name, value in params.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


def _check_targets(X, y, as_items, multi_output=False):
    from sklearn.utils.validation import column_or_1d

    n = len(as_items(X))
    y = np.asarray(y) if multi_output else column_or_1d(y, warn=True)
    if y.ndim not in (1, 2) or len(y) != n:
        raise TargetError(f"X holds {n} images but y has shape {np.shape(y)}; expected "
                          f"{n} targets, one per image")
    missing = _missing(y)
    if len(missing):
        value = np.asarray(y[missing[0]]).tolist()
        raise TargetError(f"y[{missing[0]}] is missing ({value!r}); {len(missing)} of the "
                          f"{len(y)} targets are missing (None or NaN). Drop those images "
                          "with their targets, or give them a value.")
    return y


def _missing(y) -> np.ndarray:
    """Positions (rows) of ``y`` with a missing value: None, NaN or pandas' NA."""
    if y.dtype.kind == "f":
        bad = np.isnan(y)
    elif y.dtype == object:
        bad = np.frompyfunc(lambda v: v is None or type(v).__name__ in ("NAType", "NaTType")
                            or (isinstance(v, float) and v != v), 1, 1)(y).astype(bool)
    else:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(bad.reshape(len(y), -1).any(axis=1))
