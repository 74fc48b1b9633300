"""Tests for featcache.options: one validation of the run options, resolved once."""

import pickle
import subprocess
import sys

import pytest
from featcache.exceptions import InvalidOptionError

from featcache.engine.run_options import RunOptions, resolve_run_options
from featcache.options import POOLINGS, cuda_possible, validate_run_options, validate_window


@pytest.mark.parametrize("params, words", [
    ({"batch_size": 0}, "'batch_size' parameter of f must be an int in the range [1, inf)"),
    ({"image_size": 4}, "'image_size' parameter of f must be an int in the range [8, inf)"),
    ({"num_workers": -1}, "'num_workers'"),
    ({"pooling": "mean"}, "'pooling'"),
    ({"device": "gpu"}, "'device' parameter of f must be 'auto', 'cpu'"),
    ({"window": (float("nan"), 400)}, "'window' parameter of f must be None or (center, width)"),
    ({"window": (40, 0)}, "positive width"),
    ({"commit_seconds": float("nan")}, "'commit_seconds'"),
    ({"verify_inputs": "mtime"}, "'verify_inputs' parameter of f must be a str among ['hash', "
                                 "'stat']"),
])
def test_bad_options_are_named(params, words):
    with pytest.raises(InvalidOptionError) as info:
        validate_run_options(params, "f")
    assert words in str(info.value)


def test_good_options_and_unknown_names_pass():
    validate_run_options({"batch_size": 7, "device": "cuda:1", "window": [40, 400],
                          "pooling": POOLINGS[0], "something_else": object()}, "f")
    assert validate_window([40, 400]) == (40.0, 400.0) and validate_window(None) is None


def test_resolved_once_on_a_cpu_without_importing_torch():
    code = ("import sys; from featcache.engine.run_options import resolve_run_options as r; "
            "o = r(device='auto', precision='auto', window=(1, 2)); "
            "print(o.device, o.precision, o.window, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"CUDA_VISIBLE_DEVICES": "-1", "PATH": ""})
    assert out.stdout.split() == ["cpu", "fp32", "(1.0,", "2.0)", "False"], out.stderr


def test_run_options_are_picklable_and_carry_what_the_engine_needs(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert cuda_possible() in (False, True)  # with torch imported, torch answers
    options = resolve_run_options(device="cpu", precision="bf16", batch_size=3, on_error="skip")
    assert options == pickle.loads(pickle.dumps(options))
    kwargs = options.engine_kwargs()
    assert (kwargs["device"], kwargs["precision"], kwargs["batch_size"]) == ("cpu", "bf16", 3)
    assert isinstance(options, RunOptions) and options.on_error == "skip"


def test_verify_inputs_is_a_run_option_defaulting_to_stat():
    assert resolve_run_options(device="cpu").verify_inputs == "stat"
    assert resolve_run_options(device="cpu", verify_inputs="hash").verify_inputs == "hash"


# ---------------------------------------------------------------- one table, every caller

def _callers():
    from featcache import FrozenBackbone, PartiallyFrozenClassifier, PartiallyFrozenRegressor
    from featcache.jobs.dask_client import extract_on_cluster
    from featcache.jobs.extraction import extract

    return [FrozenBackbone, PartiallyFrozenClassifier, PartiallyFrozenRegressor, extract,
            extract_on_cluster]


def test_every_signature_takes_the_options_defaults():
    """The estimators, extract and the Dask client spell their parameters (scikit-learn's
    get_params reads them there), but each option's default is the one in OPTIONS."""
    import inspect

    from featcache.options import OPTIONS

    for caller in _callers():
        params = inspect.signature(caller).parameters
        for name, param in params.items():
            if name in OPTIONS:
                assert param.default == OPTIONS[name].default, (caller.__name__, name)
    from featcache import FrozenBackbone

    assert set(OPTIONS) - {"commit_rows", "commit_seconds"} <= \
        set(inspect.signature(FrozenBackbone).parameters)


def test_documented_choices_and_defaults_are_the_options():
    """Every ``name : {...}, default=...`` line of a docstring lists OPTIONS' choices and default."""
    import re

    from featcache.options import OPTIONS

    seen = 0
    for caller in _callers():
        for name, choices, default in re.findall(r"^\s+(\w+) : \{([^}]*)\}, default=(\S+)$",
                                                 caller.__doc__ or "", re.M):
            if name in OPTIONS:
                seen += 1
                assert sorted(re.findall(r'"(\w+)"', choices)) == sorted(OPTIONS[name].choices)
                assert default.strip('"') == OPTIONS[name].default, (caller.__name__, name)
    assert seen >= 4


def test_estimators_constraints_come_from_the_options():
    from featcache import FrozenBackbone, PartiallyFrozenClassifier, PartiallyFrozenRegressor
    from featcache.options import OPTIONS, run_constraints

    for cls in (FrozenBackbone, PartiallyFrozenClassifier, PartiallyFrozenRegressor):
        for name, constraint in cls._parameter_constraints.items():
            if name in OPTIONS:
                assert constraint == run_constraints()[name], (cls.__name__, name)


def test_command_line_choices_and_defaults_come_from_the_options():
    import argparse

    from featcache.cli.extract import add_extract
    from featcache.options import OPTIONS

    parser = argparse.ArgumentParser()
    add_extract(parser.add_subparsers())
    extract = parser._subparsers._group_actions[0].choices["extract"]
    actions = {a.dest: a for a in extract._actions}
    for name, dest in [("pooling", "pooling"), ("precision", "precision"),
                       ("on_error", "on_error"), ("batch_size", "batch_size"),
                       ("num_workers", "workers"), ("image_size", "image_size"),
                       ("commit_seconds", "commit_seconds"), ("model", "model")]:
        action = actions[dest]
        assert action.default == OPTIONS[name].default
        assert tuple(action.choices or ()) == OPTIONS[name].choices
        assert action.help == OPTIONS[name].help


def test_run_options_carry_the_decode_policy():
    from featcache.inputs import DecodePolicy
    from featcache.options import BACKBONE_OPTIONS, RUN_OPTIONS

    options = resolve_run_options(device="cpu", window=[40, 400])
    assert options.decode == DecodePolicy(window=(40.0, 400.0)) and options.window == (40.0, 400.0)
    assert resolve_run_options(device="cpu").decode == DecodePolicy() == RunOptions().decode
    assert "window" in RUN_OPTIONS and "pooling" in BACKBONE_OPTIONS
    assert not set(RUN_OPTIONS) & set(BACKBONE_OPTIONS)


def test_layers_are_each_checked_as_a_layer():
    validate_run_options({"layers": [None, "blocks.4"]}, "f")
    with pytest.raises(InvalidOptionError, match="'layer' parameter of f must be a str or None"):
        validate_run_options({"layers": [None, 3]}, "f")
