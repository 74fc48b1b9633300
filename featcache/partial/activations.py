"""Cached activations of a frozen prefix: computed once by the one unit of work, then served.

:func:`prefix_activations` resolves one run per view (:func:`featcache.engine.run.resolve_run`)
and runs the inputs through the one unit of work (keys -> plan -> compute the misses ->
commit), once for the plain inputs and once per augmentation view, and returns an :class:`ActivationSet` that serves rows by position. The rows live in
memory (in their storage type, so float16 maps take half the bytes) when they fit within
``max_memory`` bytes; otherwise every batch is read from the cache's shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..cache import resolve_cache
from ..engine.run import changed_since_fit, resolve_run
from ..engine.unit_of_work import SourcesOf, content_keys
from ..exceptions import NonFiniteError
from ..inputs.augment import DEFAULT_POLICY, AugmentView

__all__ = ["ActivationSet", "prefix_activations", "memory_budget"]

#: Rows are read into memory in chunks of about this many bytes.
_READ_CHUNK_BYTES = 64 * 2**20


def memory_budget(max_memory) -> int:
    """``max_memory`` in bytes; ``"auto"`` is a quarter of this machine's physical memory."""
    if max_memory != "auto":
        return int(max_memory)
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 4 * 2**30


@dataclass
class ActivationSet:
    """Cached prefix activations of a list of inputs, one or more views each.

    Attributes
    ----------
    keys : list of bytes or None
        Content key of each input (None where it could not be read).
    failures : dict
        Position -> reason of every input without a row.
    row_shape : tuple
        Shape of one row: ``(C, H, W)``, ``(tokens, D)`` or ``(D,)``.
    namespaces : list
        The namespace of each view (view 0: the inputs as they are).
    in_memory : bool
        Whether the rows were read into memory (else each batch is read from the shards).
    fingerprints : list of str
    """

    keys: list
    failures: dict
    row_shape: tuple
    namespaces: list
    fingerprints: list
    storage: str = "float32"
    arrays: list = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    sources: object = None
    checking: str | None = None  # streamed rows are checked as read (see check_finite)

    @property
    def in_memory(self) -> bool:
        return bool(self.arrays)

    @property
    def n_views(self) -> int:
        return len(self.namespaces)

    @property
    def valid(self) -> np.ndarray:
        """Positions that have rows."""
        return np.array([i for i in range(len(self.keys)) if i not in self.failures], dtype=np.int64)

    def rows(self, positions, views=None) -> np.ndarray:
        """Float32 rows ``(len(positions), *row_shape)``; ``views[i]`` picks each row's view."""
        positions = np.asarray(positions, dtype=np.int64)
        views = np.zeros(len(positions), dtype=np.int64) if views is None else np.asarray(views)
        out = np.empty((len(positions), *self.row_shape), dtype=np.float32)
        for v in np.unique(views):
            sel = np.flatnonzero(views == v)
            out[sel] = self._view_rows(int(v), positions[sel]).reshape(len(sel), *self.row_shape)
        return out

    def rows_on(self, device, fraction: float = 0.5):
        """``rows`` for a loop that runs on ``device``.

        On a CUDA device, rows already in memory move there once, in their storage type, when
        they take at most ``fraction`` of the device's free memory; every batch is then sliced
        on the device and returned as a float32 tensor (the same values as :meth:`rows`), with
        no host conversion and no transfer per step. Otherwise (a CPU, rows streamed from the
        shards, or too little device memory) this is :meth:`rows`.
        """
        import torch

        device = torch.device(device)
        if device.type != "cuda" or not self.arrays:
            return self.rows
        free, _ = torch.cuda.mem_get_info(device)
        if sum(a.nbytes for a in self.arrays) > fraction * free:
            return self.rows
        tensors = [torch.from_numpy(a).to(device) for a in self.arrays]
        shape = self.row_shape

        def rows(positions, views=None):
            idx = torch.as_tensor(np.asarray(positions, dtype=np.int64), device=device)
            if views is None or len(tensors) == 1:
                out = tensors[0].index_select(0, idx).float()
            else:
                views = torch.as_tensor(np.asarray(views, dtype=np.int64), device=device)
                out = torch.empty((len(idx), tensors[0].shape[1]), dtype=torch.float32,
                                  device=device)
                for v, t in enumerate(tensors):
                    sel = torch.nonzero(views == v).squeeze(1)
                    out[sel] = t.index_select(0, idx[sel]).float()
            return out.view(len(idx), *shape)

        return rows

    def _view_rows(self, view: int, positions: np.ndarray) -> np.ndarray:
        if self.arrays:
            return self.arrays[view][positions].astype(np.float32)
        rows = self.namespaces[view].read([self.keys[p] for p in positions])
        if self.checking is not None:
            self._refuse_non_finite(positions, rows.reshape(len(positions), -1), view)
        return rows

    def check_finite(self, positions, what: str = "training") -> None:
        """Refuse rows of ``positions`` (any view) that hold NaN or infinite values.

        Rows in memory are checked now; streamed rows as each batch is read from the shards
        (an extra pass over the shards would cost an epoch of reading).

        Raises
        ------
        NonFiniteError
            Naming the first such input (``what`` says what it is for).
        """
        self.checking = what
        if not self.arrays:
            return
        positions = np.asarray(positions, dtype=np.int64)
        width = int(np.prod(self.row_shape))
        chunk = max(1, _READ_CHUNK_BYTES // max(1, width * np.dtype(self.storage).itemsize))
        for view, array in enumerate(self.arrays):
            for lo in range(0, len(positions), chunk):
                sel = positions[lo:lo + chunk]
                self._refuse_non_finite(sel, array[sel], view)

    def _refuse_non_finite(self, positions, rows, view: int) -> None:
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if not len(bad):
            return
        pos = int(positions[bad[0]])
        source = "" if self.sources is None else str(self.sources[pos])
        name = f"input {pos} ({source!r})" if source and not source.startswith("input ") \
            else source or f"input {pos}"
        raise NonFiniteError(
            f"{self.checking} {name} has non-finite (NaN or infinite) cached activations of "
            f"the frozen prefix (view {view}, namespace "
            f"{self.fingerprints[view] if view < len(self.fingerprints) else '?'}; "
            f"{len(bad)} such rows in its batch): a float16 cache overflows beyond 65504 "
            "(use cache_dtype='float32'), or the cache is damaged (run featcache verify on it, "
            "or use a fresh cache). Nothing was trained on it.")

    def load(self, max_memory: int) -> bool:
        """Read every view's rows into memory when they fit in ``max_memory`` bytes."""
        width = int(np.prod(self.row_shape))
        itemsize = np.dtype(self.storage).itemsize
        need = len(self.keys) * width * itemsize * self.n_views
        if need > max_memory:
            return False
        present = self.keys
        chunk = max(1, _READ_CHUNK_BYTES // max(1, width * 4))
        arrays = []
        for ns in self.namespaces:
            a = np.full((len(present), width), np.nan, dtype=self.storage)
            for lo in range(0, len(present), chunk):
                idx = [i for i in range(lo, min(lo + chunk, len(present))) if i not in self.failures]
                if idx:
                    a[idx] = ns.read([present[i] for i in idx])
            arrays.append(a)
        self.arrays = arrays
        return True


def prefix_activations(items, *, model, weights, layer, pooling, image_size, options, cache,
                       storage="float32", views=0, policy=None, max_memory=None,
                       expected=None) -> ActivationSet:
    """Cache (where missing) and serve the activations of ``layer`` for ``items``.

    Parameters
    ----------
    items : list
        From :func:`featcache.inputs.as_items`.
    model, weights, layer, pooling, image_size
        The frozen prefix: its output at ``layer`` (``pooling="none"`` keeps the feature map).
    options : featcache.engine.run_options.RunOptions
    cache : "auto", path, FeatureCache, False or None
        Where the activations are cached; False/None keeps them in memory for this call.
    storage : {"float32", "float16"}
        How rows are stored (recorded in the fingerprint).
    views : int
        Augmented views per input besides the input itself (see :mod:`featcache.inputs.augment`).
    policy : featcache.inputs.augment.AugmentPolicy, optional
    max_memory : int, optional
        Rows are read into memory when they take at most this many bytes (None: always).
    expected : str, optional
        The fingerprint of view 0 recorded at fit: a different one (a weights file changed,
        a parameter set without refitting) raises :class:`FeatcacheError`.
    """
    store = resolve_cache(cache)  # once, for every view's run
    sources = SourcesOf(items)
    key_memo = None if store is None else store.key_memo()
    hashed = content_keys(items, options.on_error, key_memo,  # once for every view
                          options.verify_inputs)
    policy = policy or DEFAULT_POLICY
    result = None
    namespaces, fingerprints, shape = [], [], None
    for view in range(views + 1):
        described = None if view == 0 else policy.describe(view)
        run = resolve_run(model=model, weights=weights, layers=(layer,), pooling=pooling,
                          image_size=image_size, cache=store,
                          options=options, storage=storage, augment=described)
        ((name, (config, fp)),) = run.configs.items()
        if view == 0 and expected is not None and fp != expected:
            raise changed_since_fit(expected, fp, "frozen prefix")
        shape = tuple(config.get("row_shape") or (config["dim"],))
        ((_, ns),) = run.namespaces().items()
        done = run.embed(items, sources, namespaces={name: ns}, keys=hashed,
                         augment=None if view == 0 else AugmentView(policy, view))
        if result is None:
            result = ActivationSet(done.keys, dict(done.failures), shape, [], [], storage,
                                   computed=done.computed, cached=done.cached, sources=sources)
        else:
            result.failures.update(done.failures)
            result.computed += done.computed
        namespaces.append(ns)
        fingerprints.append(fp)
    result.namespaces, result.fingerprints = namespaces, fingerprints
    unlimited = store is None or max_memory is None  # in-memory namespaces are in memory anyway
    result.load(np.iinfo(np.int64).max if unlimited else max_memory)
    return result
