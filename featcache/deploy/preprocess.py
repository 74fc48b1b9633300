"""Images -> the exact tensor featcache feeds a fitted model's network.

:func:`preprocess` runs featcache's own input path (:func:`featcache.inputs.decode` under the
estimator's :class:`~featcache.inputs.DecodePolicy`, then the engine's resize-and-crop
:func:`featcache.engine.batches.to_model_input` and
:func:`~featcache.engine.batches.to_unit_float`),
so a deployed module (:func:`featcache.to_torch`) sees the very pixels ``predict_proba`` saw.
Normalisation by the backbone's mean and standard deviation is part of the module, not of
this tensor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from sklearn.utils.validation import check_is_fitted

from ..backbones import get_backbone
from ..engine.batches import to_model_input, to_unit_float
from ..exceptions import FeatcacheError
from ..frozen_backbone import FrozenBackbone
from ..inputs import DecodePolicy, as_items, decode
from ..engine.run_options import resolve_run_options
from ..options import OPTIONS
from ..partial import PartiallyFrozenClassifier, PartiallyFrozenRegressor
from ..probe.operating_point import wrapped_estimator

__all__ = ["preprocess", "InputSpec", "input_spec", "decode_policy"]


@dataclass(frozen=True)
class InputSpec:
    """How a fitted estimator's network sees images.

    Attributes
    ----------
    model, weights : the backbone and its weights, as the estimator was given them
    image_size : int
        Side of the square network input.
    mean, std : tuple of 3 floats
        Normalisation the deployed module applies to the [0, 1] tensor.
    decode : DecodePolicy
        The policy the engine decodes the estimator's inputs with (its ``window``...).
    """

    model: str
    weights: object
    image_size: int
    mean: tuple
    std: tuple
    decode: DecodePolicy


def decode_policy(estimator) -> DecodePolicy:
    """The :class:`DecodePolicy` the engine decodes ``estimator``'s inputs with: the one
    :func:`featcache.engine.run_options.resolve_run_options` builds from its decode options (``window``,
    and any other run option that is a field of the policy)."""
    names = {f.name for f in dataclasses.fields(DecodePolicy)} & set(OPTIONS)
    params = {name: getattr(estimator, name) for name in names if hasattr(estimator, name)}
    return resolve_run_options(type(estimator).__name__, device="cpu", **params).decode


def _frozen_step(estimator):
    """The fitted :class:`FrozenBackbone` of a pipeline (or the estimator itself), else None."""
    if isinstance(estimator, FrozenBackbone):
        return estimator
    steps = getattr(estimator, "steps", None)
    if steps:
        first = steps[0][1]
        if isinstance(first, FrozenBackbone):
            return first
    return None


def input_spec(estimator) -> InputSpec:
    """The :class:`InputSpec` of a fitted ``Pipeline`` starting with ``FrozenBackbone``, a
    ``FrozenBackbone``, or a fitted ``PartiallyFrozenClassifier``/``Regressor``, or of a
    ``FixedThresholdClassifier``/``TunedThresholdClassifierCV``/``PriorShiftClassifier``/
    ``FrozenEstimator`` around one of those.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        Before ``fit``.
    TypeError
        For any other estimator.
    FeatcacheError
        When the estimator's decoding policy cannot be reproduced (a policy changed since fit).
    """
    inner = wrapped_estimator(estimator)
    if inner is not None:  # a wrapper sees images as the model it wraps
        return input_spec(inner)
    backbone = _frozen_step(estimator)
    if backbone is not None:
        check_is_fitted(backbone, "config_")
        config = backbone.config_
        policy = decode_policy(backbone)
        if policy.to_dict() != config.get("decode"):
            raise FeatcacheError(
                f"the FrozenBackbone was fitted with decoding policy {config.get('decode')}, "
                f"but its parameters now give {policy.to_dict()}: parameters were set without "
                "refitting. Fit it again before deploying it.")
        pre = config["preprocessing"]
        return InputSpec(backbone.model, backbone.weights, int(pre["image_size"]),
                         tuple(pre["mean"]), tuple(pre["std"]), policy)
    if isinstance(estimator, (PartiallyFrozenClassifier, PartiallyFrozenRegressor)):
        check_is_fitted(estimator, "tail_state_")
        pre = get_backbone(estimator.model).preprocessing
        size = estimator.image_size or pre.image_size
        return InputSpec(estimator.model, estimator.weights, int(size), tuple(pre.mean),
                         tuple(pre.std), decode_policy(estimator))
    raise TypeError(
        f"featcache cannot deploy a {type(estimator).__name__}: expected a fitted Pipeline whose "
        "first step is a FrozenBackbone, a FrozenBackbone, or a fitted "
        "PartiallyFrozenClassifier/PartiallyFrozenRegressor (alone or in a "
        "FixedThresholdClassifier, TunedThresholdClassifierCV, PriorShiftClassifier or "
        "FrozenEstimator).")


def preprocess(images, estimator):
    """The tensor featcache's engine feeds ``estimator``'s network for ``images``.

    Each image is decoded exactly as ``fit``/``predict`` decode it (EXIF orientation,
    transparency, 16-bit and float ranges or the estimator's ``window``, DICOM LUTs, grayscale
    replicated to RGB), its shorter side resized to the network's input size (bilinear,
    antialiased; uint8 for 8-bit sources), centre-cropped to a square and scaled to [0, 1].
    The backbone's mean/std normalisation is *not* applied: the module from
    :func:`featcache.to_torch` applies it.

    Parameters
    ----------
    images : images
        Anything an estimator takes as ``X`` (paths, an ``(n, H, W[, C])`` array, PIL images,
        an ``(n, C, H, W)`` tensor, ...; see :func:`featcache.inputs.as_items`).
    estimator : fitted estimator
        A ``Pipeline`` starting with a ``FrozenBackbone``, a ``FrozenBackbone``, or a
        ``PartiallyFrozenClassifier``/``PartiallyFrozenRegressor``, or a
        ``FixedThresholdClassifier``/``TunedThresholdClassifierCV``/``PriorShiftClassifier``/
        ``FrozenEstimator`` around one of those.

    Returns
    -------
    torch.Tensor
        float32 ``(n, 3, image_size, image_size)`` in [0, 1], contiguous.

    Raises
    ------
    featcache.InputError
        An input that cannot be decoded, naming it.
    """
    spec = input_spec(estimator)
    items = as_items(images)
    size = spec.image_size
    tensors = [to_unit_float(to_model_input(_decoded(item, i, spec.decode, size), size))
               for i, item in enumerate(items)]
    if not tensors:
        return torch.zeros((0, 3, spec.image_size, spec.image_size), dtype=torch.float32)
    return torch.stack(tensors).contiguous()


def _decoded(item, index, policy: DecodePolicy, size):
    """``decode`` as the engine decodes under ``policy``: with ``decoder="device"``, a JPEG the
    device would decode is decoded at full size (libjpeg-turbo's pixels, as on a CPU device)."""
    image = decode(item, index, policy, image_size=size, jpeg_bytes=True)
    if isinstance(image, bytes):
        image = decode(item, index, dataclasses.replace(policy, decode_scale="full"),
                       image_size=size)
    return image
