"""Deploying a fitted model: a plain ``torch.nn.Module`` and the input tensor it takes.

- :mod:`~featcache.deploy.preprocess`: :func:`preprocess` turns images into exactly the tensor
  featcache's engine feeds the network (decoded, resized, centre-cropped, in [0, 1]);
- :mod:`~featcache.deploy.modules`: the small TorchScript-, ``torch.export``- and
  ONNX-friendly modules a deployed model is made of;
- :mod:`~featcache.deploy.to_torch`: :func:`to_torch` turns a fitted ``Pipeline``
  (``FrozenBackbone`` -> optional ``StandardScaler`` -> linear head or MLP) or a
  ``PartiallyFrozenClassifier``/``Regressor`` into one :class:`DeployedModel`; a threshold
  or prior shift around either (read by :mod:`featcache.probe.operating_point`) becomes its
  class decision.

Sits above the estimators (may import :mod:`featcache.frozen_backbone`,
:mod:`featcache.partial`, :mod:`featcache.probe`, :mod:`featcache.backbones`,
:mod:`featcache.engine`, :mod:`featcache.inputs` and the leaf modules); nothing in
featcache imports it. Importing this package imports torch and scikit-learn;
``featcache.to_torch`` and ``featcache.preprocess`` are loaded on first use, so
``import featcache`` stays light.
"""

from .preprocess import preprocess
from .to_torch import to_torch

__all__ = ["to_torch", "preprocess"]
