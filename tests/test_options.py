"""Tests for featcache.options: one validation of the run options, resolved once."""

import pickle
import subprocess
import sys

import pytest
from featcache.exceptions import InvalidOptionError

from featcache.options import (POOLINGS, RunOptions, cuda_possible, resolve_run_options,
                               validate_run_options, validate_window)


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
    code = ("import sys; from featcache.options import resolve_run_options as r; "
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
