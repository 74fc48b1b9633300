"""The one batch loop: decoded inputs in, pooled features out.

:func:`run_batches` takes the items to compute (the cache's misses), decodes and resizes them
(in DataLoader workers sized to the usable cores on GPU, and on CPU for large jobs of files;
else in the main process; with ``decoder="device"`` the workers read JPEG files and the run
device decodes and resizes them in batches, :mod:`featcache.engine.device_decode`, in a
thread that prepares the next batches while the network runs, :mod:`featcache.engine.prefetch`),
runs the frozen extractor under
``torch.inference_mode`` in channels-last layout with optional bf16/fp16 autocast, and
yields one :class:`Batch` of features per step, so a caller can commit each batch to the
cache as soon as it exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .allocator import reuse_freed_memory
from .device_decode import check_device_decoder, decode_jpegs
from .prefetch import prefetched
from ..exceptions import InputChangedError, InputError
from ..inputs import DecodePolicy, decode, describe
from ..inputs.errors import without_tracebacks
from ..inputs.keys import forget
from ..log import get_logger
from ..options import resolve_device, resolve_precision, usable_cores
from .progress import progress_bar

_log = get_logger(__name__)

__all__ = [
    "Batch",
    "resolve_device",
    "resolve_precision",
    "resolve_num_workers",
    "usable_cores",
    "to_model_input",
    "resize_and_crop",
    "to_unit_float",
    "warm_up",
    "run_batches",
]

_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Batch:
    """One step of the loop.

    Attributes
    ----------
    positions : ndarray of int
        Positions (in the caller's item list) of the rows in ``features``.
    features : dict
        Layer name -> float32 array ``(len(positions), dim)``.
    failures : list of (int, str)
        Positions that could not be decoded, with the reason (only with ``on_error="skip"``).
    transient : set of int
        Those of ``failures`` that say nothing about the input itself (it changed while it was
        read): they are reported but never recorded in the cache, so a rerun tries again.
    """

    positions: np.ndarray
    features: dict
    failures: list = field(default_factory=list)
    transient: set = field(default_factory=set)


#: On a CPU, ``num_workers=None`` starts decode workers only for more than this many files to
#: compute: a worker costs about a second to start, and a small job, or arrays and PIL images
#: (whose "decoding" is a copy, and which would be pickled to every worker), gain nothing.
CPU_WORKERS_MIN_FILES = 256


def resolve_num_workers(num_workers, device: torch.device, items=None, positions=None) -> int:
    """Decode workers for ``num_workers=None``: the cores this process may use (:func:`usable_cores`).

    On a GPU, always (the device waits on decoding, and a CPU fallback of device decoding
    decodes there too). On a CPU, the workers decode while the network runs on the same cores
    (large files decode slower than the network embeds them): only for a job of more than
    :data:`CPU_WORKERS_MIN_FILES` files on 2 or more cores, else 0 (decode in the main process).
    """
    if num_workers is not None:
        return int(num_workers)
    cores = usable_cores()
    if device.type == "cuda":
        return cores
    if cores < 2 or positions is None or len(positions) <= CPU_WORKERS_MIN_FILES or not all(
            isinstance(items[int(pos)], (str, os.PathLike)) for pos in positions):
        return 0
    return cores


def to_model_input(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) image -> (3, size, size) tensor of the same kind: uint8, or float32 in [0, 1].

    Resized and cropped by :func:`resize_and_crop`. 8-bit images stay uint8 (a quarter of the
    bytes to move to the device, where :func:`to_unit_float` scales them).
    """
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if t.dtype != torch.uint8:
        t = t.float()
    return resize_and_crop(t, size)


def resize_and_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    """A (C, H, W) uint8 or float tensor, on any device -> (C, size, size).

    The shorter side is resized to ``size`` (bilinear, antialiased), then the centre square
    is cropped; a square image is simply resized. A batch ``(N, C, H, W)`` of images of one
    size is resized in one call, each image exactly as alone.
    """
    from torchvision.transforms.v2 import functional as TF

    h, w = t.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        t = TF.resize(t, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        t = t[..., top:top + size, left:left + size]
    return t


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """A uint8 batch -> float32 in [0, 1] (on whatever device it is); floats pass through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


class _DecodeDataset(Dataset):
    """Decodes and resizes one item; a failure becomes an InputError value, never a raise.

    With ``keys``, each item is checked to still have the content key it was planned under.
    With ``augment`` (``augment(image, key) -> image``, a :class:`featcache.inputs.augment.AugmentView`),
    each resized input is replaced by its augmented view. With ``policy.decoder="device"``, a
    JPEG file the device decodes comes back as its bytes (a 1-D uint8 tensor) instead.
    """

    def __init__(self, items, positions, policy: DecodePolicy, size: int, keys=None, augment=None):
        self.items, self.positions, self.policy, self.size = items, positions, policy, size
        self.keys, self.augment = keys, augment

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, i):
        return self.sample(int(self.positions[i]), self.policy, jpeg_bytes=True)

    def on_the_cpu(self, pos: int):
        """``(pos, tensor, error)`` of a JPEG the device could not decode: Pillow's decode at
        full size (what the device would have decoded), resized and augmented as usual."""
        return self.sample(pos, dataclasses.replace(self.policy, decode_scale="full"),
                           jpeg_bytes=False)

    def augmented(self, pos: int, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``, the resized input at ``pos``, or its augmented view."""
        return tensor if self.augment is None else self.augment(tensor, self.keys[pos])

    def sample(self, pos: int, policy: DecodePolicy, jpeg_bytes: bool):
        """``(pos, tensor, error)`` of the input at ``pos``: the resized (augmented) image, or
        the bytes of a JPEG for the device (``jpeg_bytes`` under ``decoder="device"``)."""
        item = self.items[pos]
        try:
            image = decode(item, pos, policy, image_size=self.size, jpeg_bytes=jpeg_bytes,
                           key=None if self.keys is None else self.keys[pos])
        except InputError as exc:
            return pos, None, exc
        if isinstance(image, bytes):  # for the device to decode (packed by _collate)
            return pos, image, None
        try:
            return pos, self.augmented(pos, to_model_input(image, self.size)), None
        except Exception as exc:  # any failure of one input is that input's error
            return pos, None, InputError(f"{describe(item, pos)}: cannot be resized to "
                                         f"{self.size} px ({type(exc).__name__}: {exc}).")


class _PackedJpegs(NamedTuple):
    """The JPEG files of one decode batch left to the device: their positions, and their
    bytes end to end in one uint8 tensor, ``sizes[i]`` bytes for the i-th.

    A decode worker hands its batch to the main process through shared memory, one segment
    per tensor: one tensor per file (about 2,000 files/s from 2 workers on a 2-core CPU) cost
    more than reading and checking the files (4,300 files/s in one process), while one tensor
    per batch delivered 4,400 files/s (``benchmarks/gpu_throughput.py``'s "feed" rows).
    """

    positions: np.ndarray
    data: torch.Tensor
    sizes: np.ndarray


def _packed(jpegs: list) -> "_PackedJpegs | None":
    """``(position, bytes)`` pairs -> one :class:`_PackedJpegs` (None when there are none)."""
    if not jpegs:
        return None
    sizes = np.array([len(data) for _, data in jpegs], dtype=np.int64)
    packed = torch.empty(int(sizes.sum()), dtype=torch.uint8)
    flat, start = packed.numpy(), 0
    for (_, data), size in zip(jpegs, sizes.tolist()):
        flat[start:start + size] = np.frombuffer(data, dtype=np.uint8)
        start += size
    return _PackedJpegs(np.array([pos for pos, _ in jpegs], dtype=np.int64), packed, sizes)


def _unpacked(packed: "_PackedJpegs | None") -> list:
    """:class:`_PackedJpegs` -> ``(position, bytes)`` pairs, each a 1-D uint8 view of the
    packed tensor (pinned when it is)."""
    if packed is None:
        return []
    return list(zip(packed.positions.tolist(), torch.split(packed.data, packed.sizes.tolist())))


def _collate(samples):
    """Samples -> ``(positions, images, errors, jpegs)``: the decoded images stacked, the
    failures, and the JPEGs left to the device (a :class:`_PackedJpegs`, or None). In a
    decode worker, the failures lose their tracebacks
    (:func:`~featcache.inputs.errors.without_tracebacks`)."""
    good = [(p, t) for p, t, _ in samples if isinstance(t, torch.Tensor)]
    jpegs = [(p, t) for p, t, _ in samples if isinstance(t, bytes)]
    errors = [(p, error) for p, _, error in samples if error is not None]
    if errors and get_worker_info() is not None:
        errors = [(p, without_tracebacks(error)) for p, error in errors]
    positions = np.array([p for p, _ in good], dtype=np.int64)
    tensors = [t for _, t in good]
    if any(t.dtype != torch.uint8 for t in tensors):  # a mixed batch travels as float
        tensors = [to_unit_float(t) for t in tensors]
    images = torch.stack(tensors) if tensors else None
    return positions, images, errors, _packed(jpegs)


def decode_batch_size(batch_size: int, workers: int) -> int:
    """Images each decode worker decodes per step: ``batch_size`` split among the workers.

    A DataLoader worker hands over a whole decode batch at once, so the first batch reaches
    the network only after one worker has decoded that many images. Split among ``workers``,
    the network's first batch is ready ``workers`` times sooner: on a GPU a worker decodes
    about 175 JPEG photos per second, so a batch of 256 from one worker kept it idle 1.4 s
    at the start of every run (every Dask task). :func:`_full_batches` puts them back
    together, so the network still runs on batches of ``batch_size``.
    """
    return batch_size if workers <= 1 else max(1, -(-batch_size // workers))


def _full_batches(loader, batch_size: int, device):
    """Consecutive decode batches of ``loader`` (or an iterator of them) joined into
    ``(positions, images, errors, jpegs)`` batches of about ``batch_size`` inputs, in order
    (``jpegs``: ``(position, bytes tensor)`` pairs, unpacked from :func:`_collate`'s);
    images move to ``device`` as they come (non-blocking from pinned memory), and a batch that
    mixes 8-bit and float images is float.
    """
    parts, count = [], 0
    for part in loader:
        part = (*part[:3], _unpacked(part[3]))
        parts.append(part)
        count += len(part[0]) + len(part[2]) + len(part[3])
        if count >= batch_size:
            yield _join(parts, device)
            parts, count = [], 0
    if parts:
        yield _join(parts, device)


def _join(parts, device):
    if len(parts) == 1:
        return parts[0]
    positions = np.concatenate([p for p, _, _, _ in parts])
    errors = [e for _, _, errs, _ in parts for e in errs]
    images = [im if device.type == "cpu" else im.to(device, non_blocking=True)
              for _, im, _, _ in parts if im is not None]
    if any(im.dtype != torch.uint8 for im in images):
        images = [to_unit_float(im) for im in images]
    jpegs = [j for _, _, _, js in parts for j in js]
    return positions, (torch.cat(images) if images else None), errors, jpegs


def _prepared(loader_batches, dataset: _DecodeDataset, batch_size: int, device):
    """``(positions, images, errors)`` batches of about ``batch_size`` inputs, ready for the
    network on ``device``: the decode workers' batches joined (:func:`_full_batches`), their
    JPEG bytes decoded on the device (:func:`_on_device`).

    Only the joining generator holds the loader's iterator, and it is closed when this one
    ends, however it ends: the DataLoader then shuts its decode workers down at once, even
    while an exception's traceback keeps this generator's frame alive.
    """
    joined_batches = _full_batches(loader_batches, batch_size, device)
    del loader_batches
    try:
        done = 0  # inputs the loader has handed over
        for joined in joined_batches:
            size = len(joined[0]) + len(joined[2]) + len(joined[3])
            yield _on_device(joined, dataset, device, dataset.positions[done:done + size])
            done += size
    finally:
        joined_batches.close()


def _on_device(batch, dataset: _DecodeDataset, device, planned):
    """A joined batch -> ``(positions, images, errors)``, its JPEG bytes decoded on ``device``.

    The JPEGs are decoded in one batch (:func:`~featcache.engine.device_decode.decode_jpegs`)
    and resized in one call per image size; those the device cannot decode are decoded by
    Pillow at full size (:meth:`_DecodeDataset.on_the_cpu`), and fail only if Pillow fails
    too. The batch's images keep the order of ``planned`` (the positions the batch covers, in
    the order they were asked for). Without JPEG bytes (``decoder="pillow"``), the batch is
    returned as it came.
    """
    positions, images, errors, jpegs = batch
    if not jpegs:
        return positions, images, errors
    decoded = decode_jpegs([data for _, data in jpegs], device)
    done = [(pos, image) for (pos, _), image in zip(jpegs, decoded) if image is not None]
    redo = [dataset.on_the_cpu(pos) for (pos, _), image in zip(jpegs, decoded) if image is None]
    if redo:
        _log.info("%d of %d JPEGs not decoded on %s: decoded by Pillow", len(redo), len(jpegs),
                  device)
    errors = errors + [(pos, error) for pos, _, error in redo if error is not None]
    redo = [(pos, tensor) for pos, tensor, _ in redo if tensor is not None]
    resized = _resized_by_size([image for _, image in done], dataset.size)
    parts = [(positions, images)] if images is not None else []
    if done:
        parts.append((np.array([pos for pos, _ in done], dtype=np.int64),
                      torch.stack([dataset.augmented(pos, image)
                                   for (pos, _), image in zip(done, resized)])))
    if redo:  # resized and augmented already
        parts.append((np.array([pos for pos, _ in redo], dtype=np.int64),
                      torch.stack([tensor for _, tensor in redo])))
    if not parts:
        return np.zeros(0, dtype=np.int64), None, errors
    tensors = [t.to(device, non_blocking=True) for _, t in parts]
    if any(t.dtype != torch.uint8 for t in tensors):
        tensors = [to_unit_float(t) for t in tensors]
    positions = np.concatenate([p for p, _ in parts])
    rank = {int(pos): i for i, pos in enumerate(planned)}
    order = np.argsort([rank[int(pos)] for pos in positions], kind="stable")
    return positions[order], torch.cat(tensors)[torch.from_numpy(order).to(device)], errors


def _resized_by_size(images: list, size: int) -> list:
    """``resize_and_crop`` of each (3, H, W) image, in one batched call per distinct (H, W)."""
    out = [None] * len(images)
    groups: dict = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for members in groups.values():
        batch = resize_and_crop(torch.stack([images[i] for i in members]), size)
        for i, image in zip(members, batch):
            out[i] = image
    return out


#: On a CPU, the forward pass runs in chunks of about this many input pixels: small chunks keep
#: activations in the CPU caches (EfficientNet-Lite0 at 224 px on a 2-core machine, freed
#: memory reused: 134 images/s in chunks of 8, 86 one image at a time, about 65 in batches of
#: 64). Chunking never changes the features.
CPU_CHUNK_PIXELS = 8 * 224 * 224


def cpu_chunk_size(image_size: int) -> int:
    """Images per forward pass on a CPU, for square inputs of ``image_size``."""
    return max(1, CPU_CHUNK_PIXELS // (image_size * image_size))


def _forward(extractor, images, device) -> dict:
    """Layer -> float32 numpy features of a batch (in CPU-cache-sized chunks on a CPU).

    Each chunk is moved to the device, scaled to [0, 1] and laid out channels-last on its own,
    so a CPU never holds a float copy of the whole batch.
    """
    chunk = len(images) if device.type != "cpu" else cpu_chunk_size(images.shape[-1])
    parts = []
    for i in range(0, len(images), chunk):
        x = to_unit_float(images[i:i + chunk].to(device, non_blocking=True))
        parts.append(extractor(x.contiguous(memory_format=torch.channels_last)))
    return {name: torch.cat([p[name] for p in parts]).float().cpu().numpy() for name in parts[0]}


def warm_up(extractor, device, batch_size: int, image_size: int, autocast) -> None:
    """One forward pass of ``extractor`` on a batch of zeros of the run's shape, precision and
    layout, whose features are dropped.

    :func:`run_batches` calls it on a GPU just after the decode workers start, while they
    decode the first batch (the GPU would be idle): what a process's first forward pass pays
    once (CUDA and cuBLAS/cuDNN handles, the kernels loaded lazily for these shapes, the
    allocator's first blocks) is then paid while the workers decode, not after. The pass is
    the loop's own (:func:`_forward`), so the warm-up follows any change of how it runs.
    """
    if batch_size < 1:
        return
    with torch.inference_mode(), autocast:
        _forward(extractor, torch.zeros(batch_size, 3, image_size, image_size), device)


def _denormals_flushed() -> bool:
    """Whether this thread already flushes denormal floats to zero (torch has no getter)."""
    return float(torch.tensor([1e-40]).mul(1.0)) == 0.0


#: What a decode worker imports: the forkserver imports them once (torchvision alone takes
#: about 2 s, which every task's workers would pay again).
_DECODE_WORKER_MODULES = (__name__, "torchvision.transforms.v2.functional")
#: Packages that a worker's main script often imports, preloaded when this process has them.
_MAIN_SCRIPT_PACKAGES = ("dask", "distributed")


def decode_context(workers: int, start_method: str | None = None):
    """The multiprocessing context decode workers start in (None: the process's default).

    What a decode worker imports is imported here first, so that workers forked from this
    process have it (torchvision's resize took each forked worker 2 s to import in every run
    of a process that had not loaded a network).

    Where this process would *spawn* them (a Dask worker: ``distributed`` sets that start
    method; macOS), every run would start fresh interpreters that import torch and featcache
    again, seconds per Dask task. Workers are then forked from a forkserver that imported
    :mod:`featcache.engine.batches` and torchvision once: it is single-threaded, so forking it is as
    safe as spawning.
    """
    if workers == 0:
        return None
    for name in _DECODE_WORKER_MODULES:  # forked workers inherit them (once per process)
        importlib.import_module(name)
    start_method = start_method or multiprocessing.get_start_method()
    if start_method != "spawn" or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    # A child also re-imports the main script (a Dask worker's imports distributed, about
    # 0.5 s): what the parent imported of it, the forkserver imports once too.
    context.set_forkserver_preload(
        [*_DECODE_WORKER_MODULES, *(m for m in _MAIN_SCRIPT_PACKAGES if m in sys.modules)])
    return context


def run_batches(extractor, items, positions, *, image_size, policy=None, batch_size=64,
                device="auto", precision="auto", num_workers=None, on_error="raise",
                progress=None, progress_desc="featcache", keys=None, augment=None):
    """Compute features for ``items[positions]``, one :class:`Batch` at a time.

    Parameters
    ----------
    extractor : featcache.backbones.capture.FeatureExtractor
    items : list
        Items from :func:`featcache.inputs.as_items`.
    positions : sequence of int
        Which items to compute, in order.
    image_size : int
    policy : DecodePolicy, optional
    batch_size, num_workers : int
    device : str or torch.device
    precision : {"auto", "fp32", "bf16", "fp16"}
    on_error : {"raise", "skip"}
        ``"raise"``: the first undecodable input raises :class:`InputError`; ``"skip"``:
        it is reported in ``Batch.failures`` and the loop goes on.
    keys : list of bytes, optional
        Content keys aligned with ``items``: each input is checked, on exactly the bytes that
        are decoded, to still have its key (else :class:`InputChangedError`).
    augment : callable, optional
        ``augment(image, key) -> image`` applied to each resized input (needs ``keys``).
    progress : bool or None
        tqdm bar; None shows it on an interactive terminal and in a Jupyter kernel (see
        :mod:`featcache.engine.progress`).

    Yields
    ------
    Batch
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    dtype = _PRECISIONS[resolve_precision(precision, device)]
    workers = resolve_num_workers(num_workers, device, items, positions)
    policy = policy or DecodePolicy()
    if policy.decoder == "device":
        check_device_decoder(device)
    extractor.to(device=device, memory_format=torch.channels_last)
    dataset = _DecodeDataset(items, np.asarray(positions, dtype=np.int64), policy, image_size,
                             keys, augment)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    loader = DataLoader(
        dataset,
        batch_size=decode_batch_size(batch_size, workers), shuffle=False, num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
        multiprocessing_context=decode_context(workers),
    )
    _log.info("computing %d inputs on %s in %s, batch size %d, %d decode workers",
              len(positions), device, resolve_precision(precision, device), batch_size, workers)
    bar = progress_bar(len(positions), progress_desc, progress)
    n_failed = 0
    # Tiny (denormal) values slow CPUs down: flush them to zero during the run, then restore.
    restore_denormals = device.type == "cpu" and not _denormals_flushed()
    if restore_denormals:
        restore_denormals = torch.set_flush_denormal(True)
    # On a CPU, freed activation buffers are reused instead of page-faulted back in per chunk.
    allocator = reuse_freed_memory() if device.type == "cpu" else contextlib.nullcontext()
    batches = None
    try:
        # Workers fork here, in this thread; with decoder="device" the next batches are
        # decoded on the device in a thread while the network runs (featcache.engine.prefetch).
        batches = _prepared(iter(loader), dataset, batch_size, device)
        if device.type == "cuda" and workers > 0:  # the GPU waits for the first batch anyway
            warm_up(extractor, device, min(batch_size, len(dataset)), image_size, autocast)
        if policy.decoder == "device":
            batches = prefetched(batches, device=device)
        with allocator:
            for batch_positions, images, errors in batches:
                for pos, error in errors:
                    if isinstance(error, InputChangedError):  # a memoised key proved wrong:
                        forget(items[pos])  # the file is hashed again next time, not refused
                if errors and on_error == "raise":
                    raise errors[0][1]
                failures = [(pos, str(error)) for pos, error in errors]
                transient = {pos for pos, error in errors if isinstance(error, InputChangedError)}
                if failures:
                    n_failed += len(failures)
                    bar.set_postfix(failed=n_failed, refresh=False)
                features = {}
                if images is not None:
                    with torch.inference_mode(), autocast:
                        features = _forward(extractor, images, device)
                bar.update(len(batch_positions) + len(failures))
                yield Batch(batch_positions, features, failures, transient)
    finally:
        if batches is not None:
            batches.close()  # stops the prefetch thread, shuts the decode workers down
        bar.close()
        if restore_denormals:
            torch.set_flush_denormal(False)
