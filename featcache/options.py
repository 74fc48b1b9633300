"""The run options shared by the API and the command line: their choices and one validation.

:class:`~featcache.FrozenBackbone`, :func:`featcache.extract` and ``featcache
extract`` accept the same options (batch size, image size, workers, pooling, precision,
window...). Their allowed values live here once, and :func:`validate_run_options` checks them
the same way for every caller, raising :class:`~featcache.exceptions.InvalidOptionError` (a
``ValueError``) with a message that names the option; estimators get the same constraints in
scikit-learn's form (:func:`run_constraints`). Importing this module is cheap (no
torch; scikit-learn only for :func:`run_constraints`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
from numbers import Integral, Real

from .exceptions import FeatcacheError, InvalidOptionError

__all__ = ["POOLINGS", "PRECISIONS", "ON_ERROR", "VERIFY_INPUTS", "DECODE_SCALES", "DECODERS",
           "MIN_IMAGE_SIZE", "OPTIONS",
           "Option", "BACKBONE_OPTIONS", "RUN_OPTIONS", "option_constraints",
           "run_constraints",
           "validate_run_options", "validate_window", "resolve_device",
           "resolve_precision", "cuda_possible", "usable_cores", "start_method",
           "is_invalid_parameter"]

#: How a feature map or token sequence becomes one vector.
POOLINGS = ("avg", "max", "gem", "cls", "none")
#: Numeric precision of the forward pass (``auto``: fp32 on CPU, bf16/fp16 on GPU).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: What happens to an input that cannot be decoded.
ON_ERROR = ("raise", "skip")
#: How an input file's content key is obtained: ``"stat"`` trusts the key memos for a file
#: whose identity (size, mtime, ctime, inode) is unchanged and settled; ``"hash"`` re-reads
#: and hashes every file (for writers through a memory map, whose timestamps may not move).
VERIFY_INPUTS = ("stat", "hash")
#: How much of a large image is decoded (``DecodePolicy.decode_scale``): ``"reduced"``, a JPEG
#: at a reduced DCT scale and other images box-reduced, never under twice the input size;
#: ``"full"``, every pixel.
DECODE_SCALES = ("reduced", "full")
#: Who decodes JPEG files (``DecodePolicy.decoder``): ``"pillow"``, every input on the CPU;
#: ``"device"``, the JPEGs a GPU decoder takes decoded in batches on the run device by
#: ``torchvision.io.decode_jpeg`` (nvJPEG on a GPU), every other input by Pillow.
DECODERS = ("pillow", "device")
#: Smallest network input side (smaller maps vanish in the networks' downsampling).
MIN_IMAGE_SIZE = 8
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|mps|xpu)(:\d+)?$")



@dataclasses.dataclass(frozen=True)
class Option:
    """One run option: what it accepts (kind, bounds or choices, None), its default, its help.

    ``part`` says where it goes: ``"backbone"`` options choose the network and what is taken
    from it (they enter the configuration directly), ``"run"`` options how it runs
    (:class:`RunOptions`). ``default`` is the default of every signature that takes the
    option (the estimators, :func:`featcache.extract`, the command line; a test checks
    them), ``help`` the command line's help.
    """

    kind: str  # "str", "path", "int", "real", "bool", "choice", "window"
    low: float | None = None
    open_low: bool = False
    choices: tuple = ()
    none: bool = False
    part: str = "run"
    default: object = None
    help: str = ""


#: The shared run options, once: what each accepts, its default and its help. Both
#: validations below, the estimators' constraints, the command line's options and the Dask
#: job's option list are built from it.
OPTIONS = {
    "model": Option("str", part="backbone", default="efficientnet_lite0", help="backbone"),
    "weights": Option("path", none=True, part="backbone", default="DEFAULT",
                      help="DEFAULT, a weights tag, a checkpoint path, or 'none' (random)"),
    "layer": Option("str", none=True, part="backbone",
                    help="module name; None is the final feature map"),
    "pooling": Option("choice", choices=POOLINGS, part="backbone", default="avg",
                      help="pooling of the layer"),
    "image_size": Option("int", low=MIN_IMAGE_SIZE, none=True, part="backbone",
                         help="network input side in pixels (default: the backbone's)"),
    "batch_size": Option("int", low=1, default=64, help="images per batch"),
    "device": Option("str", default="auto", help="auto, cpu, cuda or cuda:N"),
    "precision": Option("choice", choices=PRECISIONS, default="auto",
                        help="auto: fp32 on CPU, bf16 or fp16 on GPU"),
    "num_workers": Option("int", low=0, none=True,
                          help="decode workers (default: the usable cores on GPU; on CPU 0, "
                               "or the cores for more than 256 files)"),
    "on_error": Option("choice", choices=ON_ERROR, default="raise",
                       help="raise: stop at the first bad input; skip: record it and go on"),
    "progress": Option("bool", none=True, help="progress bar (None: on a terminal or notebook)"),
    "retry_failed": Option("bool", default=False,
                           help="decode inputs whose failure an earlier run recorded"),
    "verify_inputs": Option("choice", choices=VERIFY_INPUTS, default="stat",
                            help="stat: trust the key memo for unchanged files; hash: read "
                                 "and hash every input file"),
    "window": Option("window", none=True,
                     help="intensity window for 16-bit/float/DICOM images (default: the DICOM "
                          "file's own window, else each image's min..max)"),
    "decode_scale": Option("choice", choices=DECODE_SCALES, default="reduced",
                           help="reduced: large images decoded at a reduced scale (a JPEG's DCT "
                                "scale, others box-averaged), never under twice the input size; "
                                "full: every pixel"),
    "decoder": Option("choice", choices=DECODERS, default="pillow",
                      help="pillow: every input decoded on the CPU; device: baseline/progressive "
                           "8-bit JPEGs decoded in batches on the run device (nvJPEG on a GPU), "
                           "other inputs by Pillow"),
    "commit_rows": Option("int", low=1, default=4096, help="commit a shard at least every N rows"),
    "commit_seconds": Option("real", low=0, open_low=True, default=30.0,
                             help="commit a shard at least this often"),
}
#: The backbone options (they choose the network and what is taken from it).
BACKBONE_OPTIONS = tuple(name for name, option in OPTIONS.items() if option.part == "backbone")
#: The run options proper (how it runs: :class:`RunOptions`), as every job passes them on.
RUN_OPTIONS = tuple(name for name, option in OPTIONS.items() if option.part == "run")


@functools.lru_cache(maxsize=None)
def run_constraints() -> dict:
    """scikit-learn parameter constraints of :data:`OPTIONS` (for estimators' validation)."""
    from sklearn.utils._param_validation import Interval, StrOptions

    def constraints(option):
        kind = option.kind
        if kind == "int":
            out = [Interval(Integral, option.low, None, closed="left")]
        elif kind == "real":
            out = [Interval(Real, option.low, None, closed="neither" if option.open_low else "left")]
        elif kind == "choice":
            out = [StrOptions(set(option.choices))]
        else:
            out = {"str": [str], "path": [str, os.PathLike], "bool": ["boolean"],
                   "window": [tuple, list]}[kind]
        return out + [None] if option.none else out

    return {name: constraints(option) for name, option in OPTIONS.items()}


def option_constraints(function) -> dict:
    """scikit-learn constraints of the :data:`OPTIONS` among ``function``'s parameters.

    An estimator's ``__init__`` spells its parameters (scikit-learn's ``get_params`` reads
    them there); their constraints come from here, so each option is checked one way.
    """
    import inspect

    names = inspect.signature(function).parameters
    return {name: constraint for name, constraint in run_constraints().items() if name in names}


def _invalid(message):
    return InvalidOptionError(message)


def is_invalid_parameter(exc: BaseException) -> bool:
    """Whether ``exc`` is an invalid option (ours, or scikit-learn's InvalidParameterError)."""
    module = sys.modules.get("sklearn.utils._param_validation")
    return isinstance(exc, InvalidOptionError) or (
        module is not None and isinstance(exc, module.InvalidParameterError))


def _describe(option: Option) -> str:
    if option.kind == "int":
        what = f"an int in the range [{option.low}, inf)"
    elif option.kind == "real":
        what = f"a float in the range {'(' if option.open_low else '['}{float(option.low)}, inf)"
    elif option.kind == "choice":
        what = f"a str among {sorted(option.choices)}"
    elif option.kind == "path":
        what = "a str or an os.PathLike"
    else:
        what = {"str": "a str", "bool": "a bool", "window": "a (center, width) pair"}[option.kind]
    return what + (" or None" if option.none else "")


def _accepts(option: Option, value) -> bool:
    if value is None:
        return option.none
    kind = option.kind
    if kind in ("int", "real"):
        number = Integral if kind == "int" else Real
        if not isinstance(value, number) or isinstance(value, bool) or (
                kind == "real" and not math.isfinite(value)):
            return False
        return value > option.low if option.open_low else value >= option.low
    if kind == "choice":
        return isinstance(value, str) and value in option.choices
    if kind == "bool":
        return isinstance(value, (bool, _np_bool()))
    if kind == "path":
        return isinstance(value, (str, os.PathLike))
    if kind == "window":
        return isinstance(value, (tuple, list))
    return isinstance(value, str)


def _np_bool():
    """numpy's bool type when numpy is imported (an option may come from an array)."""
    numpy = sys.modules.get("numpy")
    return numpy.bool_ if numpy is not None else bool


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
    """Check every run option present in ``params`` (others are ignored; each of ``layers``
    is checked as a ``layer``).

    Raises
    ------
    featcache.exceptions.InvalidOptionError
        Naming the option, what it must be and what came (a ValueError; no scikit-learn
        import, so the command line stays quick).
    """
    known = {name: value for name, value in params.items() if name in OPTIONS}
    for layer in params.get("layers", ()):  # several layers (extract): each one a 'layer'
        if not _accepts(OPTIONS["layer"], layer):
            raise _invalid(f"The 'layer' parameter of {caller} must be "
                           f"{_describe(OPTIONS['layer'])}. Got {layer!r} instead.")
    for name, value in known.items():
        if not _accepts(OPTIONS[name], value):
            raise _invalid(f"The '{name}' parameter of {caller} must be "
                           f"{_describe(OPTIONS[name])}. Got {value!r} instead.")
    if "window" in known:
        validate_window(known["window"], caller)
    if "device" in known:
        _validate_device(known["device"], caller)


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise _featcache_error(
            f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise _featcache_error(
            f"device={device!r} but CUDA is not available on this machine; use device='auto' or 'cpu'."
        )
    return resolved


def resolve_precision(precision, device) -> str:
    """``"auto"`` -> fp32 on CPU, bf16 on a GPU that supports it (else fp16)."""
    import torch

    if precision != "auto":
        if precision not in PRECISIONS or precision == "auto":
            raise _featcache_error(f"precision must be one of {PRECISIONS}, got {precision!r}")
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _featcache_error(message):
    return FeatcacheError(message)


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


def usable_cores() -> int:
    """The cores this process may run on: ``os.sched_getaffinity`` (a SLURM or ``taskset``
    allocation, a container's cpuset), else ``os.cpu_count()`` where there is no affinity."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def start_method() -> str:
    """The start method this process's new processes would get (``multiprocessing``'s), read
    without fixing it: a caller may still choose another with ``set_start_method``."""
    import multiprocessing

    return (multiprocessing.get_start_method(allow_none=True)
            or multiprocessing.get_all_start_methods()[0])
