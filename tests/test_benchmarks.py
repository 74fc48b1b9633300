"""Smoke runs of the benchmark scripts with tiny sizes, so they keep working (slow / gpu)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script, *args):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_extract_throughput_prints_its_table():
    out = _run("extract_throughput.py", "--n", "64", "--naive-n", "8", "--resnet-n", "0")
    assert "| **featcache extract from PNG files** |" in out and "naive per-image loop" in out


@pytest.mark.slow
def test_gpu_throughput_runs_on_a_cpu():
    out = _run("gpu_throughput.py", "--device", "cpu", "--n", "16", "--batch-size", "8",
               "--workers", "1")
    assert "featcache extract from JPEG files" in out and "its bound" in out


@pytest.mark.gpu
def test_gpu_throughput_on_the_gpu():
    out = _run("gpu_throughput.py", "--n", "1024")
    print(out)
    assert "decode_jpeg on the device + model" in out
