"""Batch jobs: embed many inputs into a cache, on this machine or on a Dask cluster.

- :mod:`~featcache.jobs.extraction`: :func:`extract`, the library behind ``featcache extract``
  (sources, several layers per pass, ``--shard i/N``, annotations, a summary);
- :mod:`~featcache.jobs.summary`: :class:`ExtractSummary` and recording the inputs'
  annotations;
- :mod:`~featcache.jobs.dask_client`: the client side of a Dask job (connect, partition,
  submit, collect, a scheduler lost mid-job);
- :mod:`~featcache.jobs.dask_worker`: what runs on a Dask worker (one partition through the
  unit of work).

May import: :mod:`featcache.inputs`, :mod:`featcache.engine`, :mod:`featcache.cache`,
:mod:`featcache.backbones`, the leaf modules; dask and torch only inside functions, so importing
this package imports neither. Never :mod:`featcache.cli`.
"""

from .extraction import extract
from .summary import ExtractSummary

__all__ = ["extract", "ExtractSummary"]
