"""Progress: a bar for a person watching, plain lines for a batch job's log.

``progress=None`` (the default everywhere) shows a tqdm bar on an interactive terminal and in
a Jupyter kernel, whose output is not a terminal but is read by a person. In a kernel the bar
is a widget when ipywidgets is installed (``pip install featcache[notebook]``), else a text bar
(never nothing, and never tqdm's "IProgress not found" warning). Where stderr is no terminal
and no kernel runs (SLURM logs, ``nohup``, a pipe), ``None`` and ``True`` print
:class:`ProgressLines` instead: one plain line (done/total, elapsed, rate, ETA) every
``FEATCACHE_PROGRESS_INTERVAL`` seconds (default 30; 0 prints a line per update), and a
final line when any was printed, so a short run stays silent and a long one never is.
``progress=False`` shows nothing anywhere. Importing this module imports only the standard
library (and featcache's leaf modules).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time

from ..exceptions import InvalidOptionError
from ..log import LOGGER_NAME, in_jupyter_kernel, stderr_is_terminal

__all__ = ["in_jupyter_kernel", "show_progress", "progress_bar", "ProgressLines",
           "progress_interval", "DEFAULT_INTERVAL", "INTERVAL_VARIABLE"]

#: Seconds between two progress lines when nobody watches a bar.
DEFAULT_INTERVAL = 30.0
#: The environment variable that sets that interval.
INTERVAL_VARIABLE = "FEATCACHE_PROGRESS_INTERVAL"


def show_progress(progress: bool | None) -> bool:
    """Whether a tqdm bar shows: ``progress`` is not False, and stderr is an interactive
    terminal or this is a Jupyter kernel (elsewhere :func:`progress_bar` prints lines)."""
    if progress is False:
        return False
    return stderr_is_terminal() or in_jupyter_kernel()


def progress_interval() -> float:
    """Seconds between progress lines: ``FEATCACHE_PROGRESS_INTERVAL``, or 30 when unset.

    Raises
    ------
    InvalidOptionError
        When the variable is not a finite number of seconds >= 0.
    """
    value = os.environ.get(INTERVAL_VARIABLE, "").strip()
    if not value:
        return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise InvalidOptionError(
            f"{INTERVAL_VARIABLE}={value!r} is not a number of seconds >= 0 between progress "
            f"lines. Set it to e.g. {DEFAULT_INTERVAL:g} (the default), 0 for a line per "
            "batch, or unset it; progress=False (featcache extract --quiet) prints none.")
    return seconds


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLines:
    """Progress as plain lines on stderr, for logs where a bar is unreadable.

    Counts like a tqdm bar (``update``, ``set_postfix``, ``close``, ``n``); prints a line at
    the first update at least ``interval`` seconds after the previous line (or the start),
    and on :meth:`close` a final line when any was printed. From the first update on, a
    daemon thread also prints the line whenever ``interval`` passes with no line (one batch
    slower than the interval is no silent stretch); :meth:`close` stops it. It starts at the
    first update, not before, so that no thread runs while the extraction's loader forks
    its decode workers (they start when the first batch is asked for).

    Parameters
    ----------
    total : int
        How many units the run has.
    desc : str
        What runs (the line's prefix).
    unit : str
        What is counted (``"img"``, ``"batch"``).
    interval : float
        Seconds between lines (0: a line at every update).
    clock : callable
        Seconds, monotonic (:func:`time.monotonic`; tests pass a fake).
    stream : file, optional
        Where lines go (default: ``sys.stderr`` as it is when each line is written).
    heartbeat : bool
        Whether the thread prints lines between updates (tests with a fake ``clock`` turn it
        off and call :meth:`heartbeat` themselves). Never with ``interval`` 0.
    """

    disable = False

    def __init__(self, total: int, desc: str = LOGGER_NAME, unit: str = "img", *,
                 interval: float = DEFAULT_INTERVAL, clock=time.monotonic, stream=None,
                 heartbeat: bool = True):
        self.total, self.desc, self.unit, self.interval = int(total), desc, unit, interval
        self.n = 0
        self.lines = 0
        self._clock, self._stream = clock, stream
        self._start = self._last = clock()
        self._postfix: dict = {}
        self._closed = False
        self._lock = threading.Lock()  # update (the job's thread) and the heartbeat thread
        self._stop = threading.Event()
        self._thread = None
        self._beats = heartbeat and interval > 0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; print a line when ``interval`` has passed since the last."""
        with self._lock:
            self.n += n
            self._line_if_due()
            start = self._beats and self._thread is None and not self._closed
            if start:
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name="featcache-progress-lines")
        if start:
            self._thread.start()

    def heartbeat(self) -> None:
        """Print the line when ``interval`` has passed since the last, without counting."""
        with self._lock:
            if not self._closed:
                self._line_if_due()

    def _line_if_due(self) -> None:
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._write(self._line(now))

    def _beat(self) -> None:
        while True:
            with self._lock:
                wait = self._last + self.interval - self._clock()
            if self._stop.wait(max(wait, 0.01)):
                return
            self.heartbeat()

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
        """What the next lines end with (``failed=3``, ``epoch=2/10``), as tqdm's postfix."""
        self._postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        """Print the final line (when any line was printed); later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            thread = self._thread
            if self.lines:
                now = self._clock()
                elapsed = now - self._start
                verb = "done" if self.n >= self.total else "stopped at"
                self._write(f"{verb} {self.n}/{self.total} {self.unit} in {_duration(elapsed)}"
                            f"{self._rate(elapsed)}{self._suffix()}")
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        left = self.total - self.n
        if left <= 0:
            eta = ", ETA 0s"
        elif self.n and elapsed > 0:
            eta = f", ETA {_duration(left * elapsed / self.n)}"
        else:
            eta = ", ETA ?"
        return (f"{self.n}/{self.total} {self.unit}{percent} in {_duration(elapsed)}"
                f"{self._rate(elapsed)}{eta}{self._suffix()}")

    def _rate(self, elapsed: float) -> str:
        if elapsed <= 0:
            return ""
        rate = self.n / elapsed
        return f", {rate:.1f} {self.unit}/s" if rate < 100 else f", {rate:.0f} {self.unit}/s"

    def _suffix(self) -> str:
        return "".join(f", {k}={v}" for k, v in self._postfix.items())

    def _write(self, text: str) -> None:
        self.lines += 1
        stream = self._stream if self._stream is not None else sys.stderr
        if stream is not None:
            print(f"{self.desc}: {text}", file=stream, flush=True)


def _widgets_available() -> bool:
    try:
        from tqdm.notebook import IProgress
    except ImportError:
        return False
    return IProgress is not None


def progress_bar(total: int, desc: str, progress: bool | None, unit: str = "img"):
    """A tqdm bar of ``total`` items, or :class:`ProgressLines` where nobody watches a bar.

    In a Jupyter kernel it is a widget bar when ipywidgets is installed, else a text bar on
    stderr, and it stays in the cell output when done; on a terminal a text bar that
    disappears. Where stderr is no terminal and no kernel runs, lines every
    :func:`progress_interval` seconds. ``progress=False``: a disabled (but counting) bar.
    """
    if progress is not False and not show_progress(progress):  # a batch job's log
        return ProgressLines(total, desc, unit, interval=progress_interval())
    show = show_progress(progress)
    notebook = show and in_jupyter_kernel()
    if notebook and _widgets_available():
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(total=total, unit=unit, desc=desc, disable=not show, leave=notebook)
