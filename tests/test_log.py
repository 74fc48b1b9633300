"""Tests for featcache.log: the `featcache` logger is quiet by default and says what happened."""

import logging
import subprocess
import pathlib
import sys
import warnings

import numpy as np
import pytest

from featcache import FrozenBackbone
from featcache.cache import FeatureCache, clear_memo, shards
from featcache.exceptions import CorruptShardWarning
from featcache.log import LOGGER_NAME, get_logger, progress_lines, status

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fake_streams import TtyStream  # noqa: E402

FP = "log-test"


def _messages(caplog, level=logging.DEBUG):
    return [r.getMessage() for r in caplog.records
            if r.name.startswith(LOGGER_NAME) and r.levelno >= level]


def _namespace(tmp_path):
    return FeatureCache(tmp_path / "cache").namespace(FP, {"dim": 4})


def test_the_featcache_logger_is_quiet_until_configured():
    assert get_logger("featcache.cache.writer").name == "featcache.cache.writer"
    assert get_logger("probe").name == "featcache.probe"
    root = logging.getLogger(LOGGER_NAME)
    assert any(isinstance(h, logging.NullHandler) for h in root.handlers)
    # A warning logged with no logging configured prints nothing (no "last resort" handler).
    code = ("import featcache.log, logging\n"
            "logging.getLogger('featcache.cache').warning('must stay silent')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == "", run.stderr


def test_a_shard_commit_is_logged(tmp_path, caplog):
    ns = _namespace(tmp_path)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        with ns.writer(commit_rows=10) as writer:
            writer.add([bytes([i]) * 16 for i in range(3)], np.ones((3, 4)), ["a", "b", "c"])
            writer.add_failure(b"\x09" * 16, "d", "broken")
    (message,) = [m for m in _messages(caplog, logging.INFO) if "committed shard" in m]
    assert "3 rows, 1 failures" in message and str(ns.shards_dir) in message


def test_a_damaged_shard_is_logged_once_and_still_warned(tmp_path, caplog):
    ns = _namespace(tmp_path)
    with ns.writer() as writer:
        writer.add([b"\x01" * 16], np.ones((1, 4)), ["a"])
    (path,) = ns.shards_dir.glob("*.h5")
    path.write_bytes(b"not an hdf5 file any more")
    clear_memo()
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME), \
            pytest.warns(CorruptShardWarning):
        assert not ns.lookup([b"\x01" * 16])[0]
        ns.key_index(force=True)
    logged = [m for m in _messages(caplog, logging.WARNING) if "skipped damaged shard" in m]
    assert len(logged) == 1 and str(path) in logged[0]


def test_a_read_retried_after_a_shard_vanished_is_logged(tmp_path, caplog):
    ns = _namespace(tmp_path)
    attempts = []

    def read(index):
        attempts.append(index)
        if len(attempts) == 1:
            raise shards.ShardGone(ns.shards_dir / "gone.h5", FileNotFoundError("gone"))
        return "rows"

    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        assert ns.retry(read) == "rows"
    assert any("gone.h5" in m and "attempt 1 of" in m for m in _messages(caplog))


def test_device_precision_plan_and_skipped_inputs_are_logged(xray, tmp_path, caplog):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = FrozenBackbone(image_size=32, cache=tmp_path / "c", progress=False,
                                  on_error="skip", device="cpu")
        backbone.fit_transform([str(p) for p in _pngs(xray[0][:3], tmp_path)] + [str(broken)])
    info = _messages(caplog, logging.INFO)
    assert any("computing 4 inputs on cpu in fp32, batch size 64" in m for m in info), info
    assert any("4 inputs: 4 to compute" in m for m in info), info
    assert any("committed shard" in m for m in info), info
    skipped = [m for m in _messages(caplog, logging.WARNING) if "skipped" in m]
    assert len(skipped) == 1 and "broken.png" in skipped[0]


def _pngs(images, folder):
    from PIL import Image

    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.mark.parametrize("tty, progress, printed", [
    (False, None, True), (False, True, True), (False, False, False), (True, None, False)])
def test_a_status_line_is_printed_only_in_a_batch_job_log(tty, progress, printed, monkeypatch,
                                                          caplog):
    monkeypatch.setattr(sys, "stderr", TtyStream(tty))
    logger = get_logger("featcache.status-test")
    status(logger, "loaded a network in 1.0 s", progress)
    assert sys.stderr.getvalue() == ("featcache: loaded a network in 1.0 s\n" if printed else "")
    assert progress_lines(progress) is printed
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):  # logging configured: logged once
        status(logger, "loaded again", progress)
    assert "loaded again" not in sys.stderr.getvalue()
    assert [r.getMessage() for r in caplog.records] == ["loaded again"]
