"""The engine: inputs in, pooled feature rows out, and the one unit of work around it.

- :mod:`~featcache.engine.unit_of_work`: :func:`embed` (content keys -> plan -> compute the
  misses -> commit -> read), the unit every caller runs, and :func:`resolve_configs` (the
  namespaces' configurations, without loading the network when the cache remembers them);
- :mod:`~featcache.engine.run`: :func:`resolve_run`, the setup every caller of :func:`embed`
  shares (cache, run options, configurations, namespaces), resolved once into a
  :class:`ResolvedRun`;
- :mod:`~featcache.engine.batches`: :func:`run_batches`, the batch loop (decode -> device ->
  model -> pooled features), imports torch;
- :mod:`~featcache.engine.device_decode`: ``decoder="device"``'s batched JPEG decoding on
  the run device (torchvision's ``decode_jpeg``), and its clear error where there is none;
- :mod:`~featcache.engine.prefetch`: the next batches prepared (device-decoded) in a thread
  while the network runs;
- :mod:`~featcache.engine.allocator`: glibc malloc tuning while a CPU extracts;
- :mod:`~featcache.engine.interrupts`: SIGINT/SIGTERM deferred to batch boundaries;
- :mod:`~featcache.engine.progress`: the progress bar (terminal, Jupyter widget or text), or
  plain progress lines where stderr is no terminal (a batch job's log).

May import: :mod:`featcache.inputs`, :mod:`featcache.cache`, :mod:`featcache.backbones`, the
leaf modules (``exceptions``, ``options``, ``formats``, ``log``). Importing this package does
not import torch (the warm path never loads it): :func:`run_batches` and :class:`Batch` are
loaded on first access.
"""

from importlib import import_module

from .interrupts import deferred_signals, raise_if_interrupted
from .progress import progress_bar
from .run import ResolvedRun, resolve_run
from .unit_of_work import EmbedResult, SourcesOf, content_keys, embed, resolve_configs

__all__ = ["embed", "EmbedResult", "SourcesOf", "content_keys", "resolve_configs", "resolve_run",
           "ResolvedRun", "run_batches",
           "Batch", "deferred_signals", "raise_if_interrupted", "progress_bar"]

_FROM_BATCHES = ("run_batches", "Batch")  # featcache.engine.batches imports torch


def __getattr__(name):
    if name in _FROM_BATCHES:
        value = getattr(import_module(".batches", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
