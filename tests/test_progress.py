"""Tests for featcache.engine.progress: when the bar shows, and which bar (the notebook run is in
tests/test_notebooks.py, which executes a real kernel)."""

import io
import sys

import pytest

from featcache.engine import progress


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty, kernel, expected", [
    (True, False, True), (False, False, False), (False, True, True)])
def test_none_shows_on_a_terminal_or_in_a_kernel(tty, kernel, expected, monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: kernel)
    assert progress.show_progress(None) is expected
    assert progress.show_progress(True) is True and progress.show_progress(False) is False


def test_no_kernel_outside_jupyter():
    assert progress.in_jupyter_kernel() is False  # pytest is no kernel, even with IPython


@pytest.mark.parametrize("widgets", [True, False])
def test_a_kernel_gets_a_widget_bar_or_else_a_text_bar_that_stays(widgets, monkeypatch):
    from tqdm.std import tqdm as text_bar

    monkeypatch.setattr(sys, "stderr", _Stream(False))
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
    monkeypatch.setattr(sys, "stderr", _Stream(True))
    bar = progress.progress_bar(3, "featcache", False)
    bar.update(2)
    bar.close()
    assert bar.disable and sys.stderr.getvalue() == ""
