"""Exceptions raised by featcache.

Every error says what came in, what was expected and how to fix it.
"""

__all__ = [
    "FeatcacheError",
    "UnknownBackboneError",
    "WeightsError",
    "LayerError",
    "InvalidOptionError",
    "InputError",
    "InputChangedError",
    "DecoderUnavailableError",
    "CacheError",
    "CacheCorruptError",
    "CacheMissError",
    "CacheValueError",
    "ProbeError",
    "NonFiniteError",
    "TargetError",
    "InvalidModelError",
    "SchedulerLostError",
    "CorruptShardWarning",
    "MixedDatasetsWarning",
    "ContentLeakWarning",
    "GroupOverlapWarning",
]


class FeatcacheError(Exception):
    """Base class of every error featcache raises on purpose."""


class UnknownBackboneError(FeatcacheError, ValueError):
    """A backbone name that no registry (featcache, torchvision, timm) knows."""


class WeightsError(FeatcacheError):
    """Weights that cannot be found, loaded, or that do not fit the architecture."""


class LayerError(FeatcacheError, ValueError):
    """A ``layer`` or ``pooling`` that does not fit the chosen backbone."""


class InvalidOptionError(FeatcacheError, ValueError, TypeError):
    """A run option (batch size, image size, device, window ...) outside what it accepts.

    The same check serves the API (:func:`featcache.extract`) and the command line;
    :class:`~featcache.FrozenBackbone` raises scikit-learn's ``InvalidParameterError``.
    """


class InputError(FeatcacheError, ValueError):
    """An input that cannot be turned into an image (names its index and path)."""


class InputChangedError(InputError):
    """An input whose content changed between its content key and its decoding.

    Never recorded in the cache as a failure (the input itself may be fine): a rerun reads it
    again.
    """


class DecoderUnavailableError(FeatcacheError):
    """``decoder="device"`` on a device whose JPEG decoder is missing (a torchvision without
    ``decode_jpeg``, or built without nvJPEG for a GPU); nothing is decoded.
    """


class CacheError(FeatcacheError):
    """The feature cache cannot be read or written."""


class CacheCorruptError(CacheError):
    """A cache shard whose contents do not match its recorded checksum or shape."""


class CacheMissError(CacheError, KeyError):
    """Keys asked for that the cache does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CacheValueError(CacheError, ValueError):
    """An argument that is not a valid cache, namespace or key."""


class ProbeError(FeatcacheError, ValueError):
    """Inputs of a probe that cannot be used (shapes, labels, splits, a CSV, a namespace)."""


class NonFiniteError(FeatcacheError, ValueError):
    """NaN or infinite values where training needs finite ones (cached activations).

    A float16 cache overflows (beyond 65504) to inf; a damaged or hand-written cache can hold
    anything. Names the input; the fix is ``cache_dtype="float32"`` or a fresh cache.
    """


class TargetError(FeatcacheError, ValueError):
    """Targets (``y``) an estimator cannot train on: a missing label (None, NaN), a count
    that does not match the images. Names the first bad position."""


class InvalidModelError(FeatcacheError, ValueError):
    """A fitted estimator whose fitted state does not fit its architecture.

    Raised when a loaded model (``skops``, pickle) is used: a shape, key or size in its
    fitted attributes that its own parameters could not have produced. Load only files you
    trust, or refit.
    """


class SchedulerLostError(FeatcacheError):
    """The Dask scheduler of a distributed job went away (killed, restarted, unreachable).

    Names the scheduler and how many rows were committed: committed shards are kept, and
    running the job again computes only what is missing.
    """


class CorruptShardWarning(UserWarning):
    """A shard was skipped because it is damaged; run ``featcache verify``."""


class MixedDatasetsWarning(UserWarning):
    """A namespace holds rows of several datasets and the caller chose none.

    ``featcache probe`` and ``featcache export`` (and :func:`~featcache.probe.from_cache.probe_cache`,
    :meth:`~featcache.cache.FeatureCache.export`) then use every row; pass ``dataset=`` /
    ``--dataset NAME`` (the tag given to ``featcache extract --dataset``) to use one dataset's.
    """


class ContentLeakWarning(UserWarning):
    """Byte-identical inputs (one content key) recorded in more than one split or group.

    Two records sharing a row are two inputs with one content: a probe that trains on one
    and validates on the other (or puts them in two patients' folds) measures memory, not
    generalisation. :func:`~featcache.probe.from_cache.probe_cache` and
    :meth:`~featcache.cache.FeatureCache.export` warn with the count and examples, and the
    probe records them in ``report.json`` (``"leaks"``).
    """


class GroupOverlapWarning(UserWarning):
    """A group (patient) has rows on both sides of a training/validation split.

    The model then validates on patients it trained on, which measures memory of the
    patients, not generalisation to new ones. :func:`~featcache.probe.linear_probe` and
    :func:`~featcache.probe.from_cache.probe_cache` refuse such a split
    (:class:`ProbeError`) unless called with ``group_overlap="warn"``; they then warn with
    this class, and the report records the overlap (``report.metrics_source["group_overlap"]``).
    """
