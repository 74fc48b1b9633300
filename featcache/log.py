"""featcache's diagnostics: the ``featcache`` logger, quiet until a user turns it on.

Every module logs to a child of the ``featcache`` logger (``featcache.cache``,
``featcache.engine.batches``, ...), which has a :class:`logging.NullHandler` and no level of its own,
so nothing is printed unless the application configures logging. What is logged: at INFO, the
device, precision, batch size and workers a run uses, every shard committed, the plan of each
unit of work (inputs, cached, to compute); at WARNING, damaged shards skipped and inputs that
failed under ``on_error="skip"``; at DEBUG, reads retried while shards changed (a concurrent
compact) and configurations remembered or forgotten. Warnings (:mod:`warnings`) stay for what a
user must act on. To see the diagnostics::

    import logging
    logging.basicConfig()                                  # or any handler, e.g. to a file
    logging.getLogger("featcache").setLevel(logging.INFO)  # DEBUG for more

Batch jobs (SLURM, ``nohup``: stderr is no terminal) are never silent for long, logging
configured or not: unless ``progress=False``, a long extraction or fit prints a plain progress
line to stderr every ``FEATCACHE_PROGRESS_INTERVAL`` seconds (30 by default; see
:mod:`featcache.engine.progress`), and loading a network prints one line (model, weights,
device, seconds) through :func:`status`. On a terminal or in a notebook the progress bar
shows instead, and the loading line is only logged (INFO, ``featcache.backbones.loading``).

Standard library only: every module, ``featcache.cache`` included, may import it.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER_NAME", "get_logger", "in_jupyter_kernel", "stderr_is_terminal",
           "progress_lines", "status"]

#: The name of featcache's root logger.
LOGGER_NAME = "featcache"

logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The logger of a featcache module: ``get_logger(__name__)`` -> ``featcache.<module>``."""
    if name != LOGGER_NAME and not name.startswith(LOGGER_NAME + "."):
        name = f"{LOGGER_NAME}.{name}"
    return logging.getLogger(name)


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


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` (as it is now) is an interactive terminal."""
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def progress_lines(progress: "bool | None") -> bool:
    """Whether progress goes to stderr as plain lines: ``progress`` is not False and nobody
    watches a bar (stderr is no terminal and this is no Jupyter kernel: a batch job's log)."""
    return progress is not False and not stderr_is_terminal() and not in_jupyter_kernel()


def status(logger: logging.Logger, message: str, progress: "bool | None" = None) -> None:
    """Log ``message`` at INFO on ``logger``; where :func:`progress_lines` holds, also print
    ``featcache: message`` on stderr, unless the logger is enabled at INFO (then the
    application's logging shows it, once)."""
    logger.info(message)
    if progress_lines(progress) and not logger.isEnabledFor(logging.INFO):
        stream = sys.stderr
        if stream is not None:
            print(f"{LOGGER_NAME}: {message}", file=stream, flush=True)
