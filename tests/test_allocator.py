"""Tests for featcache.engine.allocator: freed activation buffers are reused on a CPU."""

import subprocess
import sys
import textwrap

import pytest

from featcache.engine.allocator import allocator_tunable, reuse_freed_memory

GLIBC_LINUX = allocator_tunable({})


def test_the_user_s_allocator_choice_is_respected():
    assert not allocator_tunable({"FEATCACHE_MALLOC_TUNING": "0"})
    assert not allocator_tunable({"MALLOC_ARENA_MAX": "2"})
    assert not allocator_tunable({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
    assert not allocator_tunable({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert allocator_tunable({"FEATCACHE_MALLOC_TUNING": "1"}) == GLIBC_LINUX



_TUNABLE_AFTER = textwrap.dedent("""
    import os, sys
    from featcache.engine.allocator import allocator_tunable
    change = sys.argv[1]
    if change == "set":
        os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"
    elif change == "unset":
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    print(allocator_tunable())
""")


@pytest.mark.parametrize("started_with, change, tunable", [
    ({}, "set", True),           # set later (as Dask's LocalCluster does): glibc never read it
    ({"MALLOC_TRIM_THRESHOLD_": "65536"}, "none", False),   # the user's tuning: respected
    ({"MALLOC_TRIM_THRESHOLD_": "65536"}, "unset", True),   # disowned by the process
    ({}, "none", True),
])
def test_only_allocator_variables_the_process_started_with_count(started_with, change,
                                                                 tunable):
    env = {"PATH": "/usr/bin:/bin", **started_with}
    out = subprocess.run([sys.executable, "-c", _TUNABLE_AFTER, change], capture_output=True,
                         text=True, check=True, env=env).stdout.strip()
    assert out == str(tunable and GLIBC_LINUX)

# Allocates, touches and frees a 48 MiB tensor 20 times in a steady state (as a forward pass
# does with an activation) and prints the minor page faults that took outside and inside the
# context, and the resident memory inside the context (freed buffers held) and after it.
_FAULTS = textwrap.dedent("""
    import os, resource, torch
    from featcache.engine.allocator import reuse_freed_memory

    def churn(times):
        for _ in range(times):
            buffer = torch.empty(48 << 20, dtype=torch.uint8)
            buffer.fill_(1)
            del buffer

    def faults():
        churn(10)  # the heap settles (it grows while freed blocks find their places)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        churn(20)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def resident_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20

    plain = faults()
    with reuse_freed_memory() as tuned:
        with reuse_freed_memory():  # re-entrant
            pass
        reused = faults()  # still tuned after the inner exit
        held = resident_mib()
    print(tuned, plain, reused, held, resident_mib())
""")


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc's malloc only")
def test_freed_buffers_are_reused_instead_of_page_faulted_back_in():
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout.split()
    tuned, plain, reused, held, released = out[0], *map(int, out[1:])
    assert tuned == "True"
    pages = 20 * (48 << 20) // 4096
    assert plain > pages // 2, "glibc maps a fresh 48 MiB buffer each time by default"
    assert reused < plain // 4, f"{reused} faults against {plain}: freed buffers were not reused"
    assert held - released >= 40, "the memory held for reuse goes back to the system on exit"


def test_disabled_tuning_changes_nothing(monkeypatch):
    monkeypatch.setenv("FEATCACHE_MALLOC_TUNING", "0")
    with reuse_freed_memory() as tuned:
        assert tuned is False


def test_the_cpu_engine_runs_inside_the_context(monkeypatch):
    import contextlib

    import numpy as np

    import featcache.engine.batches as engine
    from featcache.backbones import load_backbone

    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append("in")
        try:
            yield True
        finally:
            entered.append("out")

    monkeypatch.setattr(engine, "reuse_freed_memory", recording)
    items = [np.zeros((28, 28), np.uint8)] * 2
    batches = engine.run_batches(load_backbone(image_size=32).extractor, items, [0, 1],
                                 image_size=32, device="cpu", progress=False)
    next(batches)
    assert entered == ["in"]
    batches.close()
    assert entered == ["in", "out"]


class _HeldTimer:
    """A ``threading.Timer`` that fires only when the test says so (no waiting on time)."""

    made = []

    def __init__(self, interval, function, args=()):
        self.interval, self.function, self.args, self.cancelled = interval, function, args, False
        _HeldTimer.made.append(self)

    def start(self):
        pass

    def cancel(self):
        self.cancelled = True

    def fire(self):
        self.function(*self.args)


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc's malloc only")
def test_a_lingering_release_waits_for_the_next_context_and_a_stale_one_does_nothing(
        monkeypatch):
    import threading

    import featcache.engine.allocator as allocator

    applied = []
    real_apply = allocator._apply
    monkeypatch.setattr(allocator, "_apply", lambda s: applied.append(s) or real_apply(s))
    monkeypatch.setattr(threading, "Timer", _HeldTimer)
    _HeldTimer.made.clear()
    with reuse_freed_memory(linger=2.0):
        pass
    assert applied == [allocator._DURING] and allocator._tuned, "held after the exit"
    first = _HeldTimer.made[-1]
    assert first.interval == 2.0
    with reuse_freed_memory(linger=2.0):  # the next partition: nothing applied again
        assert first.cancelled
        first.fire()  # a timer that fired just as the context was entered: stale
        assert allocator._tuned and applied == [allocator._DURING]
    second = _HeldTimer.made[-1]
    assert second is not first and allocator._tuned
    second.fire()  # nobody came: glibc's settings back, free memory returned
    assert applied == [allocator._DURING, allocator._AFTER] and not allocator._tuned
    with reuse_freed_memory():  # no linger: released on exit, as before
        pass
    assert applied[-1] == allocator._AFTER and not allocator._tuned and len(_HeldTimer.made) == 2


# Churns a 48 MiB buffer in a context that lingers, then opens and closes one that does not:
# the resident memory after the lingering exit (freed buffers kept for the next context) and
# after the second exit (returned to the system).
_LINGER = textwrap.dedent("""
    import os, torch
    from featcache.engine.allocator import reuse_freed_memory

    def resident_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20

    with reuse_freed_memory(linger=600.0):  # far longer than this script runs
        for _ in range(10):
            buffer = torch.empty(48 << 20, dtype=torch.uint8)
            buffer.fill_(1)
            del buffer
    held = resident_mib()
    with reuse_freed_memory():
        pass
    print(held, resident_mib())
""")


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc's malloc only")
def test_a_lingering_context_keeps_freed_memory_until_the_release():
    out = subprocess.run([sys.executable, "-c", _LINGER], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout.split()
    held, released = map(int, out)
    assert held - released >= 40, f"{held} MiB after the lingering exit, {released} after"
