"""SIGINT and SIGTERM deferred to safe points, so a signal never interrupts a commit half-way.

While :func:`deferred_signals` is active in the main thread, Ctrl-C (SIGINT) and SIGTERM only
record that they arrived; the batch loop calls :func:`raise_if_interrupted` between batches,
which raises :class:`KeyboardInterrupt` there. The cache writers then commit every finished
row (with signals still deferred) before the interrupt leaves featcache. Contexts nest: the
command line keeps the outer one until its summary is printed, the unit of work holds an
inner one. Outside the main thread (where Python delivers no signals) nothing is installed.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["deferred_signals", "raise_if_interrupted", "interrupted", "take_interrupt"]

SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None))
                if s is not None)


class _State:
    depth = 0
    received = None  # the first signal number received while deferred
    handled = False  # whether it was raised or taken by a caller already
    previous: dict = {}


_STATE = _State()


def _record(signum, frame) -> None:
    if _STATE.received is None:
        _STATE.received = signum


@contextlib.contextmanager
def deferred_signals():
    """Defer SIGINT and SIGTERM in the main thread until the outermost context is left.

    Handlers installed before are restored on leaving the outermost context. A signal
    recorded meanwhile is raised as :class:`KeyboardInterrupt` by :func:`raise_if_interrupted`
    at a safe point, or taken by :func:`take_interrupt`; one that neither handled is raised
    when the outermost context is left (after the work inside it finished), never lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = _STATE.depth == 0
    if outer:
        _STATE.received, _STATE.handled = None, False
        _STATE.previous = {s: signal.signal(s, _record) for s in SIGNALS}
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1
        if outer:
            for signum, handler in _STATE.previous.items():
                signal.signal(signum, handler)
            _STATE.previous = {}
    if outer and _STATE.received is not None and not _STATE.handled:
        _STATE.handled = True
        raise KeyboardInterrupt(f"signal {signal.Signals(_STATE.received).name} received")


def interrupted() -> int | None:
    """The signal number received in the active deferral (None if none or none active)."""
    if _STATE.depth == 0 or threading.current_thread() is not threading.main_thread():
        return None
    return _STATE.received


def take_interrupt() -> int | None:
    """The signal received in the active deferral, marked handled (None if none)."""
    signum = interrupted()
    if signum is not None:
        _STATE.handled = True
    return signum


def raise_if_interrupted() -> None:
    """Raise :class:`KeyboardInterrupt` if a deferred signal arrived (a safe point)."""
    signum = take_interrupt()
    if signum is not None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name} received")
