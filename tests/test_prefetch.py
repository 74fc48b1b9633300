"""Tests for featcache.engine.prefetch: items prepared in a thread, in order, stopped cleanly."""

import inspect
import threading
import types

import pytest

from featcache.engine import prefetch
from featcache.engine.prefetch import prefetched


class Source:
    """A generator of ``n`` items that records what it produced, in which thread, and whether
    it was closed; ``fail_at`` raises instead of producing that item."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at = n, fail_at
        self.produced, self.threads, self.closed = 0, set(), threading.Event()

    def __iter__(self):
        try:
            for i in range(self.n):
                self.threads.add(threading.get_ident())
                if i == self.fail_at:
                    raise ZeroDivisionError(f"item {i} cannot be made")
                self.produced += 1
                yield i
        finally:
            self.closed.set()


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "featcache-prefetch"]


def test_items_come_in_order_from_another_thread_and_the_thread_ends():
    source = Source(25)
    assert list(prefetched(iter(source), depth=3)) == list(range(25))
    assert source.threads and threading.get_ident() not in source.threads
    assert source.closed.is_set() and not _prefetch_threads()


def test_an_exception_comes_after_the_items_before_it_with_its_own_type():
    source = Source(10, fail_at=4)
    got = []
    with pytest.raises(ZeroDivisionError, match="item 4 cannot be made"):
        for item in prefetched(iter(source)):
            got.append(item)
    assert got == [0, 1, 2, 3]
    assert source.closed.is_set() and not _prefetch_threads()


def test_leaving_the_loop_stops_the_thread_and_closes_the_source_within_depth():
    source = Source(1000)
    items = prefetched(iter(source), depth=2)
    assert next(items) == 0
    items.close()  # what an exception or a `break` in the caller's loop does
    assert source.closed.is_set() and not _prefetch_threads()
    # At most the item taken, `depth` waiting and one held by the blocked thread.
    assert source.produced <= 1 + 2 + 1


def test_an_exception_in_the_callers_loop_stops_the_thread():
    source = Source(1000)
    with pytest.raises(RuntimeError, match="the caller failed"):
        for item in prefetched(iter(source)):
            if item == 3:
                raise RuntimeError("the caller failed")
    assert source.closed.is_set() and not _prefetch_threads()


def test_an_empty_source_and_a_bad_depth():
    assert list(prefetched(iter(Source(0)))) == []
    with pytest.raises(ValueError, match="depth must be a positive integer, got 0"):
        next(prefetched(iter(Source(3)), depth=0))


def _with_thread_class(monkeypatch, thread_class):
    """prefetch's ``threading`` with ``Thread`` replaced (the real module is left alone)."""
    monkeypatch.setattr(prefetch, "threading", types.SimpleNamespace(
        Thread=thread_class, Event=threading.Event, Lock=threading.Lock,
        current_thread=threading.current_thread))


def test_a_thread_that_cannot_start_leaves_the_source_closed(monkeypatch):
    class CannotStart(threading.Thread):
        def start(self):  # what a process at its thread limit gets
            raise RuntimeError("can't start new thread")

    _with_thread_class(monkeypatch, CannotStart)
    source = iter(Source(5))
    with pytest.raises(RuntimeError, match="can't start new thread"):
        next(prefetched(source))
    assert inspect.getgeneratorstate(source) == inspect.GEN_CLOSED  # it frees what it holds


def test_an_interrupt_while_the_thread_starts_stops_it_and_closes_the_source(monkeypatch):
    class InterruptedStart(threading.Thread):
        def start(self):  # Ctrl-C delivered while start() waits for the new thread
            super().start()
            raise KeyboardInterrupt

    _with_thread_class(monkeypatch, InterruptedStart)
    source = iter(Source(1000))
    with pytest.raises(KeyboardInterrupt):
        next(prefetched(source, depth=2))
    for thread in _prefetch_threads():
        thread.join(timeout=30)  # a bound for a failure, not a wait the test relies on
    assert not _prefetch_threads()
    assert inspect.getgeneratorstate(source) == inspect.GEN_CLOSED


@pytest.mark.gpu
def test_on_a_gpu_the_thread_queues_on_the_callers_device_and_stream():
    import torch

    device = torch.device("cuda", torch.cuda.device_count() - 1)
    seen = []

    def source():
        for i in range(3):
            seen.append((torch.cuda.current_device(), torch.cuda.current_stream()))
            yield i

    side = torch.cuda.Stream(device)
    with torch.cuda.device(device), torch.cuda.stream(side):
        assert list(prefetched(source(), device=device)) == [0, 1, 2]
    assert seen == [(device.index, side)] * 3
