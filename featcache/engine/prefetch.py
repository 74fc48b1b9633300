"""Batches prepared in a background thread while the network runs on the ones before.

With ``decoder="device"`` the run device itself decodes and resizes the JPEGs
(:mod:`featcache.engine.device_decode`), which the batch loop would otherwise do between two
forward passes: the network would wait for every decode, and the decoder for every forward
pass. :func:`prefetched` runs the preparation of the next batches (collecting the files'
bytes from the decode workers, the batched decode, the resize, the CPU fallback of the JPEGs
the device cannot decode) in a daemon thread, up to ``depth`` batches ahead, while the caller
runs the network on the batch it was handed.

On a CUDA device the thread queues its kernels on the same stream as the network (the
stream current in the caller's thread: the default stream, or one the caller chose with
``torch.cuda.stream``), so every batch's images are complete before any kernel of the
network reads them, and memory freed by one thread is reused by the other in stream order: no
event or ``record_stream`` bookkeeping can be got wrong. What overlaps is the host side: reading and collating the bytes, nvJPEG's host
phase, the kernel launches, the CPU fallback.

The iterator is created by the caller, in its own thread, before the thread starts, so decode
workers are forked while this process has a single thread. The thread stops at the first of:
the iterator's end, an exception (re-raised to the caller at the batch where it happened), or
the caller leaving the loop (``close()`` of the generator, an exception, a deferred signal):
the caller then waits for the thread, which closes the iterator in its own thread (so a
DataLoader shuts its workers down) before the caller goes on. Where the thread never ran (it
could not start, or the caller left while it started), the caller closes the iterator.
"""

from __future__ import annotations

import contextlib
import queue
import threading

import torch

__all__ = ["PREFETCH_DEPTH", "prefetched"]

#: Batches prepared ahead of the one the network runs on.
PREFETCH_DEPTH = 2

_END = object()


class _Raised:
    """An exception the producing iterator raised, carried to the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetched(iterator, depth: int = PREFETCH_DEPTH, device: torch.device | None = None):
    """Yield the items of ``iterator`` in order, each produced in a background thread ahead of
    its use.

    Parameters
    ----------
    iterator : iterator
        Created by the caller (not a lazy iterable that would start work in the thread); a
        generator is closed in the thread once the thread stops.
    depth : int
        Items held ready at most (the thread waits while that many wait to be taken).
    device : torch.device, optional
        A CUDA device: the thread makes it its current device, and the stream current in
        the caller's thread (when the loop starts) its current stream; both are per-thread
        state in torch.

    Yields
    ------
    The items of ``iterator``. An exception it raises is raised here, after the items before
    it.
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    claim = threading.Lock()  # taken by the thread once it runs, else by the caller
    # The caller's stream (current stream is per thread in torch): the network's kernels and
    # the thread's are then queued on one stream, also inside a caller's torch.cuda.stream().
    stream = (torch.cuda.current_stream(device)
              if device is not None and device.type == "cuda" else None)
    thread = threading.Thread(target=_produce,
                              args=(iterator, ready, stop, device, stream, claim),
                              name="featcache-prefetch", daemon=True)
    try:
        thread.start()  # inside: it may fail, or be interrupted while the thread starts
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        if claim.acquire(blocking=False):  # the thread never ran (and never will use it)
            _close(iterator)
        elif thread is not threading.current_thread():  # (a generator finalised by the
            thread.join()                                  # garbage collector in the thread)


def _produce(iterator, ready: queue.Queue, stop: threading.Event, device, stream,
             claim) -> None:
    if not claim.acquire(blocking=False):  # the caller left before this thread ran
        return
    try:
        with contextlib.ExitStack() as on_device:
            if stream is not None:
                on_device.enter_context(torch.cuda.device(device))
                on_device.enter_context(torch.cuda.stream(stream))
            for item in iterator:
                if not _hand_over(ready, item, stop):
                    return
        _hand_over(ready, _END, stop)
    except BaseException as exc:  # noqa: BLE001 - every failure is the consumer's to raise
        _hand_over(ready, _Raised(exc), stop)
    finally:
        _close(iterator)


def _close(iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _hand_over(ready: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` in ``ready`` once there is room; False (and drop it) once ``stop`` is set."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False
