"""The ``featcache`` command: a thin argparse front-end over the library.

One module per command group: :mod:`~featcache.cli.extract` (``extract``),
:mod:`~featcache.cli.maintenance` (``info``, ``verify``, ``compact``, ``export``),
:mod:`~featcache.cli.probe` (``probe``), :mod:`~featcache.cli.evaluate` (``evaluate``),
:mod:`~featcache.cli.models` (``models``),
:mod:`~featcache.cli.demo` (``demo``); :mod:`~featcache.cli.parsing` holds what they share. Each
subcommand is a pair of functions: ``add_<name>(subparsers)`` declares its arguments (with
:func:`~featcache.cli.parsing.add_command`, so ``--help`` shows the defaults) and sets ``func``
to ``_run_<name>(args) -> int``. Add a subcommand by writing such a pair in its group's module
and listing its ``add_`` function in :data:`SUBCOMMANDS`. Library modules are imported at the
top, and none of them imports torch, scikit-learn or dask at import time (they do so inside
the functions that need them), so ``featcache info`` and a fully cached ``featcache extract``
never import them; only ``featcache demo`` loads :mod:`featcache.demo` (scikit-learn) when it
runs. This package sits on top: it may import anything in featcache, and nothing in featcache
imports it. Every command that prints results has ``--json`` for a machine-readable form;
``--help`` shows each option's default.

Exit status: 0 on success, 1 on a featcache error (message on stderr, no traceback), 2 on
usage errors (argparse), 130 when interrupted, 141 when the reader of stdout went away (e.g.
``featcache models --all | head -2``; nothing is printed about it).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .. import __version__
from ..exceptions import FeatcacheError
from ..options import is_invalid_parameter
from .demo import add_demo
from .evaluate import add_evaluate
from .extract import add_extract
from .maintenance import add_compact, add_export, add_info, add_verify
from .models import add_models
from .parsing import as_option
from .probe import add_probe

__all__ = ["main", "build_parser", "SUBCOMMANDS"]


#: ``add_<name>`` functions, in the order ``featcache --help`` lists them.
SUBCOMMANDS = [add_extract, add_info, add_verify, add_compact, add_export, add_probe,
               add_evaluate, add_models, add_demo]


def build_parser() -> argparse.ArgumentParser:
    """The ``featcache`` argument parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="featcache",
        description="Run frozen pretrained image networks once; keep embeddings in an HDF5 cache.")
    parser.add_argument("--version", action="version", version=f"featcache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 featcache error, 2 usage)."""
    try:
        try:
            return _main(argv)
        finally:  # inside the try: a reader that went away shows up here, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout exited (`featcache info DIR | head -1`): stop quietly, like a
        # program killed by SIGPIPE (status 128 + 13). stdout is pointed at /dev/null so that
        # the interpreter's last flush at exit does not raise (and print) the error again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # stdout without a file descriptor
            pass
        return 141


def _main(argv) -> int:
    args = build_parser().parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"featcache: warning: {as_option(str(message), args)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return int(args.func(args) or 0)
        except (FeatcacheError, ValueError) as exc:
            if is_invalid_parameter(exc):  # the API's validation, in the command line's words
                print(f"featcache {args.command}: error: {as_option(str(exc))}",
                      file=sys.stderr)
                return 2
            if not isinstance(exc, FeatcacheError):
                raise
            print(f"featcache {args.command}: error: {as_option(str(exc), args)}",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"featcache {args.command}: interrupted", file=sys.stderr)
            return 130

