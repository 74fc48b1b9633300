"""Tests for featcache.extract and the `featcache extract` command: resumable, shardable jobs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featcache import FeatureCache, FrozenBackbone
from featcache.cli import main
from featcache.exceptions import InputError
from featcache.extract import extract
from featcache.inputs import content_key
from featcache.sources import collect_inputs

CLI = [sys.executable, "-m", "featcache.cli"]


def test_several_layers_in_one_pass_land_where_frozen_backbone_reads(xray, tmp_path, forbid_network):
    images, _ = xray
    summary = extract(images[:8], tmp_path / "c", layers=[None, "blocks.5"], image_size=32,
                      progress=False)
    assert summary.computed == 8 and set(summary.fingerprints) == {"default", "blocks.5"}
    forbid_network()
    for layer, dim in ((None, 1280), ("blocks.5", 192)):
        backbone = FrozenBackbone(layer=layer, image_size=32, cache=tmp_path / "c").fit(images[:8])
        assert backbone.transform(images[:8]).shape == (8, dim)
        assert backbone.fingerprint_ == summary.fingerprints[layer or "default"]


def test_labels_splits_and_sources_are_stored_with_the_rows(tmp_path):
    np.savez(tmp_path / "d.npz", train_images=np.random.default_rng(0).integers(0, 255, (4, 16, 16), dtype=np.uint8),
             train_labels=np.array([[0], [1], [0], [1]]),
             val_images=np.random.default_rng(1).integers(0, 255, (2, 16, 16), dtype=np.uint8),
             val_labels=np.array([[1], [0]]))
    inputs = collect_inputs([tmp_path / "d.npz"])
    extract(inputs, tmp_path / "c", image_size=32, progress=False)
    notes = FeatureCache(tmp_path / "c").annotations()
    key = content_key(inputs.items[4], 4)
    assert notes[key] == {"label": "1", "group": None, "split": "val", "source": "d.npz:val_images[0]"}
    assert len(notes) == 6


def test_skip_records_failures_and_a_rerun_computes_nothing(xray_pngs, tmp_path):
    paths, _ = xray_pngs
    bad = tmp_path / "bad.png"
    bad.write_bytes(os.urandom(100))
    X = [*paths[:3], str(bad), str(tmp_path / "missing.png")]
    first = extract(X, tmp_path / "c", image_size=32, on_error="skip", progress=False)
    assert (first.computed, first.failed) == (3, 2)
    assert any("missing.png" in r for r in first.failures.values())
    again = extract(X, tmp_path / "c", image_size=32, on_error="skip", progress=False)
    assert (again.computed, again.cached, again.failed) == (0, 3, 2)
    with pytest.raises(InputError, match=r"bad\.png.*recorded by an earlier run"):
        extract(X[:4], tmp_path / "c", image_size=32, progress=False)


def test_three_concurrent_shard_jobs_fill_one_cache(xray_pngs, tmp_path):
    paths, _ = xray_pngs
    folder, cache = str(Path(paths[0]).parent), str(tmp_path / "c")
    jobs = [subprocess.Popen(CLI + ["extract", folder, "--cache", cache, "--image-size", "32",
                                    "--quiet", "--shard", f"{i}/3"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(3)]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], outputs
    computed = [int(out.split(" computed")[0].split(": ")[-1]) for out, _ in outputs]
    assert sum(computed) == 60 and min(computed) > 0
    (info,) = FeatureCache(cache).info()
    assert info["rows"] == 60
    assert FeatureCache(cache).verify().ok


def test_sigterm_commits_what_is_done_and_the_rerun_resumes(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (240, 24, 24), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images)
    cache = tmp_path / "c"
    command = CLI + ["extract", str(tmp_path / "d.npz"), "--cache", str(cache), "--image-size",
                     "64", "--batch-size", "8", "--commit-seconds", "0.2", "--quiet"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache.glob("*/shards/*.h5")):
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err
    assert "Run the same command again to resume" in err
    store = FeatureCache(cache)
    assert store.verify().ok
    committed = store.info()[0]["rows"]
    assert 0 < committed < 240
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"240 inputs: {240 - committed} computed, {committed} from cache" in rerun.stdout


def test_memory_is_bounded_by_the_batch_not_the_input_count(tmp_path):
    script = """
import resource, sys, numpy as np
from featcache.extract import extract
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rng = np.random.default_rng(0)
extract(rng.integers(0, 255, (256, 8, 8), dtype=np.uint8), sys.argv[1], image_size=8,
        batch_size=128, progress=False)
before = rss_mb()
extract(rng.integers(0, 255, (20000, 8, 8), dtype=np.uint8), sys.argv[1], image_size=8,
        batch_size=128, progress=False)
print(rss_mb() - before)
"""
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) < 300, f"RSS grew by {out.stdout.split()[-1]} MB"


def _hostile_corpus(folder: Path, monkeypatch):
    """Files a batch job meets in the wild: name -> whether it must become a feature row."""
    import io

    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    rgb = PILImage.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    expected = {}

    def save(name, image, ok=True, **kw):
        image.save(folder / name, **kw)
        expected[name] = ok

    (folder / "zero.png").write_bytes(b"")
    expected["zero.png"] = False
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected["truncated.png"] = False
    (folder / "random.png").write_bytes(rng.integers(0, 255, 500, dtype=np.uint8).tobytes())
    expected["random.png"] = False
    (folder / "text.jpg").write_text("hello")
    expected["text.jpg"] = False
    rgb.save(folder / "jpeg_named.png", format="JPEG")  # wrong extension, readable content
    expected["jpeg_named.png"] = True
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    save("palette_transparent.png", palette)
    save("rgba.png", rgb.convert("RGBA"))
    save("cmyk.jpg", rgb.convert("CMYK"))
    save("gray16.png", PILImage.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16)))
    for orientation in range(1, 9):
        exif = PILImage.Exif()
        exif[0x0112] = orientation
        save(f"exif_{orientation}.jpg", rgb, exif=exif.tobytes())
    PILImage.new("1", (12000, 12000)).save(folder / "bomb.png")
    expected["bomb.png"] = False
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 30_000_000)  # 144 Mpx > 2x the limit
    return expected


def test_hostile_inputs_each_get_a_recorded_reason_and_never_a_row(tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    folder.mkdir()
    expected = _hostile_corpus(folder, monkeypatch)
    inputs = collect_inputs([folder])
    summary = extract(inputs, tmp_path / "c", image_size=32, on_error="skip", progress=False)
    failed = {Path(inputs.sources[pos]).name: reason for pos, reason in summary.failures.items()}
    assert set(failed) == {name for name, ok in expected.items() if not ok}
    assert "decompression" in failed["bomb.png"].lower() and "empty" in failed["zero.png"]
    (info,) = FeatureCache(tmp_path / "c").info()
    assert info["rows"] == sum(expected.values())
    assert info["failures"] == len(failed)
    backbone = FrozenBackbone(image_size=32, cache=tmp_path / "c", on_error="skip").fit(inputs.items)
    out = backbone.transform(inputs.items)
    names = [Path(s).name for s in inputs.sources]
    for name, row in zip(names, out):
        assert np.isfinite(row).all() == expected[name], name
    assert backbone.transform_stats_["computed"] == 0, "recorded failures are not retried"


def test_dicom_window_changes_the_fingerprint_and_the_features(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    ct = pydicom_data.get_testdata_file("CT_small.dcm", download=False)
    own = FrozenBackbone(image_size=32, cache=tmp_path / "c").fit([ct])
    soft = FrozenBackbone(image_size=32, cache=tmp_path / "c", window=(40, 400)).fit([ct])
    assert own.fingerprint_ != soft.fingerprint_
    assert not np.allclose(own.transform([ct]), soft.transform([ct]))
    assert soft.config_["decode"]["window"] == [40.0, 400.0]
    assert main(["extract", ct, "--cache", str(tmp_path / "c"), "--image-size", "32",
                 "--window", "40,400", "--quiet"]) == 0
    with pytest.raises(Exception, match="window"):
        FrozenBackbone(window=(40, -1)).fit([ct])
