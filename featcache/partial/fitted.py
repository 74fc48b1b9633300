"""Checking the fitted state of a partially frozen estimator before it is used.

A fitted :class:`~featcache.PartiallyFrozenClassifier` loaded from a file (``skops`` with
:data:`featcache.sharing.TRUSTED_TYPES`, a pickle) is only as sound as its fitted attributes:
a file made of trusted types alone can still claim a ``row_shape_`` whose one row takes
tens of gigabytes, or a ``tail_state_`` without some weights. :func:`check_fitted_state`
compares them with what the estimator's own parameters and architecture give, before the
tail is built or anything of a claimed size is allocated, and raises
:class:`~featcache.exceptions.InvalidModelError` naming the attribute, what was expected and
the fix.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from ..exceptions import InvalidModelError, LayerError
from ..options import PRECISIONS

__all__ = ["check_fitted_state", "check_tail_state", "expected_row_shape", "head_outputs"]

_FIX = "load only files you trust, or refit the estimator"

#: What ``prefix_precision_`` may hold: a precision as the fit resolved it (never ``"auto"``).
RESOLVED_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")


def _refuse(message: str) -> InvalidModelError:
    return InvalidModelError(f"{message}: this fitted state was not written by fit; {_FIX}.")


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.3g} GB"


def check_fitted_state(est, spec, network, layout, budget: int) -> tuple:
    """Check ``est``'s fitted attributes against its parameters and ``network``'s stages.

    Parameters
    ----------
    est : PartiallyFrozenClassifier or PartiallyFrozenRegressor
    spec : featcache.backbones.BackboneSpec
    network : torch.nn.Module
        The architecture (any weights); runs once on one zero image to find the cut's shape.
    layout : featcache.backbones.StageLayout
    budget : int
        Bytes one batch of prefix inputs or of cached rows may take.

    Returns
    -------
    row_shape : tuple of int
        The checked ``row_shape_``.

    Raises
    ------
    InvalidModelError
        A parameter the fit could not have used, a cut layer, pooling or row shape other
        than the architecture's, a ``prefix_precision_`` that is no resolved precision, or a
        batch beyond ``budget``.
    """
    k = est.trainable_blocks
    try:
        layout.check_trainable(k, spec.name)
    except LayerError as exc:
        raise _refuse(f"trainable_blocks={k!r} does not fit {spec.name} ({exc})") from None
    for name, expected in (("cut_layer_", layout.cut_layer(k)), ("pool_", layout.pool)):
        found = est.__dict__.get(name)
        if found != expected:
            raise _refuse(f"{name}={found!r} but {spec.name} with trainable_blocks={k} has "
                          f"{name}={expected!r}; expected {expected!r}")
    precision = est.__dict__.get("prefix_precision_", "fp32")  # absent before it was recorded
    if precision not in RESOLVED_PRECISIONS:
        raise _refuse(f"prefix_precision_={precision!r}; expected one of "
                      f"{RESOLVED_PRECISIONS} (the precision the prefix ran in at fit)")
    side = int(est.image_size or spec.preprocessing.image_size)
    batch = int(est.batch_size)
    if batch * 3 * side * side * 4 > budget:
        raise _refuse(f"image_size={side} with batch_size={batch} makes one batch of prefix "
                      f"inputs {_gb(batch * 3 * side * side * 4)}, more than the "
                      f"{_gb(budget)} budget (a quarter of this machine's memory)")
    shape = est.__dict__.get("row_shape_")
    if not isinstance(shape, (tuple, list)) or not 1 <= len(shape) <= 3 or not all(
            isinstance(d, Integral) and not isinstance(d, bool) and d > 0 for d in shape):
        raise _refuse(f"row_shape_={shape!r}; expected a tuple of 1 to 3 positive integers "
                      "(C, H, W), (tokens, D) or (D,)")
    shape = tuple(int(d) for d in shape)
    row_bytes = math.prod(shape) * 4
    if row_bytes * batch > budget:
        raise _refuse(f"row_shape_={shape} makes one row {_gb(row_bytes)} as float32 and a "
                      f"batch of {batch} {_gb(row_bytes * batch)}, more than the {_gb(budget)} "
                      "budget (a quarter of this machine's memory)")
    expected = expected_row_shape(network, layout, k, side)
    if expected is not None and shape != expected:
        raise _refuse(f"row_shape_={shape}, but the output of {layout.cut_layer(k)} in "
                      f"{spec.name} at image_size={side} has shape {expected}; expected "
                      f"{expected}")
    return shape


def expected_row_shape(network, layout, trainable_blocks: int, side: int):
    """Shape of one cached row at the cut of ``trainable_blocks``, from one zero image.

    The network runs up to the cut layer only (a hook stops it there). Returns None when the
    architecture cannot run on a ``side`` x ``side`` image.
    """
    import torch

    class _Reached(Exception):
        pass

    seen = {}

    def stop(module, args, output):
        seen["shape"] = tuple(int(d) for d in output.shape[1:])
        raise _Reached

    cut = dict(network.named_modules())[layout.cut_layer(trainable_blocks)]
    handle = cut.register_forward_hook(stop)
    was_training = network.training
    try:
        with torch.inference_mode():
            network.eval()(torch.zeros(1, 3, side, side))
    except _Reached:
        pass
    except Exception:  # an architecture with a fixed input size: the other checks stand
        return None
    finally:
        handle.remove()
        network.train(was_training)
    shape = seen.get("shape")
    if shape is not None and trainable_blocks == 0:  # the pooled vector of the last stage
        shape = (shape[0],) if len(shape) == 3 else (shape[-1],)
    return shape


def check_tail_state(state, tail) -> None:
    """Check that ``state`` (``tail_state_``) has exactly ``tail``'s keys and shapes.

    Raises
    ------
    InvalidModelError
        Naming missing and unexpected keys, or the first array of another shape or type.
    """
    expected = {name: tuple(t.shape) for name, t in tail.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(map(str, set(state) - set(expected)))
    if missing or unexpected:
        raise _refuse(f"tail_state_ does not hold the weights of its tail (missing: "
                      f"{', '.join(missing[:5]) or 'none'}{' ...' if len(missing) > 5 else ''}; "
                      f"unexpected: {', '.join(unexpected[:5]) or 'none'}"
                      f"{' ...' if len(unexpected) > 5 else ''}); expected exactly the "
                      f"{len(expected)} arrays of the tail's state")
    for name, want in expected.items():
        array = state[name]
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
            raise _refuse(f"tail_state_[{name!r}] is {type(array).__name__} "
                          f"{getattr(array, 'dtype', '')}; expected a numeric numpy array")
        if array.shape != want:
            raise _refuse(f"tail_state_[{name!r}] has shape {array.shape}; expected {want}")


def head_outputs(est) -> int:
    """The number of outputs ``tail_state_['head.weight']`` gives, checked against the
    classes (or outputs) the estimator was fitted for."""
    state = est.__dict__.get("tail_state_")
    if not isinstance(state, dict):
        raise _refuse(f"tail_state_ is {type(state).__name__}; expected a dict of arrays")
    weight = state.get("head.weight")
    if not isinstance(weight, np.ndarray) or weight.ndim != 2:
        raise _refuse("tail_state_ does not hold the weights of its tail (missing: head.weight, "
                      "or not a 2-D array)")
    n_out = int(weight.shape[0])
    if "classes_" in est.__dict__:
        classes = np.asarray(est.classes_)
        if classes.ndim != 1 or len(classes) < 2 or len(classes) != n_out:
            raise _refuse(f"classes_ holds {classes.size} classes but "
                          f"tail_state_['head.weight'] has {n_out} outputs; expected one output "
                          "per class (at least 2)")
    if "n_outputs_" in est.__dict__:
        for name in ("y_mean_", "y_scale_"):
            if np.shape(est.__dict__.get(name)) != (n_out,) or n_out != est.n_outputs_:
                raise _refuse(f"n_outputs_={est.n_outputs_!r}, {name} of shape "
                              f"{np.shape(est.__dict__.get(name))} and {n_out} outputs in "
                              "tail_state_['head.weight']; expected the same number of outputs "
                              "in each")
    return n_out
