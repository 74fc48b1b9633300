"""Partially frozen networks as scikit-learn estimators: frozen prefix cached, tail trained.

:class:`PartiallyFrozenClassifier` and :class:`PartiallyFrozenRegressor` freeze the first
stages of a pretrained network, cache the frozen prefix's output once
(:mod:`featcache.partial.activations`, through the one unit of work), and train the last
``trainable_blocks`` stages plus a new linear head on the cache
(:mod:`featcache.partial.training`). Every epoch, fold, grid-search candidate and refit reads
the cache: the prefix never runs twice for an input. Importing this module does not import
torch; fitting does.
"""

from __future__ import annotations

import os
import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, InvalidParameterError, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..exceptions import InputError, InvalidOptionError, LayerError, TargetError
from ..options import run_constraints

__all__ = ["PartiallyFrozenClassifier", "PartiallyFrozenRegressor"]

_RUN = ("batch_size", "device", "precision", "num_workers", "on_error", "progress", "window",
        "retry_failed", "verify_inputs")


class _PartiallyFrozen(BaseEstimator):
    """What the classifier and the regressor share (parameters, caching, the tail)."""

    _parameter_constraints: dict = {
        **{name: constraint for name, constraint in run_constraints().items() if name in _RUN},
        "model": [str],
        "trainable_blocks": [Interval(Integral, 0, None, closed="left")],
        "weights": [str, os.PathLike, None],
        "image_size": run_constraints()["image_size"],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "head_learning_rate": [Interval(Real, 0, None, closed="neither"), None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "batchnorm": [StrOptions({"frozen", "train"})],
        "augment_views": [Interval(Integral, 0, None, closed="left")],
        "augment_policy": [HasMethods(["apply", "describe"]), None],
        "cache_dtype": [StrOptions({"float16", "float32"})],
        "max_memory": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "cache": [str, os.PathLike, "boolean", None, HasMethods(["namespace", "verify"])],
    }

    # ------------------------------------------------------------------ shared machinery

    def _run_options(self):
        from ..options import resolve_run_options

        try:
            return resolve_run_options(type(self).__name__,
                                       **{name: getattr(self, name) for name in _RUN})
        except InvalidOptionError as exc:  # scikit-learn's convention for estimators
            raise InvalidParameterError(str(exc)) from exc

    def _network(self):
        """(spec, pretrained unfolded network, stage layout), memoised per process."""
        from ..backbones import get_backbone, stage_layout
        from .network import pretrained_network

        spec = get_backbone(self.model)
        network = pretrained_network(spec, self.weights)
        return spec, network, stage_layout(network, spec.name)

    def _activations(self, items, options, *, views=0, expected=None):
        from ..inputs.augment import DEFAULT_POLICY
        from .activations import memory_budget, prefix_activations

        k = self.trainable_blocks
        return prefix_activations(
            items, model=self.model, weights=self.weights, layer=self.cut_layer_,
            pooling="none" if k else self.pool_, image_size=self.image_size, options=options,
            cache=self.cache, storage=self.cache_dtype, views=views,
            policy=self.augment_policy or DEFAULT_POLICY, max_memory=memory_budget(self.max_memory),
            expected=expected)

    def _training_config(self, options, seed):
        from .training import TrainingConfig

        head_lr = self.head_learning_rate or 10 * self.learning_rate
        return TrainingConfig(max_epochs=self.max_epochs, batch_size=self.batch_size,
                              learning_rate=self.learning_rate, head_learning_rate=head_lr,
                              weight_decay=self.weight_decay, n_iter_no_change=self.n_iter_no_change,
                              tol=self.tol, seed=seed, device=options.device,
                              precision=options.precision, progress=options.progress)

    def _fit(self, X, targets, n_outputs, loss_fn, score_fn, stratify):
        """Cache the prefix, build and train the tail on ``targets`` (a tensor, one per input)."""
        from ..inputs import as_items
        from .tail import build_tail, tail_state
        from .training import train_tail

        start = time.perf_counter()
        options = self._run_options()
        items = as_items(X)
        self._check_split(len(items))
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        spec, network, layout = self._network()
        try:
            layout.check_trainable(self.trainable_blocks, spec.name)
        except LayerError as exc:
            raise InvalidParameterError(str(exc)) from exc
        self.n_stages_ = layout.n_stages
        self.stages_ = [s.name for s in layout.stages]
        self.cut_layer_, self.pool_ = layout.cut_layer(self.trainable_blocks), layout.pool
        acts = self._activations(items, options, views=self.augment_views)
        positions = self._usable(acts, len(items))
        acts.check_finite(positions, "training")
        self._check_split(len(positions), "readable ")
        self.prefix_fingerprint_ = acts.fingerprints[0]
        self.row_shape_ = tuple(acts.row_shape)
        tail = build_tail(network, layout.tail_modules(self.trainable_blocks), layout.pool,
                          self.row_shape_, n_outputs, batchnorm=self.batchnorm, seed=seed)
        train_idx, val_idx = self._split(positions, stratify, seed)
        config = self._training_config(options, seed)
        extracted = time.perf_counter() - start
        result = train_tail(tail, acts.rows_on(config.device), targets, train_idx, val_idx,
                            loss_fn=loss_fn, score_fn=score_fn, config=config,
                            n_views=acts.n_views)
        tail.to("cpu")
        self.tail_state_ = tail_state(tail)
        self._tail = tail
        self.loss_curve_ = result.loss_curve
        self.validation_scores_ = result.validation_scores
        self.best_epoch_ = result.best_epoch
        self.n_iter_ = result.n_iter
        self.fit_stats_ = {"computed": acts.computed, "cached": acts.cached,
                           "failed": len(acts.failures), "in_memory": acts.in_memory,
                           "prefix_seconds": extracted, "epoch_seconds": result.epoch_seconds,
                           "seconds": time.perf_counter() - start}
        return self

    def _usable(self, acts, n):
        """Positions with rows; failed inputs (``on_error="skip"``) are left out with a warning."""
        if acts.failures:
            if len(acts.failures) == n:
                raise InputError(f"none of the {n} training inputs could be read; first: "
                                 f"{next(iter(acts.failures.values()))}")
            warnings.warn(f"{len(acts.failures)} of {n} training inputs could not be read and are "
                          f"left out of training; first: {next(iter(acts.failures.values()))}",
                          UserWarning, stacklevel=3)
        return acts.valid

    def _check_split(self, n: int, readable: str = "") -> None:
        """Refuse an early-stopping split of ``n`` images that leaves nothing to train on
        (before the prefix runs, and again once unreadable images are left out)."""
        if not self.early_stopping:
            return
        n_val = int(np.ceil(self.validation_fraction * n))  # as train_test_split rounds
        if n - n_val < 1:
            most = f"at most {(n - 1) / n:.3g} here, " if n > 1 else ""
            raise InvalidParameterError(
                f"early_stopping=True holds out validation_fraction={self.validation_fraction} "
                f"of the {n} {readable}training images: {n_val} to validate leaves {n - n_val} "
                f"to train on. Lower validation_fraction ({most}the validation set takes at "
                "least one image), pass more images, or set early_stopping=False.")

    def _split(self, positions, stratify, seed):
        if not self.early_stopping:
            return positions, None
        from sklearn.model_selection import train_test_split

        strat = stratify[positions] if stratify is not None else None
        try:
            return tuple(train_test_split(positions, test_size=self.validation_fraction,
                                          random_state=seed, stratify=strat))
        except ValueError:  # a class too small to stratify
            return tuple(train_test_split(positions, test_size=self.validation_fraction,
                                          random_state=seed))

    def _fitted_tail(self):
        """The trained tail, rebuilt from ``tail_state_`` after unpickling.

        The fitted state of a loaded estimator is checked first (:mod:`.fitted`): a row shape,
        cut or weights its architecture could not have given raise ``InvalidModelError``
        before the tail is built.
        """
        tail = self.__dict__.get("_tail")
        if tail is None:
            from ..backbones import get_backbone, stage_layout
            from .activations import memory_budget
            from .fitted import check_fitted_state, check_tail_state, head_outputs
            from .network import architecture
            from .tail import build_tail, load_tail_state

            self._validate_params()
            spec = get_backbone(self.model)
            network = architecture(spec)
            layout = stage_layout(network, spec.name)
            n_out = head_outputs(self)
            row_shape = check_fitted_state(self, spec, network, layout, memory_budget("auto"))
            tail = build_tail(network, layout.tail_modules(self.trainable_blocks), layout.pool,
                              row_shape, n_out, batchnorm=self.batchnorm)
            check_tail_state(self.tail_state_, tail)
            self._tail = tail = load_tail_state(tail, self.tail_state_)
        return tail

    def _outputs(self, X) -> np.ndarray:
        """Raw outputs of the tail for X; NaN rows for failed inputs (``on_error="skip"``)."""
        check_is_fitted(self, "tail_state_")
        from ..inputs import as_items
        from .training import predict_outputs

        tail = self._fitted_tail()  # a loaded estimator's state is checked before any use
        options = self._run_options()
        items = as_items(X)
        acts = self._activations(items, options, expected=self.prefix_fingerprint_)
        out = np.full((len(items), tail.head.out_features), np.nan, dtype=np.float32)
        valid = acts.valid
        if len(valid):
            config = self._training_config(options, 0)
            out[valid] = predict_outputs(tail, acts.rows_on(config.device), valid, config)
        tail.to("cpu")
        self.failures_ = dict(acts.failures)
        return out

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_tail", None)  # a torch module: the arrays of tail_state_ travel instead
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.non_deterministic = self.random_state is None
        return tags


class PartiallyFrozenClassifier(ClassifierMixin, _PartiallyFrozen):
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
        its K views. Prediction uses the unaugmented input.
    augment_policy : featcache.inputs.augment.AugmentPolicy or None, default=None
        None uses ``featcache.inputs.augment.DEFAULT_POLICY`` (``"mild-v1"``: no flips).
    cache_dtype : {"float16", "float32"}, default="float16"
        Storage of the cached activations (in the fingerprint).
    max_memory : "auto" or int, default="auto"
        Cached activations are read into memory when they take at most this many bytes
        (``"auto"``: a quarter of the machine's memory); otherwise every batch is read from the
        cache's shards.
    random_state : int, RandomState or None, default=None
        Seeds the head, the shuffling, the augmentation draws and the validation split: the
        same seed on the same machine gives identical predictions.
    device, precision, cache, num_workers, on_error, progress, window, retry_failed, verify_inputs
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
        Rows computed and cached, seconds for the prefix and per epoch.

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

    _parameter_constraints: dict = {
        **_PartiallyFrozen._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(self, model="efficientnet_lite0", *, trainable_blocks=1, weights="DEFAULT",
                 image_size=None, max_epochs=10, batch_size=64, learning_rate=3e-4,
                 head_learning_rate=None, weight_decay=0.01, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=5, tol=1e-4, class_weight=None,
                 batchnorm="frozen", augment_views=0, augment_policy=None, cache_dtype="float16",
                 max_memory="auto", random_state=None, device="auto", precision="auto",
                 cache="auto", num_workers=None, on_error="raise", progress=None, window=None,
                 retry_failed=False, verify_inputs="stat"):
        _store_parameters(self, locals())

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

        from ..inputs import as_items

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

    def decision_function(self, X):
        """Logits, shape (n, n_classes); for two classes the difference (n,), as scikit-learn."""
        out = self._outputs(X)
        return out[:, 1] - out[:, 0] if len(self.classes_) == 2 else out

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits); NaN rows for unreadable inputs."""
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


class PartiallyFrozenRegressor(RegressorMixin, _PartiallyFrozen):
    """The regression twin of :class:`PartiallyFrozenClassifier`.

    Parameters are those of :class:`PartiallyFrozenClassifier` without ``class_weight``, plus:

    loss : {"squared_error", "huber"}, default="squared_error"
        Training loss on standardised targets (``huber`` with delta 1, in standard deviations).

    Targets are standardised for training (mean 0, standard deviation 1 per output) and
    predictions brought back to their scale; early stopping scores R^2.

    Attributes
    ----------
    As the classifier's, without ``classes_``; ``n_outputs_`` is the number of targets.
    """

    _parameter_constraints: dict = {
        **_PartiallyFrozen._parameter_constraints,
        "loss": [StrOptions({"squared_error", "huber"})],
    }

    def __init__(self, model="efficientnet_lite0", *, trainable_blocks=1, weights="DEFAULT",
                 image_size=None, max_epochs=10, batch_size=64, learning_rate=3e-4,
                 head_learning_rate=None, weight_decay=0.01, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=5, tol=1e-4, loss="squared_error",
                 batchnorm="frozen", augment_views=0, augment_policy=None, cache_dtype="float16",
                 max_memory="auto", random_state=None, device="auto", precision="auto",
                 cache="auto", num_workers=None, on_error="raise", progress=None, window=None,
                 retry_failed=False, verify_inputs="stat"):
        _store_parameters(self, locals())

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

        from ..inputs import as_items

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
        return out[:, 0] if self.__dict__.get("_y_1d", True) and out.shape[1] == 1 else out


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
