"""Partial freezing: freeze the first stages, cache their activations once, train the rest.

- :mod:`~featcache.partial.estimators`: :class:`PartiallyFrozenClassifier` and
  :class:`PartiallyFrozenRegressor` (scikit-learn estimators);
- :mod:`~featcache.partial.activations`: the frozen prefix's cached activations, through the
  one unit of work (:func:`featcache.engine.unit_of_work.embed`);
- :mod:`~featcache.partial.network`, :mod:`~featcache.partial.tail`: the trainable stages and
  the new head, copied from the pretrained network;
- :mod:`~featcache.partial.training`: the training loop (AdamW, cosine schedule, early stopping).

Importing this package does not import torch; fitting does.
"""

from .estimators import PartiallyFrozenClassifier, PartiallyFrozenRegressor

__all__ = ["PartiallyFrozenClassifier", "PartiallyFrozenRegressor"]
