"""Tests for featcache.engine.progress: when the bar shows, and which bar (the notebook run is in
tests/test_notebooks.py, which executes a real kernel)."""

import io
import pathlib
import sys
import threading

import pytest

from featcache.engine import progress

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fake_streams import TtyStream  # noqa: E402


@pytest.mark.parametrize("tty, kernel, expected", [
    (True, False, True), (False, False, False), (False, True, True)])
def test_a_bar_shows_on_a_terminal_or_in_a_kernel(tty, kernel, expected, monkeypatch):
    monkeypatch.setattr(sys, "stderr", TtyStream(tty))
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: kernel)
    assert progress.show_progress(None) is expected
    assert progress.show_progress(True) is expected and progress.show_progress(False) is False


@pytest.mark.parametrize("given", [None, True])
def test_a_batch_job_log_gets_lines_not_a_bar(given, monkeypatch):
    monkeypatch.setattr(sys, "stderr", TtyStream(False))
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: False)
    monkeypatch.setenv(progress.INTERVAL_VARIABLE, "0")
    bar = progress.progress_bar(4, "featcache", given)
    assert isinstance(bar, progress.ProgressLines) and bar.interval == 0
    bar.update(4)
    bar.close()
    lines = sys.stderr.getvalue().splitlines()
    assert lines[0].startswith("featcache: 4/4 img (100%) in 0s") and len(lines) == 2
    assert lines[1].startswith("featcache: done 4/4 img in 0s")


def test_a_terminal_still_gets_the_tqdm_bar(monkeypatch):
    from tqdm.std import tqdm as text_bar

    monkeypatch.setattr(sys, "stderr", TtyStream(True))
    bar = progress.progress_bar(3, "featcache", True)
    try:
        assert isinstance(bar, text_bar) and not bar.disable
    finally:
        bar.close()


def test_no_kernel_outside_jupyter():
    assert progress.in_jupyter_kernel() is False  # pytest is no kernel, even with IPython


@pytest.mark.parametrize("widgets", [True, False])
def test_a_kernel_gets_a_widget_bar_or_else_a_text_bar_that_stays(widgets, monkeypatch):
    from tqdm.std import tqdm as text_bar

    monkeypatch.setattr(sys, "stderr", TtyStream(False))
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: True)
    monkeypatch.setattr(progress, "_widgets_available", lambda: widgets)
    if widgets:
        pytest.importorskip("ipywidgets")
    bar = progress.progress_bar(5, "featcache", None)
    try:
        assert not bar.disable and bar.leave
        assert (type(bar).__module__ == "tqdm.notebook") is widgets
        assert isinstance(bar, text_bar)
    finally:
        bar.close()
    if not widgets:
        assert "featcache" in sys.stderr.getvalue()


def test_off_gives_a_disabled_bar_that_still_counts(monkeypatch):
    monkeypatch.setattr(sys, "stderr", TtyStream(True))
    bar = progress.progress_bar(3, "featcache", False)
    bar.update(2)
    bar.close()
    assert bar.disable and sys.stderr.getvalue() == ""


class _Clock:
    """A fake monotonic clock the test moves by hand (no sleeping, no timing race)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_lines_come_once_per_interval_with_rate_and_eta():
    clock, out = _Clock(), io.StringIO()
    bar = progress.ProgressLines(1000, "featcache (10 cached)", interval=30, clock=clock,
                                 stream=out, heartbeat=False)
    for _ in range(10):  # 100 images every 10 s: 10 img/s
        clock.now += 10
        bar.update(100)
    assert bar.n == 1000
    bar.set_postfix(failed=2, refresh=False)
    bar.close()
    bar.close()  # a second close prints nothing more
    assert out.getvalue().splitlines() == [
        "featcache (10 cached): 300/1000 img (30%) in 30s, 10.0 img/s, ETA 1m10s",
        "featcache (10 cached): 600/1000 img (60%) in 1m00s, 10.0 img/s, ETA 40s",
        "featcache (10 cached): 900/1000 img (90%) in 1m30s, 10.0 img/s, ETA 10s",
        "featcache (10 cached): done 1000/1000 img in 1m40s, 10.0 img/s, failed=2",
    ]


def test_the_interval_counts_from_the_last_line_not_the_last_update():
    clock, out = _Clock(), io.StringIO()
    bar = progress.ProgressLines(10, "training", unit="batch", interval=30, clock=clock,
                                 stream=out, heartbeat=False)
    for seconds in (29, 2, 20, 20, 50):  # lines at 31 s (>= 30 after start) and 71 s and 121 s
        clock.now += seconds
        bar.update(1)
    assert [line.split(" in ")[1].split(",")[0] for line in out.getvalue().splitlines()] == \
        ["31s", "1m11s", "2m01s"]
    bar.set_postfix(epoch="1/2")
    bar.close()  # stopped early (early stopping): it says so, with the postfix
    assert out.getvalue().splitlines()[-1] == \
        "training: stopped at 5/10 batch in 2m01s, 0.0 batch/s, epoch=1/2"


def test_a_run_shorter_than_the_interval_prints_nothing():
    clock, out = _Clock(), io.StringIO()
    bar = progress.ProgressLines(3, "featcache", interval=30, clock=clock, stream=out,
                                 heartbeat=False)
    clock.now += 29.9
    bar.update(3)
    bar.close()
    assert out.getvalue() == "" and bar.lines == 0


def test_rate_and_eta_unknown_before_time_has_passed():
    out = io.StringIO()
    bar = progress.ProgressLines(5, "featcache", interval=0, clock=_Clock(), stream=out)
    bar.update(0)
    assert out.getvalue() == "featcache: 0/5 img (0%) in 0s, ETA ?\n"


def test_a_heartbeat_prints_the_line_when_no_update_came_for_an_interval():
    clock, out = _Clock(), io.StringIO()
    bar = progress.ProgressLines(100, "featcache", interval=30, clock=clock, stream=out,
                                 heartbeat=False)
    clock.now += 10
    bar.update(10)
    clock.now += 15  # 25 s since the start: not yet
    bar.heartbeat()
    assert out.getvalue() == ""
    clock.now += 5  # one slow batch: 30 s with no update
    bar.heartbeat()
    assert out.getvalue() == "featcache: 10/100 img (10%) in 30s, 0.3 img/s, ETA 4m30s\n"
    bar.heartbeat()  # the interval counts from that line again
    assert bar.lines == 1
    bar.close()
    bar.heartbeat()  # after close: nothing
    assert out.getvalue().splitlines()[-1] == "featcache: stopped at 10/100 img in 30s, 0.3 img/s"


class _SignallingStream(io.StringIO):
    """A stream that sets an event at each line (the test waits on what was written)."""

    def __init__(self):
        super().__init__()
        self.wrote = threading.Event()

    def write(self, text):
        written = super().write(text)
        if text.endswith("\n"):
            self.wrote.set()
        return written


def test_the_heartbeat_thread_starts_at_the_first_update_and_stops_at_close():
    out = _SignallingStream()
    bar = progress.ProgressLines(10, "featcache", interval=0.05, stream=out)
    assert bar._thread is None  # no thread before the first update (no fork with a thread)
    bar.update(0)  # then no update comes: only the thread can print the next line
    out.wrote.clear()
    assert out.wrote.wait(timeout=60), "the heartbeat printed nothing while no update came"
    assert bar.n == 0 and bar.lines >= 1
    bar.close()
    assert not bar._thread.is_alive()  # joined: nothing can print after the final line
    assert out.getvalue().splitlines()[-1].startswith("featcache: stopped at 0/10 img in ")


def test_no_heartbeat_thread_at_interval_zero():
    bar = progress.ProgressLines(2, "featcache", interval=0, stream=io.StringIO())
    bar.update(1)
    bar.close()
    assert bar._thread is None


@pytest.mark.parametrize("value, seconds", [(None, 30.0), ("", 30.0), ("0", 0.0), ("2.5", 2.5)])
def test_the_interval_comes_from_the_environment(value, seconds, monkeypatch):
    if value is None:
        monkeypatch.delenv(progress.INTERVAL_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(progress.INTERVAL_VARIABLE, value)
    assert progress.progress_interval() == seconds


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_interval_is_refused_by_name(value, monkeypatch):
    from featcache.exceptions import InvalidOptionError

    monkeypatch.setenv(progress.INTERVAL_VARIABLE, value)
    with pytest.raises(InvalidOptionError,
                       match=rf"FEATCACHE_PROGRESS_INTERVAL='{value}' is not a number of seconds "
                             r">= 0.*Set it to e.g. 30 \(the default\), 0 for a line per batch"):
        progress.progress_interval()


def test_off_prints_no_lines_where_nobody_watches(monkeypatch):
    monkeypatch.setattr(sys, "stderr", TtyStream(False))
    monkeypatch.setenv(progress.INTERVAL_VARIABLE, "0")
    bar = progress.progress_bar(3, "featcache", False)
    bar.update(3)
    bar.close()
    assert not isinstance(bar, progress.ProgressLines) and sys.stderr.getvalue() == ""
