"""Tests for featcache.engine.interrupts: SIGTERM and Ctrl-C never cut a commit short.

The subprocess tests synchronise on files the job writes (tests/extract_driver.py), never on
the job still running after some time.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featcache import FeatureCache
from featcache.engine.interrupts import (deferred_signals, interrupted, raise_if_interrupted,
                                  take_interrupt)

DRIVER = [sys.executable, str(Path(__file__).with_name("extract_driver.py"))]
CLI = [sys.executable, "-m", "featcache.cli", "extract"]


def test_signals_are_deferred_to_safe_points_and_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    with deferred_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, not raised
        with deferred_signals():  # nested: the inner context keeps the signal
            assert interrupted() == signal.SIGTERM
        assert interrupted() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            raise_if_interrupted()
    assert signal.getsignal(signal.SIGTERM) is before
    assert interrupted() is None
    raise_if_interrupted()  # outside any deferral: nothing pending


def test_a_signal_nobody_handled_is_raised_when_the_work_is_done():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("finished")  # the work goes on to its end
    assert done == ["finished"]
    with deferred_signals():  # a caller that takes it decides itself
        os.kill(os.getpid(), signal.SIGINT)
        assert take_interrupt() == signal.SIGINT


def _job(tmp_path, mode, n_images=96, extra=()):
    images = np.random.default_rng(0).integers(0, 255, (n_images, 24, 24), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images)
    args = [str(tmp_path / "d.npz"), "--cache", str(tmp_path / "c"), "--image-size", "32",
            "--batch-size", "8", "--quiet", *extra]
    marker, go = tmp_path / "marker", tmp_path / "go"
    job = subprocess.Popen(DRIVER + [mode, str(marker), str(go), "--", *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return job, args, marker, go


def _signal_at_marker(job, marker, go, signum):
    while not marker.exists():
        assert job.poll() is None, job.communicate()
        time.sleep(0.005)
    job.send_signal(signum)
    go.write_text("go")
    return job.communicate(timeout=300)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_commit_never_loses_its_rows(tmp_path, signum):
    # one commit interval: the only commit is the last one, and the signal lands inside it
    job, args, marker, go = _job(tmp_path, "in-commit", extra=["--commit-seconds", "3600"])
    out, err = _signal_at_marker(job, marker, go, signum)
    store = FeatureCache(tmp_path / "c")
    assert store.verify().ok and store.info()[0]["rows"] == 96, err  # nothing lost
    assert job.returncode == 130 and "every row is committed" in err
    rerun = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "0 computed, 96 from cache" in rerun.stdout


def test_sigterm_stops_at_a_batch_boundary_commits_it_and_the_rerun_resumes(tmp_path):
    job, args, marker, go = _job(tmp_path, "after-batches:3", extra=["--commit-seconds", "3600"])
    out, err = _signal_at_marker(job, marker, go, signal.SIGTERM)
    assert job.returncode == 130, err
    assert "Run the same command again to resume" in err
    store = FeatureCache(tmp_path / "c")
    assert store.verify().ok
    # the signal arrived after batch 3; batch 4 was already being computed: both are kept
    assert store.info()[0]["rows"] == 4 * 8
    rerun = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "96 inputs: 64 computed, 32 from cache" in rerun.stdout


def test_sigterm_stops_a_device_decoded_job_with_workers_and_its_thread(tmp_path):
    # decoder="device": decode workers read the JPEGs, a thread decodes the next batches while
    # the network runs; the signal must still stop the job at a batch boundary, keep what it
    # computed and leave no thread or worker behind (the process exits).
    from PIL import Image

    folder = tmp_path / "jpegs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(96):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}.jpg", quality=90)
    args = [str(folder), "--cache", str(tmp_path / "c"), "--image-size", "32",
            "--batch-size", "8", "--quiet", "--decoder", "device", "--workers", "2",
            "--commit-seconds", "3600"]
    marker, go = tmp_path / "marker", tmp_path / "go"
    job = subprocess.Popen(DRIVER + ["after-batches:3", str(marker), str(go), "--", *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _signal_at_marker(job, marker, go, signal.SIGTERM)
    assert job.returncode == 130, err
    store = FeatureCache(tmp_path / "c")
    assert store.verify().ok
    assert store.info()[0]["rows"] == 4 * 8  # batch 3, and batch 4 already being computed
    rerun = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "96 inputs: 64 computed, 32 from cache" in rerun.stdout
