"""The progress bar: whether to show one, and which (a Jupyter widget or text).

``progress=None`` (the default everywhere) shows the bar on an interactive terminal and in a
Jupyter kernel, whose output is not a terminal but is read by a person. In a kernel the bar is
a widget when ipywidgets is installed (``pip install featcache[notebook]``), else a text bar
(never nothing, and never tqdm's "IProgress not found" warning). ``progress=True`` or
``False`` forces it on or off. Importing this module imports only the standard library.
"""

from __future__ import annotations

import sys

__all__ = ["in_jupyter_kernel", "show_progress", "progress_bar"]


def in_jupyter_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (a notebook, JupyterLab, VS Code, Colab).

    Answered from what is already imported: a kernel has loaded ``ipykernel`` and runs an
    IPython shell whose configuration names ``IPKernelApp``; a terminal IPython has not.
    """
    if "ipykernel" not in sys.modules:
        return False
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    try:
        shell = get_ipython() if get_ipython is not None else None
        return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
    except Exception:  # an unusual shell: no kernel we know of
        return False


def show_progress(progress: bool | None) -> bool:
    """``progress`` as given, or for None: an interactive terminal or a Jupyter kernel."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    try:
        tty = stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        tty = False
    return tty or in_jupyter_kernel()


def _widgets_available() -> bool:
    try:
        from tqdm.notebook import IProgress
    except ImportError:
        return False
    return IProgress is not None


def progress_bar(total: int, desc: str, progress: bool | None, unit: str = "img"):
    """A tqdm bar of ``total`` items (disabled, but usable, when it is not to be shown).

    In a Jupyter kernel it is a widget bar when ipywidgets is installed, else a text bar on
    stderr, and it stays in the cell output when done; elsewhere a text bar that disappears.
    """
    show = show_progress(progress)
    notebook = show and in_jupyter_kernel()
    if notebook and _widgets_available():
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(total=total, unit=unit, desc=desc, disable=not show, leave=notebook)
