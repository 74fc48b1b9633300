"""What every ``featcache`` subcommand shares: help with defaults, JSON output, and the API's
parameter names turned into the command line's option names.

:mod:`featcache.cli` declares and runs the subcommands; this module holds the pieces they have
in common, so that each fact (how a default is shown, how ``--json`` prints, how
``val=None`` reads on the command line, how a run option is declared, how a command names a
namespace) has one home. Standard library, :mod:`featcache.options` and
:mod:`featcache.cache.selection` (both cheap to import) only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

from ..cache.selection import select_namespace
from ..options import OPTIONS

__all__ = ["HelpFormatter", "add_command", "add_json_option", "add_option", "print_json",
           "as_option", "add_namespace_options", "chosen_namespace",
           "human_size", "OPTION_NAMES"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with ``(default: X)`` after each option, except where there is no default."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or \
                action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def add_command(sub, name, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser (of ``add_subparsers()`` ``sub``) whose ``--help`` shows defaults."""
    return sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def add_json_option(parser) -> None:
    """Declare ``--json``: print the command's result as JSON on stdout."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def add_option(parser, name, **overrides) -> None:
    """Declare the run option ``name`` of :data:`featcache.options.OPTIONS` on ``parser``.

    Its flag (:func:`as_option`'s name for it), type, choices, default and help come from
    the options' one table, so the command line offers what the API accepts; ``overrides``
    (a ``metavar``, a command's own ``help``, ``action="store_true"``) replace any of them.
    """
    option = OPTIONS[name]
    kwargs = {"default": option.default, "help": option.help}
    if option.choices:
        kwargs["choices"] = option.choices
    if option.kind in ("int", "real"):
        kwargs["type"] = int if option.kind == "int" else float
    kwargs.update(overrides)
    parser.add_argument(_option(name), **kwargs)


def add_namespace_options(parser) -> None:
    """Declare how a command on a cache DIR chooses its namespace: by what it is (``--model``,
    ``--layer``, ``--image-size``) or by fingerprint (``--namespace``); see
    :func:`chosen_namespace`."""
    group = parser.add_argument_group(
        "choosing the namespace",
        "A cache holds one namespace per configuration (`featcache info DIR` lists them). "
        "Name it by what it is; a fingerprint is only needed when those leave several.")
    group.add_argument("--model", metavar="NAME", default=None,
                       help="the backbone (e.g. efficientnet_lite0, resnet18)")
    group.add_argument("--layer", metavar="NAME", default=None,
                       help="the layer (e.g. blocks.4; 'default' for the pooled output)")
    group.add_argument("--image-size", type=int, metavar="PIXELS", default=None,
                       help="the input side length the features were extracted at")
    group.add_argument("--namespace", metavar="FINGERPRINT", default=None,
                       help="the fingerprint `featcache info` lists, or a prefix of it "
                            "that names one namespace (the errors show the shortest)")


def chosen_namespace(cache, args) -> str:
    """The fingerprint of the namespace of ``cache`` the options of
    :func:`add_namespace_options` choose (:func:`featcache.cache.selection.select_namespace`:
    none, or several, matching is an error that lists the candidates)."""
    return select_namespace(cache, args.namespace, model=args.model, layer=args.layer,
                            image_size=args.image_size)


def print_json(obj) -> None:
    """Print ``obj`` as indented JSON (anything not JSON-native as its ``str``)."""
    print(json.dumps(obj, indent=2, default=str))


def print_report(report, args) -> int:
    """Print a probe or evaluation report (``--json`` or its table) and what ``--out`` got."""
    if args.json:
        print_json({**report.to_dict(), "out": args.out})
        return 0
    print(report.to_markdown())
    if args.out is not None:
        print(f"\nwrote {pathlib.Path(args.out) / 'report.json'}, predictions.csv, "
              f"{', '.join(report.plot_files())}")
    return 0


def human_size(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"`` (bytes below 1 KiB as ``"512 B"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


#: API parameter -> command-line option, where the names differ.
OPTION_NAMES = {"num_workers": "--workers", "layers": "--layer", "layer": "--layer",
                "out_dir": "--out", "random_state": "--seed"}
#: A Python value after ``name=`` in a message: None, True, a quoted string, a word or number.
_VALUE = r"""(None|True|False|'[^']*'|"[^"]*"|[\w.+-]+)?"""
#: ``name=`` right after one of these is part of a path, a call or a longer name: left alone.
_NOT_AFTER = r"""(?<![\w.(\[,/\\:='"<-])"""


def _option(name: str) -> str:
    return OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def as_option(message: str, args=None) -> str:
    """The API's words in the command line's: ``--batch-size must be``, ``--val none``.

    ``The 'batch_size' parameter of extract must be`` -> ``--batch-size must be``. With the
    parsed ``args`` of a command, each ``name=value`` that names one of its options
    (``val=0.2``, ``groups=None``, ``dataset='a'``, ``namespace=FINGERPRINT``) becomes
    ``--val 0.2``, ``--groups none``, ``--dataset a``, ``--namespace FINGERPRINT``, unless the
    message already names that option; ``f(name=...)`` (a call) and paths are left as they are.
    """
    message = re.sub(r"The '(\w+)' parameter of \w+", lambda m: _option(m.group(1)), message)
    if args is None:
        return message
    names = {n for n in vars(args) if n not in ("func", "command")} | set(OPTION_NAMES)
    names = sorted((n for n in names if _option(n) not in message), key=len, reverse=True)
    if not names:
        return message

    def option(match):
        name, value = match.group(1), match.group(2)
        if value is None or (value == "True" and isinstance(getattr(args, name, None), bool)):
            return _option(name)
        if value == "True" and name == "groups":
            return "--groups from-cache"
        return f"{_option(name)} {'none' if value == 'None' else value.strip(chr(39) + chr(34))}"

    pattern = _NOT_AFTER + "(" + "|".join(map(re.escape, names)) + ")=" + _VALUE
    return re.sub(pattern, option, message)
