"""``featcache demo``: the bundled PneumoniaMNIST demo (:mod:`featcache.demo`)."""

from __future__ import annotations

import argparse

__all__ = ["add_demo"]


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the demo on the bundled PneumoniaMNIST data",
                       add_help=False)
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    # Lazy: featcache.demo imports scikit-learn (FrozenBackbone), which the other commands,
    # a cached `featcache extract` first, never load.
    from ..demo import main as demo_main

    return demo_main(args.demo_args)
