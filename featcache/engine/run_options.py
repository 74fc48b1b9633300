"""Run options resolved once: :class:`RunOptions` and :func:`resolve_run_options`.

The option lists and their one validation live in the leaf :mod:`featcache.options`; this
module, above both it and :mod:`featcache.inputs`, turns validated options into the
:class:`RunOptions` a run passes whole: device and precision resolved, and the decode options
(``window``, ``decode_scale``) built once into the :class:`~featcache.inputs.DecodePolicy` the
engine decodes with. (It lives here, not in ``options``, so that the leaf never needs the
decoding module, which itself reads the options' rules.) No torch unless a device must be
resolved.
"""

from __future__ import annotations

import dataclasses

from ..inputs.decoding import DecodePolicy
from ..options import (OPTIONS, cuda_possible, resolve_device, resolve_precision,
                       validate_run_options)

__all__ = ["RunOptions", "resolve_run_options"]


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How one extraction runs, resolved once and passed whole (picklable, torch-free).

    ``device`` and ``precision`` are resolved (``"cpu"``/``"cuda:0"``, ``"fp32"``/``"bf16"``...):
    the value that enters the fingerprint is the value the engine uses. ``decode`` is the
    :class:`~featcache.inputs.DecodePolicy` the engine decodes with and the configurations
    record, built once from the decode options (``window``, ``decode_scale``). Build it with
    :func:`resolve_run_options`.
    """

    batch_size: int = 64
    device: str = "cpu"
    precision: str = "fp32"
    num_workers: int | None = None
    on_error: str = "raise"
    retry_failed: bool = False
    progress: bool | None = None
    decode: DecodePolicy | None = None  # None: the default policy
    commit_rows: int = 4096
    commit_seconds: float = 30.0
    verify_inputs: str = "stat"

    def __post_init__(self):
        if self.decode is None:
            object.__setattr__(self, "decode", _decode_policy({}))

    @property
    def window(self) -> "tuple | None":
        """The decode policy's intensity window."""
        return self.decode.window

    def engine_kwargs(self) -> dict:
        """Keyword arguments of :func:`featcache.engine.batches.run_batches` (all but ``policy``)."""
        return dict(batch_size=self.batch_size, device=self.device, precision=self.precision,
                    num_workers=self.num_workers, on_error=self.on_error, progress=self.progress)


def resolve_run_options(caller: str = "featcache", **params) -> RunOptions:
    """Validate the run options in ``params`` and resolve device and precision once.

    ``device="auto"`` becomes CUDA when available, else the CPU; ``precision="auto"`` fp32 on
    a CPU and bf16 (or fp16) on a GPU (see :func:`featcache.engine.batches.resolve_device`).
    """
    validate_run_options(params, caller)
    device, precision = params.get("device", "auto"), params.get("precision", "auto")
    if device == "cpu" or (device == "auto" and not cuda_possible()):
        params["device"] = "cpu"  # resolved without importing torch (the warm path)
        params["precision"] = "fp32" if precision == "auto" else precision
    else:
        resolved = resolve_device(device)
        params["device"] = str(resolved)
        params["precision"] = resolve_precision(precision, resolved)
    params["decode"] = _decode_policy(params)
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    return RunOptions(**{k: v for k, v in params.items() if k in fields})


def _decode_policy(params: dict):
    """The DecodePolicy of the decode options in ``params`` (the run options that are fields
    of :class:`~featcache.inputs.DecodePolicy`: ``window``, ``decode_scale``), its other
    fields at their defaults."""
    names = {f.name for f in dataclasses.fields(DecodePolicy)} & set(OPTIONS)
    return DecodePolicy(**{name: params[name] for name in names if params.get(name) is not None})
