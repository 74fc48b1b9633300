"""A fitted featcache estimator -> one plain ``torch.nn.Module`` (:class:`DeployedModel`).

:func:`to_torch` reuses what the estimator ran: the backbone as :mod:`featcache.backbones`
loads it (the same BatchNorm-folded network, its weights' digest checked against the fitted
configuration), cut at the fitted layer by ``torch.fx`` (or timm's ``forward_features`` for the
default layer), pooled as :func:`~featcache.backbones.capture.pool_features` pools, then the
scikit-learn head's fitted arrays as torch layers, or a partially frozen estimator's trained
tail (:func:`featcache.partial.tail.build_tail` with torch's own convolutions); an operating
point around either (:mod:`featcache.probe.operating_point`: a threshold, a prior shift)
adds its class decision or reweighting. No hooks, no
thread-local state, no featcache code at run time: the module traces and scripts with
TorchScript, exports with ``torch.export`` and to ONNX.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings

import numpy as np
import torch
from sklearn.base import is_classifier, is_regressor
from sklearn.linear_model import LogisticRegression
from sklearn.linear_model._base import LinearClassifierMixin, LinearModel
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ..backbones import get_backbone, load_backbone, stage_layout
from ..exceptions import FeatcacheError
from ..engine.unit_of_work import namespace_configs
from ..partial import PartiallyFrozenClassifier, PartiallyFrozenRegressor
from ..partial.activations import memory_budget
from ..partial.fitted import (RESOLVED_PRECISIONS, check_fitted_state, check_tail_state,
                              head_outputs)
from ..partial.network import architecture
from ..partial.tail import build_tail, load_tail_state
from ..probe.operating_point import THRESHOLDED, operating_point, wrapped_estimator
from ..probe.prior_shift import PriorShiftClassifier
from .modules import (Dense, DeployedModel, ForwardFeatures, Label, Normalize, Output, Pool,
                      PriorShift, Rounding, SelectOutput, Standardize, TailHead)
from .preprocess import _frozen_step, input_spec

__all__ = ["to_torch", "METHODS"]

#: What ``method=`` may ask for.
METHODS = ("auto", "predict_proba", "decision_function", "predict", "transform")


def to_torch(estimator, *, method="auto"):
    """A fitted model as a ``torch.nn.Module`` from preprocessed images to its output.

    Parameters
    ----------
    estimator : fitted estimator
        - a ``Pipeline`` of a :class:`~featcache.FrozenBackbone`, optionally a
          ``StandardScaler``, and a head: ``LogisticRegression``, another linear classifier
          (``RidgeClassifier``, ``LinearSVC``, ``SGDClassifier``, ...), ``MLPClassifier``, a
          linear regressor (``Ridge``, ``LinearRegression``, ...) or ``MLPRegressor``;
        - a :class:`~featcache.PartiallyFrozenClassifier` or
          :class:`~featcache.PartiallyFrozenRegressor`;
        - a :class:`~featcache.FrozenBackbone` alone (the module gives its embeddings);
        - a ``FixedThresholdClassifier`` or a fitted ``TunedThresholdClassifierCV`` around a
          binary classifier above (an operating point: only its ``predict`` differs);
        - a fitted :class:`~featcache.probe.PriorShiftClassifier` around a classifier above
          with ``predict_proba`` (the module reweights its probabilities to the target
          prior); a ``FrozenEstimator`` around any of these.
    method : {"auto", "predict_proba", "decision_function", "predict", "transform"}
        The estimator's method the module reproduces. ``"auto"``: ``predict_proba`` for a
        classifier that has it (``LogisticRegression``, ``MLPClassifier``,
        ``PartiallyFrozenClassifier``), ``decision_function`` for a linear classifier without
        it (``RidgeClassifier``, ``LinearSVC``, ``SGDClassifier(loss="hinge")``: scikit-learn
        gives them no probabilities, and neither does featcache), ``predict`` for a regressor,
        ``transform`` for a ``FrozenBackbone``; for a thresholded classifier, its
        estimator's (the threshold changes no probability, as in scikit-learn); for a
        ``PriorShiftClassifier``, its adjusted ``predict_proba``.
        ``"predict"`` of a classifier: the predicted class (of a thresholded one, at its
        operating point: ``response_method``, ``threshold`` or ``best_threshold_``,
        ``pos_label``, as its ``predict``).

    Returns
    -------
    DeployedModel
        In evaluation mode, parameters frozen, on the CPU, float32. ``forward(images)`` takes
        ``featcache.preprocess(X, estimator)`` and returns what ``estimator.<method>(X)``
        returns (the same shape: ``(n,)`` for a binary ``decision_function`` and a
        single-target regressor), to float32 rounding. ``module.classes_`` orders the columns.
        A classifier's ``predict`` gives int64 indices into ``module.classes_`` (``(n,)``):
        ``module.classes_[output]`` equals ``estimator.predict(X)``, except for a score within
        float32 rounding of the threshold (or of a tie).

    Raises
    ------
    TypeError
        An estimator or pipeline step featcache cannot translate.
    ValueError
        A ``method`` the estimator does not have, or whose output featcache does not reproduce
        (``predict_proba`` of ``SGDClassifier``), or a partially frozen estimator with
        ``tta_views > 0`` (test-time augmentation is not exported), or a thresholded
        classifier whose ``response_method`` or ``pos_label`` its estimator cannot serve.
    FeatcacheError
        The backbone loaded now is not the one fitted (its weights changed).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    return _build(estimator, method).eval().requires_grad_(False)


def _build(estimator, method):
    inner = wrapped_estimator(estimator)
    if isinstance(estimator, PriorShiftClassifier):
        return _from_prior_shift(estimator, inner, method)
    if isinstance(estimator, THRESHOLDED) and method == "predict":
        return _from_threshold(estimator, inner)
    if inner is not None:  # a threshold changes no score; a FrozenEstimator changes nothing
        return _build(inner, method)
    if method == "predict" and is_classifier(estimator):
        return _predicted_class(estimator)
    if isinstance(estimator, (PartiallyFrozenClassifier, PartiallyFrozenRegressor)):
        return _from_partial(estimator, method)
    if _frozen_step(estimator) is not None:
        return _from_pipeline(estimator, method)
    input_spec(estimator)  # raises its TypeError
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- predict: the class
def _with_label(module, label):
    """``module`` (scores) followed by ``label``: its ``predict``, class indices."""
    module.output = nn.Sequential(module.output, label)
    module.method = "predict"
    return module


def _predicted_class(estimator):
    """``predict`` of a classifier: the class of its highest decision value (binary: > 0), or
    of its highest probability where it has no decision function (``MLPClassifier``), as
    scikit-learn's ``predict`` chooses."""
    response = "decision_function" if hasattr(estimator, "decision_function") else \
        "predict_proba"
    module = _build(estimator, response)
    binary = module.classes_ is not None and len(module.classes_) == 2
    one_column = response == "decision_function" and binary
    if isinstance(module.output, Output) and module.output.kind == "sigmoid":
        raise ValueError("featcache does not deploy predict of a multilabel MLPClassifier; "
                         "deploy method='predict_proba' and threshold each label at 0.5.")
    return _with_label(module, Label("positive" if one_column else "argmax"))


def _from_threshold(estimator, inner):
    """``predict`` of a ``FixedThresholdClassifier``/``TunedThresholdClassifierCV``: the
    wrapped model's score, then its operating point."""
    point = operating_point(estimator, inner)
    try:
        module = _build(inner, point.response)
    except ValueError as exc:
        raise ValueError(f"{type(estimator).__name__} thresholds {point.response} of its "
                         f"estimator, which featcache cannot deploy: {exc} Set the wrapper's "
                         "response_method (and a threshold on that scale) to what can be "
                         "deployed.") from exc
    return _with_label(module, Label("threshold", point.threshold, point.positive))


def _from_prior_shift(estimator, inner, method):
    """A :class:`~featcache.probe.PriorShiftClassifier`: the wrapped model's probabilities,
    reweighted to the target prior (:class:`PriorShift`); ``predict`` as its own: for two
    classes the wrapped probability of ``classes_[1]`` against ``threshold_``, else the class
    of the highest adjusted probability."""
    _check_method(method, ("auto", "predict_proba", "predict"), "a PriorShiftClassifier "
                  "(it adjusts probabilities and has no decision_function)")
    module = _build(inner, "predict_proba")
    if method == "predict" and len(estimator.classes_) == 2:
        point = operating_point(estimator, inner)
        return _with_label(module, Label("threshold", point.threshold, point.positive))
    module.output = nn.Sequential(module.output, PriorShift(estimator.weights_))
    module.method = "predict_proba"
    return _with_label(module, Label("argmax")) if method == "predict" else module


# ---------------------------------------------------------------- the backbone
def _detached_network(loaded):
    """A private copy of the loaded (BatchNorm-folded) network without featcache's capture
    hooks. Its weights stay channels-last, as the engine runs them: on a CPU that gives the
    engine's features bit for bit (contiguous weights differed by up to 4e-5)."""
    network = copy.deepcopy(loaded.extractor.model)
    for m in network.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return network.eval()


def _output_of(network, layer: str):
    """``x -> the output of module layer``: a ``torch.fx`` graph of ``network`` that stops there
    (timm's tracer, which knows timm's leaf modules; it traces torchvision networks too)."""
    from timm.models import create_feature_extractor


    return SelectOutput(create_feature_extractor(network, return_nodes={layer: "out"}))


def _backbone(loaded, layer):
    """(module mapping normalised images to the captured tensor, whether it is NHWC)."""

    network = _detached_network(loaded)
    timm = hasattr(network, "forward_features") and hasattr(network, "pretrained_cfg")
    if layer is None and timm:  # as FeatureExtractor: timm's final feature map
        return ForwardFeatures(network), getattr(network, "output_fmt", "NCHW") == "NHWC"
    if layer is None:  # torchvision: the input of the last global pooling (else last Linear)
        modules = dict(network.named_modules())
        pools = [n for n, m in modules.items() if isinstance(m, nn.AdaptiveAvgPool2d)]
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        layer = (pools or linears)[-1]
        parent, _, attr = layer.rpartition(".")
        setattr(network.get_submodule(parent) if parent else network, attr, nn.Identity())
    return _output_of(network, layer), False


def _check_same_backbone(loaded, config):
    """The network loaded now is the fitted one: same weights digest, folding, preprocessing."""
    for entry in ("weights_digest", "batchnorm", "preprocessing"):
        now, then = (json.loads(json.dumps(c.get(entry))) for c in (loaded.config, config))
        if now != then:
            raise FeatcacheError(
                f"the backbone loaded now differs from the one fitted ({entry}: {then!r} at "
                f"fit, {now!r} now): its weights file or a library changed since fit. Refit "
                "before deploying.")


def _check_same_prefix(est, loaded) -> str:
    """The frozen prefix loaded now is the fitted one: it gives ``est.prefix_fingerprint_``
    (weights digest, folding, preprocessing, decoding, storage) under ``est``'s parameters and
    the precision it ran in at fit, ``est.prefix_precision_``; returns that precision.

    An estimator fitted before ``prefix_precision_`` was recorded (an older pickle or skops
    file) lacks it: each precision is tried, and the one giving the fitted fingerprint is the
    fit's.
    """
    options = est._run_options()
    recorded = est.__dict__.get("prefix_precision_")
    now = None
    for precision in (recorded,) if recorded else RESOLVED_PRECISIONS:
        configs = namespace_configs(loaded, dataclasses.replace(options, precision=precision),
                                    storage=est.cache_dtype)
        ((config, fp),) = configs.values()
        if fp == est.prefix_fingerprint_:
            return precision
        now = now or (config, fp)
    config, fp = now
    raise FeatcacheError(
        f"the frozen prefix loaded now differs from the one {type(est).__name__} was fitted "
        f"with (fingerprint {est.prefix_fingerprint_} at fit, {fp} now; weights digest now "
        f"{config.get('weights_digest')}): its weights file or a library changed since fit, or "
        "a parameter was set without refitting. Refit before deploying.")


def _warn_precision(precision):
    if precision not in (None, "fp32"):
        warnings.warn(f"the estimator computed its features in {precision}; the deployed module "
                      "computes in float32, so its outputs differ from the estimator's by about "
                      f"{precision}'s rounding. Fit with precision='fp32' for an exact match.",
                      UserWarning, stacklevel=3)


# ---------------------------------------------------------------- pipelines
def _from_pipeline(estimator, method):
    spec = input_spec(estimator)
    backbone = _frozen_step(estimator)
    config = backbone.config_
    layer = None if config["layer"] == "default" else config["layer"]
    loaded = load_backbone(backbone.model, weights=backbone.weights, layers=(layer,),
                           pooling=config["pooling"], image_size=spec.image_size)
    _check_same_backbone(loaded, config)
    _warn_precision(config.get("precision"))
    net, nhwc = _backbone(loaded, layer)
    rest = [] if estimator is backbone else \
        [step for _, step in estimator.steps[1:] if step is not None and step != "passthrough"]
    for step in rest:
        check_is_fitted(step)
    layers, output, method, classes = _head(rest, method)
    return DeployedModel(Normalize(spec.mean, spec.std), net, Pool(config["pooling"], nhwc),
                         Rounding(config.get("storage", "float32")), nn.Sequential(*layers),
                         output, method=method, classes=classes, image_size=spec.image_size)


def _head(steps, method):
    """(torch layers, Output, method, classes) of the scikit-learn steps after the backbone."""
    if not steps:
        _check_method(method, ("transform",), "a FrozenBackbone")
        return [], Output("identity"), "transform", None
    *middle, head = steps
    layers = []
    for step in middle:
        if type(step) is not StandardScaler:
            raise TypeError(f"featcache cannot deploy a pipeline step {type(step).__name__}: "
                            "between FrozenBackbone and the head only a StandardScaler is "
                            "supported.")
        n = step.n_features_in_
        mean = step.mean_ if step.with_mean else np.zeros(n)
        scale = step.scale_ if step.with_std else np.ones(n)
        layers.append(Standardize(mean, scale))
    head_layers, output, method, classes = _final_step(head, method)
    return layers + head_layers, output, method, classes


def _final_step(head, method):
    name = type(head).__name__
    if isinstance(head, (MLPClassifier, MLPRegressor)):
        dense = [Dense(w.T, b, head.activation) for w, b in zip(head.coefs_, head.intercepts_)]
        dense[-1].activation = "identity"  # the output activation is the Output's
        if isinstance(head, MLPRegressor):
            _check_method(method, ("auto", "predict"), name)
            return dense, Output("identity", squeeze=head.n_outputs_ == 1), "predict", None
        _check_method(method, ("auto", "predict_proba"), name)
        if head.out_activation_ == "softmax":
            kind = "softmax"
        else:
            kind = "sigmoid2" if head.n_outputs_ == 1 else "sigmoid"
        return dense, Output(kind), "predict_proba", head.classes_
    if isinstance(head, LinearClassifierMixin) and hasattr(head, "coef_"):
        coef = np.atleast_2d(head.coef_)
        bias = np.broadcast_to(np.asarray(head.intercept_, dtype=np.float64), coef.shape[:1])
        layers = [Dense(coef, bias)]
        binary = coef.shape[0] == 1
        if method == "auto":
            if isinstance(head, LogisticRegression):
                method = "predict_proba"
            elif hasattr(head, "predict_proba"):
                raise ValueError(
                    f"featcache reproduces predict_proba of LogisticRegression and MLPClassifier, "
                    f"not of {name}; pass method='decision_function' for its scores.")
            else:
                method = "decision_function"
        _check_method(method, ("predict_proba", "decision_function"), name)
        if method == "predict_proba":
            if not isinstance(head, LogisticRegression):
                raise ValueError(f"{name} gives no probabilities featcache reproduces (scikit-"
                                 "learn has none for it, or not LogisticRegression's); use "
                                 "method='decision_function'.")
            return layers, Output("sigmoid2" if binary else "softmax"), method, head.classes_
        return layers, Output("identity", squeeze=binary), method, head.classes_
    if isinstance(head, LinearModel) and is_regressor(head) and hasattr(head, "coef_"):
        _check_method(method, ("auto", "predict"), name)
        coef = np.asarray(head.coef_)
        squeeze = coef.ndim == 1
        coef = np.atleast_2d(coef)
        bias = np.broadcast_to(np.asarray(head.intercept_, dtype=np.float64), coef.shape[:1])
        return [Dense(coef, bias)], Output("identity", squeeze=squeeze), "predict", None
    raise TypeError(
        f"featcache cannot deploy a {name} head: supported are LogisticRegression, linear "
        "classifiers with coef_ (RidgeClassifier, LinearSVC, SGDClassifier, ...), "
        "MLPClassifier, linear regressors (Ridge, LinearRegression, ...) and MLPRegressor.")


def _check_method(method, allowed, what):
    if method != "auto" and method not in allowed:
        raise ValueError(f"method={method!r} is not available for {what}; "
                         f"expected one of {[m for m in allowed if m != 'auto']} (or 'auto').")


# ---------------------------------------------------------------- partial freezing
def _from_partial(est, method):
    spec_in = input_spec(est)
    if est._tta_views():
        raise ValueError(
            f"{type(est).__name__} has tta_views={est._tta_views()}: its predictions average "
            "augmented views of each input, each drawn from the input's content key, which a "
            "deployed module does not compute, so featcache cannot export them exactly. "
            "Export the single-view model, featcache.to_torch(estimator.set_params("
            "tta_views=0)) (tta_views only changes predictions: no refit), and average its "
            "outputs over augmentations of your own if deployment needs them.")
    spec = get_backbone(est.model)
    arch = architecture(spec)
    layout = stage_layout(arch, spec.name)
    n_out = head_outputs(est)
    row_shape = check_fitted_state(est, spec, arch, layout, memory_budget("auto"))
    k = est.trainable_blocks
    # torch's own convolutions (no training-time depthwise gradient): plain, exportable modules
    tail = build_tail(arch, layout.tail_modules(k), layout.pool, row_shape, n_out,
                      batchnorm=est.batchnorm, fast_depthwise=False)
    check_tail_state(est.tail_state_, tail)
    tail = load_tail_state(tail, est.tail_state_).eval()
    head = TailHead(list(tail.stages), tail.pool or "identity", tail.head)
    loaded = load_backbone(est.model, weights=est.weights, layers=(est.cut_layer_,),
                           pooling="none" if k else est.pool_, image_size=est.image_size)
    _warn_precision(_check_same_prefix(est, loaded))
    net, _ = _backbone(loaded, est.cut_layer_)
    if is_classifier(est):
        binary = n_out == 2
        if method in ("auto", "predict_proba"):
            output, method = Output("softmax"), "predict_proba"
        elif method == "decision_function":
            output = Output("diff", squeeze=True) if binary else Output("identity")
        else:
            raise ValueError(f"method={method!r} is not available for {type(est).__name__}; "
                             "expected 'predict_proba' or 'decision_function'.")
        classes = est.classes_
    else:
        _check_method(method, ("auto", "predict"), type(est).__name__)
        squeeze = est.returns_1d()
        output = Output("affine", squeeze, est.y_scale_, est.y_mean_)
        method, classes = "predict", None
    cam = f"head.stages.{len(head.stages) - 1}" if len(head.stages) else "backbone"
    return DeployedModel(Normalize(spec_in.mean, spec_in.std), net,
                         Pool(est.pool_ if k == 0 else "identity"), Rounding(est.cache_dtype),
                         head, output, method=method, classes=classes,
                         image_size=spec_in.image_size, cam_layer=cam)
