"""The run options shared by the API and the command line: their choices and one validation.

:class:`~featcache.FrozenBackbone`, :func:`featcache.extract.extract` and ``featcache
extract`` accept the same options (batch size, image size, workers, pooling, precision,
window...). Their allowed values live here once, and :func:`validate_run_options` checks them
the same way for every caller, raising scikit-learn's ``InvalidParameterError`` (a
``ValueError``) with a message that names the option. Importing this module is cheap (no
torch, no scikit-learn until something is validated).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
from numbers import Integral, Real

__all__ = ["POOLINGS", "PRECISIONS", "ON_ERROR", "MIN_IMAGE_SIZE", "RunOptions", "run_constraints",
           "validate_run_options", "validate_window", "resolve_run_options", "cuda_possible",
           "is_invalid_parameter"]

#: How a feature map or token sequence becomes one vector.
POOLINGS = ("avg", "max", "gem", "cls", "none")
#: Numeric precision of the forward pass (``auto``: fp32 on CPU, bf16/fp16 on GPU).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: What happens to an input that cannot be decoded.
ON_ERROR = ("raise", "skip")
#: Smallest network input side (smaller maps vanish in the networks' downsampling).
MIN_IMAGE_SIZE = 8
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|mps|xpu)(:\d+)?$")



@functools.lru_cache(maxsize=None)
def run_constraints() -> dict:
    """scikit-learn parameter constraints of the shared run options (name -> constraints)."""
    from sklearn.utils._param_validation import Interval, StrOptions

    return {
        "model": [str],
        "weights": [str, os.PathLike, None],
        "layer": [str, None],
        "pooling": [StrOptions(set(POOLINGS))],
        "image_size": [Interval(Integral, MIN_IMAGE_SIZE, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str],
        "precision": [StrOptions(set(PRECISIONS))],
        "num_workers": [Interval(Integral, 0, None, closed="left"), None],
        "on_error": [StrOptions(set(ON_ERROR))],
        "progress": ["boolean", None],
        "retry_failed": ["boolean"],
        "window": [tuple, list, None],
        "commit_rows": [Interval(Integral, 1, None, closed="left")],
        "commit_seconds": [Interval(Real, 0, None, closed="neither")],
    }


def _invalid(message):
    from sklearn.utils._param_validation import InvalidParameterError

    return InvalidParameterError(message)


def is_invalid_parameter(exc: BaseException) -> bool:
    """Whether ``exc`` is scikit-learn's InvalidParameterError (without importing sklearn)."""
    module = sys.modules.get("sklearn.utils._param_validation")
    return module is not None and isinstance(exc, module.InvalidParameterError)


def validate_window(window, caller: str = "featcache"):
    """``None`` or ``(center, width)`` of finite numbers with a positive width, as a tuple."""
    if window is None:
        return None
    try:
        center, width = (float(v) for v in window)
        ok = math.isfinite(center) and math.isfinite(width) and width > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise _invalid(
            f"The 'window' parameter of {caller} must be None or (center, width) with finite "
            f"numbers and a positive width, e.g. (40, 400); got {window!r} instead.")
    return center, width


def _validate_device(device, caller):
    if isinstance(device, str) and not _DEVICE_RE.match(device):
        raise _invalid(
            f"The 'device' parameter of {caller} must be 'auto', 'cpu', 'cuda', 'cuda:N' or "
            f"'mps'; got {device!r} instead.")


def validate_run_options(params: dict, caller: str) -> None:
    """Check every run option present in ``params`` (others are ignored).

    Raises
    ------
    InvalidParameterError
        Naming the option, what it must be and what came.
    """
    from sklearn.utils._param_validation import validate_parameter_constraints

    constraints = run_constraints()
    known = {name: value for name, value in params.items() if name in constraints}
    validate_parameter_constraints({k: constraints[k] for k in known}, known, caller_name=caller)
    if "window" in known:
        validate_window(known["window"], caller)
    if "device" in known:
        _validate_device(known["device"], caller)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How one extraction runs, resolved once and passed whole (picklable, torch-free).

    ``device`` and ``precision`` are resolved (``"cpu"``/``"cuda:0"``, ``"fp32"``/``"bf16"``...):
    the value that enters the fingerprint is the value the engine uses. Build it with
    :func:`resolve_run_options`.
    """

    batch_size: int = 64
    device: str = "cpu"
    precision: str = "fp32"
    num_workers: int | None = None
    on_error: str = "raise"
    retry_failed: bool = False
    progress: bool | None = None
    window: tuple | None = None
    commit_rows: int = 4096
    commit_seconds: float = 30.0

    def engine_kwargs(self) -> dict:
        """Keyword arguments of :func:`featcache.engine.run_batches`."""
        from .inputs import DecodePolicy

        return dict(batch_size=self.batch_size, device=self.device, precision=self.precision,
                    num_workers=self.num_workers, on_error=self.on_error, progress=self.progress,
                    policy=DecodePolicy(window=self.window))


def cuda_possible() -> bool:
    """Whether ``device="auto"`` could mean CUDA here, answered without importing torch.

    With torch already imported, torch answers. Otherwise, on Linux, CUDA needs the NVIDIA
    driver (``/proc/driver/nvidia/version``) and visible devices; elsewhere (Windows) the
    question is left to torch. False means torch would say no too.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return False
    if sys.platform.startswith("linux") or sys.platform == "darwin":
        return os.path.exists("/proc/driver/nvidia/version")
    return True


def resolve_run_options(caller: str = "featcache", **params) -> RunOptions:
    """Validate the run options in ``params`` and resolve device and precision once.

    ``device="auto"`` becomes CUDA when available, else the CPU; ``precision="auto"`` fp32 on
    a CPU and bf16 (or fp16) on a GPU (see :func:`featcache.engine.resolve_device`).
    """
    validate_run_options(params, caller)
    device, precision = params.get("device", "auto"), params.get("precision", "auto")
    if device == "cpu" or (device == "auto" and not cuda_possible()):
        params["device"] = "cpu"  # resolved without importing torch (the warm path)
        params["precision"] = "fp32" if precision == "auto" else precision
    else:
        from .engine import resolve_device, resolve_precision

        resolved = resolve_device(device)
        params["device"] = str(resolved)
        params["precision"] = resolve_precision(precision, resolved)
    if params.get("window") is not None:
        params["window"] = validate_window(params["window"], caller)
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    return RunOptions(**{k: v for k, v in params.items() if k in fields})
