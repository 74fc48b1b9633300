"""Tests for featcache.cli.parsing: help with defaults, --json, API names -> option names."""

import argparse
import json

import pytest

from featcache.cli.parsing import (HelpFormatter, add_command, add_json_option, as_option,
                                   human_size, print_json)


def _probe_args(**extra):
    values = dict(cache_dir="c", namespace=None, dataset=None, val="auto", groups=None,
                  labels="from-cache", out=None, cv=5, seed=0, json=False, func=print)
    return argparse.Namespace(**{**values, **extra})


@pytest.mark.parametrize("message, expected", [
    ("pass val=0.2 (a random fraction) or val=None (cross-validation)",
     "pass --val 0.2 (a random fraction) or --val none (cross-validation)"),
    ("record a group for every row, or pass groups=None", "record a group for every row, or "
                                                         "pass --groups none"),
    ("pass groups=True to group", "pass --groups from-cache to group"),
    ("pass labels='labels.csv', or groups='from-cache'",
     "pass --labels labels.csv, or --groups from-cache"),
    ("dataset='c' tags no row", "--dataset c tags no row"),
    ("pass namespace=FINGERPRINT with one", "pass --namespace FINGERPRINT with one"),
    ("write it with out_dir='x' and random_state=3", "write it with --out x and --seed 3"),
    # calls, longer names, paths and parameters the command does not have are left alone
    ("FeatureCache.annotate(split=...) or X_val=F or n_val=20 or /data/val=3/a.png or Cs=[1]",
     "FeatureCache.annotate(split=...) or X_val=F or n_val=20 or /data/val=3/a.png or Cs=[1]"),
    # a message that already names the option is not translated twice
    ("pass retry_failed=True / --retry-failed", "pass retry_failed=True / --retry-failed"),
])
def test_api_words_become_option_names(message, expected):
    assert as_option(message, _probe_args(retry_failed=False)) == expected


def test_invalid_parameter_messages_name_the_option():
    message = "The 'batch_size' parameter of extract must be an int in the range [1, inf)."
    assert as_option(message) == "--batch-size must be an int in the range [1, inf)."
    assert as_option("The 'num_workers' parameter of extract must be") == "--workers must be"
    assert as_option("val=None stays Python without the parsed args") == \
        "val=None stays Python without the parsed args"


def test_help_shows_defaults_but_not_none_or_false(capsys):
    parser = argparse.ArgumentParser(prog="x")
    p = add_command(parser.add_subparsers(dest="command"), "cmd", help="a command")
    p.add_argument("--size", type=int, default=64, help="images per batch")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--layer", default=None, help="a layer")
    add_json_option(p)
    assert isinstance(p.formatter_class(prog="x"), HelpFormatter)
    text = " ".join(p.format_help().split())
    assert "images per batch (default: 64)" in text and "random seed (default: 0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "--json print the result as JSON on stdout" in text
    print_json({"a": 1, "path": __import__("pathlib").Path("/x")})
    assert json.loads(capsys.readouterr().out) == {"a": 1, "path": "/x"}


def test_human_size():
    assert [human_size(n) for n in (512, 1536, 3 * 2**30)] == ["512 B", "1.5 KiB", "3.0 GiB"]
