"""Sharing fitted pipelines safely: skops.io instead of pickle, with featcache's trusted types.

Loading a pickle (or ``joblib.load``) runs whatever code its author put in it, so
scikit-learn recommends `skops.io <https://skops.readthedocs.io>`_ for models from someone
else: it rebuilds only types you trust. A fitted :class:`~featcache.FrozenBackbone` (in any
scikit-learn pipeline) needs exactly the types in :data:`TRUSTED_TYPES`: the estimator holds
parameters and plain fitted values, never the torch network, which is rebuilt from the
weights on first use; a fitted :class:`~featcache.PartiallyFrozenClassifier` (or
``PartiallyFrozenRegressor``) holds its trained weights as numpy arrays; a
:class:`~featcache.probe.PriorShiftClassifier` around either holds its priors as numpy arrays.
Install skops with ``pip install featcache[share]``::

    import skops.io as sio
    from featcache.sharing import TRUSTED_TYPES

    sio.dump(pipe, "pipe.skops")                            # the sender
    pipe = sio.load("pipe.skops", trusted=TRUSTED_TYPES)    # the receiver

A file that holds any other type that skops does not trust by default (a custom step, a
``FeatureCache`` object passed as ``cache``) is refused by ``sio.load`` with
``UntrustedTypesFoundException`` naming it: inspect it with
``sio.get_untrusted_types(file=...)`` before trusting it.
"""

from __future__ import annotations

import pathlib

from .exceptions import FeatcacheError

__all__ = ["TRUSTED_TYPES", "dump", "load"]


def _type_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: The featcache types a fitted pipeline needs beyond those skops trusts by default (its
#: scikit-learn estimators, numpy arrays, builtins): the estimator itself, and the path class
#: of this platform when ``cache`` was given as a ``pathlib.Path`` (a ``str`` needs none).
TRUSTED_TYPES = ["featcache.frozen_backbone.FrozenBackbone",
                 "featcache.partial.estimators.PartiallyFrozenClassifier",
                 "featcache.partial.estimators.PartiallyFrozenRegressor",
                 "featcache.probe.prior_shift.PriorShiftClassifier",
                 _type_name(pathlib.PosixPath), _type_name(pathlib.WindowsPath)]


def _skops_io():
    try:
        import skops.io
    except ImportError:
        raise FeatcacheError("sharing a pipeline with skops needs skops: pip install "
                             "featcache[share] (or pip install skops)") from None
    return skops.io


def dump(obj, file) -> None:
    """Save ``obj`` (e.g. a fitted pipeline) with ``skops.io.dump``."""
    _skops_io().dump(obj, file)


def load(file, *, trusted=()):
    """Load a skops file trusting only :data:`TRUSTED_TYPES` and the types in ``trusted``.

    Raises
    ------
    skops.io.exceptions.UntrustedTypesFoundException
        When the file holds any other type skops does not trust by default.
    """
    return _skops_io().load(file, trusted=[*TRUSTED_TYPES, *trusted])
