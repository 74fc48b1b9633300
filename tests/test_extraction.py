"""Tests for featcache.jobs.extraction and the `featcache extract` command: resumable, shardable jobs."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featcache import FeatureCache, FrozenBackbone
from featcache.cli import main
from featcache.exceptions import InputError
from featcache.jobs.extraction import extract
from featcache.inputs import content_key
from featcache.inputs.decoding import DEVICE_JPEG_RULE
from featcache.inputs.sources import collect_inputs

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
    assert notes[key] == {"label": "1", "group": None, "split": "val", "source": "d.npz:val_images[0]",
                          "dataset": None}
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
    with pytest.raises(InputError, match=r"bad\.png.*recorded in the cache by an earlier run"):
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


def test_memory_is_bounded_by_the_batch_not_the_input_count(tmp_path):
    script = """
import resource, sys, numpy as np
from featcache.jobs.extraction import extract
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


def test_decode_scale_is_an_option_with_its_own_namespace(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    path = tmp_path / "large.png"
    small.resize((320, 256), Image.BICUBIC).save(path)  # 256 >= 4 x 32: reduced 4x
    reduced = FrozenBackbone(image_size=32, cache=tmp_path / "c").fit([path])
    full = FrozenBackbone(image_size=32, cache=tmp_path / "c", decode_scale="full").fit([path])
    assert reduced.fingerprint_ != full.fingerprint_
    assert "decode_scale" in reduced.config_["decode"]
    assert "decode_scale" not in full.config_["decode"]  # the namespace of earlier versions
    a, b = reduced.transform([path])[0], full.transform([path])[0]
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cosine > 0.99 and not np.array_equal(a, b), cosine  # 32 px: see test_decoding
    assert main(["extract", str(path), "--cache", str(tmp_path / "c"), "--image-size", "32",
                 "--decode-scale", "full", "--quiet"]) == 0
    with pytest.raises(Exception, match="decode_scale"):
        FrozenBackbone(decode_scale="fast").fit([path])


def test_the_device_decoder_is_an_option_with_its_own_namespace(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    jpeg, png = tmp_path / "photo.jpg", tmp_path / "scan.png"
    small.resize((96, 64), Image.BICUBIC).save(jpeg, quality=90)
    small.resize((64, 80), Image.BICUBIC).save(png)
    cache = tmp_path / "c"
    pillow = FrozenBackbone(image_size=32, cache=cache, device="cpu").fit([jpeg, png])
    device = FrozenBackbone(image_size=32, cache=cache, device="cpu", decoder="device")
    device.fit([jpeg, png])
    assert device.fingerprint_ != pillow.fingerprint_ and "decoder" not in pillow.config_["decode"]
    assert device.config_["decode"]["decoder"] == DEVICE_JPEG_RULE  # the namespace says how
    # On a CPU, decode_jpeg is libjpeg-turbo, as Pillow (and 96x64 is not reduced at 32 px).
    np.testing.assert_array_equal(device.transform([jpeg, png]), pillow.transform([jpeg, png]))
    assert main(["extract", str(jpeg), str(png), "--cache", str(cache), "--image-size", "32",
                 "--device", "cpu", "--decoder", "device", "--quiet"]) == 0
    assert sorted(FeatureCache(cache).namespaces()) == sorted(
        [pillow.fingerprint_, device.fingerprint_])  # the CLI run found the device's rows
    with pytest.raises(Exception, match="decoder"):
        FrozenBackbone(decoder="nvjpeg").fit([jpeg])


def _replace_after_planning(monkeypatch, action):
    """Run ``action`` right after the cache misses are planned (keys computed, nothing decoded)."""
    import featcache.engine.unit_of_work as extract_module

    real = extract_module.plan

    def plan_then_act(*args, **kwargs):
        planned = real(*args, **kwargs)
        action()
        return planned

    monkeypatch.setattr(extract_module, "plan", plan_then_act)


def test_a_file_replaced_between_keying_and_decoding_never_gets_a_row(xray_pngs, tmp_path,
                                                                       monkeypatch):
    from PIL import Image

    from featcache.exceptions import InputChangedError

    paths, _ = xray_pngs
    X = paths[:6]
    old_key, replacement = content_key(Path(X[0]), 0), np.full((28, 28), 200, np.uint8)
    _replace_after_planning(monkeypatch, lambda: Image.fromarray(replacement).save(X[0]))
    with pytest.raises(InputChangedError, match=r"img_000\.png.*changed while featcache"):
        extract(X, tmp_path / "c", image_size=32, progress=False, batch_size=2)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(X[0])  # another content, keyed anew
    summary = extract(X, tmp_path / "c", image_size=32, progress=False, on_error="skip")
    assert summary.failed == 1 and "changed while featcache" in summary.failures[0]
    (fp,) = summary.fingerprints.values()
    ns = FeatureCache(tmp_path / "c").namespace(fp)
    new_key = content_key(Path(X[0]), 0)
    assert not ns.lookup([old_key, new_key]).any()  # no row under either key
    assert ns.failures([old_key, new_key]) == {}  # and no recorded failure: it is retried
    monkeypatch.undo()
    rerun = extract(X, tmp_path / "c", image_size=32, progress=False)
    assert (rerun.computed, rerun.failed) == (1, 0)
    fresh = FrozenBackbone(image_size=32, cache=False).fit_transform([X[0]])
    np.testing.assert_allclose(ns.read([new_key]), fresh, rtol=1e-5, atol=1e-6)


def test_an_array_mutated_after_keying_gives_a_nan_row_not_a_wrong_one(xray, monkeypatch):
    images, _ = xray
    X = images[:4].copy()
    _replace_after_planning(monkeypatch, lambda: X[1].fill(255))
    backbone = FrozenBackbone(image_size=32, cache=False, on_error="skip").fit(X)
    out = backbone.transform(X)
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2, 3]]).all()
    assert "changed while featcache" in backbone.failures_[1]


def test_oversized_and_malformed_inputs_fail_alone_and_the_batch_is_committed(tmp_path, xray):
    from PIL import Image

    pydicom = pytest.importorskip("pydicom")
    images, _ = xray
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(images[i]).save(folder / f"ok_{i}.png")
    Image.fromarray(np.zeros((1, 100_000), np.uint8)).save(folder / "line.png")
    bad_vr = Path(pydicom.data.get_testdata_file("badVR.dcm", download=False))
    (folder / "badVR.dcm").write_bytes(bad_vr.read_bytes())
    summary = extract(collect_inputs([folder]), tmp_path / "c", image_size=224, batch_size=64,
                      on_error="skip", progress=False)
    assert (summary.computed, summary.failed) == (4, 2)
    reasons = " ".join(summary.failures.values())
    assert "over the limit" in reasons and "malformed NumberOfFrames" in reasons
    (info,) = FeatureCache(tmp_path / "c").info()
    assert (info["rows"], info["failures"]) == (4, 2)


def test_extract_validates_its_options_like_frozen_backbone(tmp_path, xray):
    from sklearn.utils._param_validation import InvalidParameterError

    from featcache.exceptions import InvalidOptionError

    images, _ = xray
    for bad in (dict(image_size=4), dict(batch_size=0), dict(num_workers=-1),
                dict(window=(float("nan"), 400)), dict(device="gpu"), dict(pooling="mean")):
        with pytest.raises(InvalidOptionError):
            extract(images[:2], tmp_path / "c", progress=False, **bad)
        with pytest.raises(InvalidParameterError):
            FrozenBackbone(**bad).fit(images[:2])


def test_extract_without_a_cache_is_refused_before_any_work(xray, forbid_network):
    from featcache.exceptions import InvalidOptionError

    images, _ = xray
    forbid_network()
    for cache in (False, None):
        with pytest.raises(InvalidOptionError, match=r"extract\(cache=.*needs one.*cache=False"):
            extract(images[:2], cache, progress=False)


def test_file_names_that_are_not_utf8_are_embedded_committed_and_reported(xray, tmp_path):
    from PIL import Image

    images, _ = xray
    folder = tmp_path / "in"
    folder.mkdir()
    raw = [b"caf\xe9.png", b"plain.png", b"\xff\xfe.png"]
    for i, name in enumerate(raw):
        Image.fromarray(images[i]).save(os.path.join(os.fsencode(folder), name))
    with open(os.path.join(os.fsencode(folder), b"bad\xe9.png"), "wb") as f:
        f.write(b"not an image")
    cache = tmp_path / "c"
    run = subprocess.run(CLI + ["extract", str(folder), "--cache", str(cache), "--image-size",
                                "32", "--quiet", "--on-error", "skip"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "4 inputs: 3 computed, 0 from cache, 1 failed" in run.stdout
    assert "Traceback" not in run.stderr and "bad" in run.stderr
    (info,) = FeatureCache(cache).info()
    assert (info["rows"], info["failures"]) == (3, 1)
    paths = [os.path.join(os.fsdecode(os.fsencode(folder)), os.fsdecode(n)) for n in raw]
    backbone = FrozenBackbone(image_size=32, cache=cache)
    out = backbone.fit_transform(paths)
    assert np.isfinite(out).all() and backbone.transform_stats_["computed"] == 0
    assert FeatureCache(cache).verify().ok
    assert main(["export", str(cache), str(tmp_path / "out.h5")]) == 0


def test_a_fully_cached_rerun_never_loads_the_network(xray_pngs, tmp_path):
    paths, _ = xray_pngs
    folder, cache = str(Path(paths[0]).parent), str(tmp_path / "c")
    args = ["extract", folder, "--cache", cache, "--image-size", "32", "--quiet"]
    assert main(args) == 0
    code = ("import sys; from featcache.cli import main; "
            f"code = main({args!r}); print(code, 'torch' in sys.modules, 'sklearn' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert "60 inputs: 0 computed, 60 from cache" in run.stdout, run.stderr
    # neither torch nor scikit-learn (whose import alone takes seconds) is imported
    assert run.stdout.split()[-3:] == ["0", "False", "False"], run.stdout + run.stderr


def test_a_rerun_over_the_same_inputs_records_no_new_annotations(tmp_path):
    images = np.random.default_rng(2).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", train_images=images, train_labels=np.array([[0], [1], [0], [1]]))
    inputs = collect_inputs([tmp_path / "d.npz"])
    extract(inputs, tmp_path / "c", image_size=32, progress=False)
    folder = tmp_path / "c" / "annotations"
    before = sorted(folder.iterdir())
    extract(inputs, tmp_path / "c", image_size=32, progress=False)
    assert sorted(folder.iterdir()) == before
    relabelled = collect_inputs([tmp_path / "d.npz"])
    relabelled.labels[0] = "7"
    extract(relabelled, tmp_path / "c", image_size=32, progress=False)
    assert len(list(folder.iterdir())) == len(before) + 1
    assert FeatureCache(tmp_path / "c").annotations()[content_key(inputs.items[0], 0)]["label"] == "7"
