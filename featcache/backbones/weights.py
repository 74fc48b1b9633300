"""Loading weights into a backbone and hashing them for the fingerprint.

Three sources of weights reach a network here: a file shipped in a Python package (the
default backbone), a local checkpoint the user names (``weights="path/to/file.pt"``), and the
named weights of torchvision or timm (downloaded by those libraries, see
:mod:`featcache.backbones`). Whatever the source, the fingerprint records a digest of the
tensors that were actually loaded, so two checkpoints never share cache rows.

torch is imported inside the functions that need it, so :func:`file_identity` and
:func:`is_weights_path` serve a fitted estimator's warm-cache path without importing torch.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

from ..cache.identity import identity_of, settled
from ..exceptions import WeightsError

__all__ = [
    "load_checkpoint",
    "load_local_checkpoint",
    "load_state_dict_strict",
    "map_state_dict_by_order",
    "state_dict_digest",
    "file_identity",
    "weights_key",
    "may_remember",
]

#: Container keys under which training scripts commonly nest the state dict.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
#: Key prefixes left by DataParallel, Lightning and SSL frameworks, stripped when every key has one.
_STRIP_PREFIXES = ("module.", "backbone.", "model.", "encoder.", "net.")

_digest_memo: dict[tuple, str] = {}


def file_identity(path) -> tuple:
    """Identity of a weights file, the key of every memo that depends on its contents.

    The same rule as the content-key memo of inputs (:mod:`featcache.inputs`): a file
    rewritten in place with its size kept and its mtime restored (``os.utime``) still gets a
    new identity, because its status-change time (``st_ctime_ns``, which no user call can set
    back) moves; a file replaced by another (``os.replace``) gets a new inode as well.

    Parameters
    ----------
    path : str or PathLike
        The weights file.

    Returns
    -------
    tuple
        ``(resolved path, size, mtime_ns, inode, device, ctime_ns)``.

    Raises
    ------
    WeightsError
        When ``path`` is not an existing file.
    """
    path = _require_file(path).resolve()
    try:
        st = path.stat()
    except OSError as exc:  # removed between the check and the stat
        raise _not_found(path) from exc
    return identity_of(path, st)


def weights_key(weights):
    """How ``weights`` enters every memo key: a file by its identity, a tag or None as itself.

    The one rule for the resolution key of configurations (:mod:`featcache.cache.resolved`),
    the per-process memos of networks (:mod:`featcache.backbones.loading`,
    :mod:`featcache.partial.network`), a Dask worker's resolved state and a fitted
    estimator's ``weights_identity_``. A file's identity (:func:`file_identity`, a stat, no
    torch) is taken before anything reads the file, so a rewrite during the read is noticed;
    whether a memo may keep it is :func:`may_remember`'s answer.
    """
    return file_identity(weights) if is_weights_path(weights) else weights


def may_remember(key) -> bool:
    """Whether a memo may remember an answer under ``key``, a weights key.

    A weights file's identity (:func:`file_identity`) only once it is *settled*: taken when
    the file's mtime and ctime were older than the racily-clean window
    (:func:`featcache.cache.identity.settled`), so that any later rewrite moves them; a file
    rewritten within one tick of a coarse clock keeps its identity, and a memo that had
    remembered it would serve the old weights. A tag (``"DEFAULT"``), a library's own key
    or None always.
    """
    return not _is_file_identity(key) or settled(key)


def _is_file_identity(key) -> bool:
    return (isinstance(key, tuple) and len(key) == 6 and isinstance(key[0], str)
            and all(isinstance(v, int) for v in key[1:]))


def _require_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise _not_found(path)
    return path


def _not_found(path) -> WeightsError:
    return WeightsError(
        f"weights file not found: '{path}'. Pass weights='DEFAULT' for the backbone's "
        "pretrained weights, None for random weights, or the path of an existing checkpoint."
    )


def load_checkpoint(path) -> "OrderedDict[str, torch.Tensor]":
    """Read a local checkpoint file safely and return a flat state dict.

    The file is read with ``torch.load(weights_only=True)`` (no pickled code runs). A state
    dict nested under a common container key (``state_dict``, ``model``...) is unwrapped,
    and a prefix shared by every key (``module.``, ``backbone.``...) is stripped.

    Parameters
    ----------
    path : str or PathLike
        The checkpoint file (``.pt``, ``.pth``, ``.bin``).

    Returns
    -------
    OrderedDict
        Parameter and buffer names mapped to tensors.
    """
    import torch

    path = _require_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError...)
        raise WeightsError(
            f"cannot read checkpoint '{path}' with torch.load(weights_only=True): {exc}. "
            "Save the weights with torch.save(model.state_dict(), path)."
        ) from exc
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj, path) -> "OrderedDict[str, torch.Tensor]":
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(obj, dict) and not _is_flat_tensor_dict(obj):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_flat_tensor_dict(obj):
        raise WeightsError(
            f"checkpoint '{path}' holds no state dict of tensors (found {type(obj).__name__}"
            f"{' with keys ' + repr(sorted(obj)[:8]) if isinstance(obj, dict) else ''}). "
            "Save it with torch.save(model.state_dict(), path)."
        )
    state = OrderedDict(obj)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIP_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = OrderedDict((k[len(prefix):], v) for k, v in state.items())
                stripped = True
    return state


def _is_flat_tensor_dict(obj: dict) -> bool:
    import torch

    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_state_dict_strict(model: torch.nn.Module, state, *, source, head_prefixes=()) -> None:
    """Load ``state`` into ``model``, failing with a readable diff on any mismatch.

    Keys of the classification head (``head_prefixes``) may be missing: featcache never uses
    the head, and headless checkpoints (e.g. RadImageNet encoders) are common.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not _is_head(k, head_prefixes)]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape and not _is_head(k, head_prefixes)
    ]
    if missing or unexpected or wrong_shape:
        raise WeightsError(_mismatch_message(source, missing, unexpected, wrong_shape))
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)


def _is_head(key, head_prefixes) -> bool:
    return bool(head_prefixes) and key.startswith(tuple(head_prefixes))


def _mismatch_message(source, missing, unexpected, wrong_shape) -> str:
    def listing(title, names):
        if not names:
            return ""
        shown = "\n    ".join(names[:10])
        more = f"\n    ... and {len(names) - 10} more" if len(names) > 10 else ""
        return f"\n  {title} ({len(names)}):\n    {shown}{more}"

    return (
        f"the checkpoint {source} does not fit the architecture:"
        + listing("missing from the checkpoint", missing)
        + listing("in the checkpoint but not in the model", unexpected)
        + listing("shape mismatch", wrong_shape)
        + "\nCheck that `model=` names the architecture the checkpoint was trained with."
    )


def load_local_checkpoint(model, path, *, head_prefixes=()) -> tuple:
    """Load the local checkpoint ``path`` into ``model``: the one loader for every backbone.

    The file's identity is taken before it is read (so a rewrite during the read is noticed
    by the next identity check), then the state dict is read safely (:func:`load_checkpoint`)
    and loaded strictly (:func:`load_state_dict_strict`; ``head_prefixes`` may be missing).

    Returns
    -------
    tuple
        ``(model, "checkpoint", identity)`` with :func:`file_identity` of the file.
    """
    identity = file_identity(path)
    load_state_dict_strict(model, load_checkpoint(path), source=f"'{path}'",
                           head_prefixes=head_prefixes)
    return model, "checkpoint", identity


def map_state_dict_by_order(source_state, model: torch.nn.Module, *, source) -> "OrderedDict":
    """Rename a state dict to ``model``'s names, pairing entries by position.

    Used where a checkpoint and an architecture come from two code bases that name their
    parameters differently but store them in the same order. Every pair's shape is checked;
    any difference in count or shape raises :class:`WeightsError`.
    """
    target = model.state_dict()
    if len(source_state) != len(target):
        raise WeightsError(
            f"{source} has {len(source_state)} tensors but the architecture has {len(target)}; "
            "they cannot be paired by order."
        )
    mapped = OrderedDict()
    for (src_key, tensor), (dst_key, dst) in zip(source_state.items(), target.items()):
        if tensor.shape != dst.shape:
            raise WeightsError(
                f"{source}: tensor '{src_key}' {tuple(tensor.shape)} pairs with '{dst_key}' "
                f"{tuple(dst.shape)}: shapes differ, so the order mapping is wrong."
            )
        mapped[dst_key] = tensor
    return mapped


def state_dict_digest(model: torch.nn.Module, memo_key=None) -> str:
    """Hex blake2b-128 digest of every tensor of ``model`` (names, dtypes, shapes, values).

    ``memo_key`` (:func:`file_identity` of the weights file, taken *before* the file was read,
    so a rewrite during the read can only leave a stale entry under a key no later stat gives)
    memoises the digest for the process, so the same file is hashed once; an identity that is
    not yet settled (:func:`may_remember`) is neither looked up nor remembered.
    """
    import torch

    if memo_key is not None and not may_remember(memo_key):
        memo_key = None
    if memo_key is not None and memo_key in _digest_memo:
        return _digest_memo[memo_key]
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()
    if memo_key is not None:
        _digest_memo[memo_key] = digest
    return digest


def is_weights_path(weights) -> bool:
    """Whether ``weights`` names a file rather than a weights tag such as ``"DEFAULT"``."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (
        os.sep in weights or "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".ckpt"))
    )
