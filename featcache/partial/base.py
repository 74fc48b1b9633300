"""What the partially frozen classifier and regressor share: the fit and the outputs.

:class:`PartiallyFrozen` holds the parameters common to :class:`~featcache.partial.estimators.
PartiallyFrozenClassifier` and :class:`~featcache.partial.estimators.PartiallyFrozenRegressor`
and the machinery between them and the cache: the run options (from
:mod:`featcache.options`), the frozen prefix's activations (:mod:`featcache.partial.activations`,
through the one unit of work), the tail built from the pretrained network and trained on them
(:mod:`featcache.partial.tail`, :mod:`featcache.partial.training`), the early-stopping split,
and the tail's outputs for new inputs (rebuilt, and checked, after unpickling). The
estimators themselves (their parameters, targets and losses) are in
:mod:`featcache.partial.estimators`. Importing this module does not import torch; fitting does.
"""

from __future__ import annotations

import os
import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, InvalidParameterError, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..backbones import get_backbone, stage_layout
from ..backbones.loading import LoadTimer
from ..exceptions import InputError, InvalidOptionError, LayerError
from ..inputs import as_items
from ..inputs.augment import DEFAULT_POLICY
from ..engine.run_options import resolve_run_options
from ..options import RUN_OPTIONS
from .activations import memory_budget, prefix_activations
from .fitted import check_fitted_state, check_tail_state, head_outputs
from .network import architecture, pretrained_network

__all__ = ["PartiallyFrozen"]

#: The run options the estimators take (every one but the commit cadence of batch jobs).
_RUN = tuple(name for name in RUN_OPTIONS if name not in ("commit_rows", "commit_seconds"))


class PartiallyFrozen(BaseEstimator):
    """What the classifier and the regressor share (parameters, caching, the tail)."""

    #: The parameters that are no run option (the subclasses add the options' constraints,
    #: :func:`featcache.options.option_constraints` of their ``__init__``).
    _parameter_constraints: dict = {
        "trainable_blocks": [Interval(Integral, 0, None, closed="left")],
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
        "tta_views": [Interval(Integral, 0, None, closed="left")],
        "cache_dtype": [StrOptions({"float16", "float32"})],
        "max_memory": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "cache": [str, os.PathLike, "boolean", None, HasMethods(["namespace", "verify"])],
    }

    # ------------------------------------------------------------------ shared machinery

    def _run_options(self):
        try:
            return resolve_run_options(type(self).__name__,
                                       **{name: getattr(self, name) for name in _RUN})
        except InvalidOptionError as exc:  # scikit-learn's convention for estimators
            raise InvalidParameterError(str(exc)) from exc

    def _network(self, progress=None):
        """(spec, pretrained unfolded network, stage layout), memoised per process."""
        spec = get_backbone(self.model)
        network = pretrained_network(spec, self.weights, progress)
        return spec, network, stage_layout(network, spec.name)

    def _activations(self, items, options, *, views=0, expected=None):
        k = self.trainable_blocks
        return prefix_activations(
            items, model=self.model, weights=self.weights, layer=self.cut_layer_,
            pooling="none" if k else self.pool_, image_size=self.image_size, options=options,
            cache=self.cache, storage=self.cache_dtype, views=views,
            policy=self.augment_policy or DEFAULT_POLICY, max_memory=memory_budget(self.max_memory),
            expected=expected)

    def _training_config(self, options, seed):
        from .training import TrainingConfig  # imports torch

        head_lr = self.head_learning_rate or 10 * self.learning_rate
        return TrainingConfig(max_epochs=self.max_epochs, batch_size=self.batch_size,
                              learning_rate=self.learning_rate, head_learning_rate=head_lr,
                              weight_decay=self.weight_decay, n_iter_no_change=self.n_iter_no_change,
                              tol=self.tol, seed=seed, device=options.device,
                              precision=options.precision, progress=options.progress)

    def _fit(self, X, targets, n_outputs, loss_fn, score_fn, stratify):
        """Cache the prefix, build and train the tail on ``targets`` (a tensor, one per input)."""
        from .tail import build_tail, tail_state  # imports torch
        from .training import train_tail  # imports torch

        start = time.perf_counter()
        options = self._run_options()
        items = as_items(X)
        self._check_split(len(items))
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        loads = LoadTimer()  # loading the network, apart from computing the prefix's rows
        with loads:
            spec, network, layout = self._network(options.progress)
        try:
            layout.check_trainable(self.trainable_blocks, spec.name)
        except LayerError as exc:
            raise InvalidParameterError(str(exc)) from exc
        self.n_stages_ = layout.n_stages
        self.stages_ = [s.name for s in layout.stages]
        self.cut_layer_, self.pool_ = layout.cut_layer(self.trainable_blocks), layout.pool
        prefix_start, loaded = time.perf_counter(), loads.seconds
        with loads:
            acts = self._activations(items, options, views=self.augment_views)
        prefix_seconds = time.perf_counter() - prefix_start - (loads.seconds - loaded)
        positions = self._usable(acts, len(items))
        acts.check_finite(positions, "training")
        self._check_split(len(positions), "readable ")
        self.prefix_fingerprint_ = acts.fingerprints[0]
        self.prefix_precision_ = options.precision  # in the fingerprint; to_torch reads it
        self.row_shape_ = tuple(acts.row_shape)
        tail = build_tail(network, layout.tail_modules(self.trainable_blocks), layout.pool,
                          self.row_shape_, n_outputs, batchnorm=self.batchnorm, seed=seed)
        train_idx, val_idx = self._split(positions, stratify, seed)
        config = self._training_config(options, seed)
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
                           "load_seconds": loads.seconds, "prefix_seconds": prefix_seconds,
                           "epoch_seconds": result.epoch_seconds,
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
            from .tail import build_tail, load_tail_state  # imports torch

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
        """Outputs of the tail for X, the views combined (:meth:`_combine_views`); NaN rows for
        failed inputs (``on_error="skip"``).

        With ``tta_views=K`` the prefix rows of the input and of its K augmented views (the
        policy of ``augment_views``) come from the cache, each computed once; the tail runs
        on every view and :meth:`_combine_views` averages them.
        """
        check_is_fitted(self, "tail_state_")
        from .training import predict_outputs  # imports torch

        tail = self._fitted_tail()  # a loaded estimator's state is checked before any use
        options = self._run_options()
        items = as_items(X)
        acts = self._activations(items, options, views=self._tta_views(),
                                 expected=self.prefix_fingerprint_)
        out = np.full((acts.n_views, len(items), tail.head.out_features), np.nan,
                      dtype=np.float32)
        valid = acts.valid
        if len(valid):
            config = self._training_config(options, 0)
            rows = acts.rows_on(config.device)
            for view in range(acts.n_views):
                out[view, valid] = predict_outputs(tail, _one_view(rows, view), valid, config)
        tail.to("cpu")
        self.failures_ = dict(acts.failures)
        return self._combine_views(out)

    def _tta_views(self) -> int:
        """How many augmented views predictions average besides the input (``tta_views``)."""
        return int(self.tta_views)

    def _combine_views(self, outputs: np.ndarray) -> np.ndarray:
        """One output per input from ``outputs`` of shape (n_views, n, n_outputs): the mean
        (the regressor's; the classifier averages probabilities instead)."""
        return outputs[0] if len(outputs) == 1 else outputs.mean(axis=0)

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


def _one_view(rows, view: int):
    """``rows(positions, views)`` restricted to one view, as ``predict_outputs`` reads it."""
    def view_rows(positions, views=None):
        return rows(positions, None if view == 0 else np.full(len(positions), view, np.int64))
    return view_rows
