"""Tests for featcache.probe.from_cache: probing a cache directory (rows, labels, splits, datasets)."""

import json
import shutil
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featcache import FeatureCache
from featcache.exceptions import (CacheValueError, ContentLeakWarning, MixedDatasetsWarning,
                                  ProbeError)
from featcache.inputs import content_key
from featcache.probe.from_cache import probe_cache

FAST = dict(n_bootstrap=50, Cs=[0.01, 0.1, 1.0])


def _fill(cache_dir, features, keys, fingerprint="fp_a", sources=None):
    cache = FeatureCache(cache_dir)
    config = {"model": "toy", "layer": "default", "preprocessing": {"image_size": 8}}
    sources = sources or [f"row{i}" for i in range(len(keys))]
    with cache.namespace(fingerprint, config).writer() as writer:
        writer.add(keys, features, sources)
        writer.add_failure(b"\xff" * 16, "broken.png", "truncated file")
    return cache


def _rows(n, seed=0, shift=1.0):
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    return rng.normal(size=(n, 6)).astype(np.float32) + shift * y[:, None], y


@pytest.fixture
def toy_cache(tmp_path):
    """100 annotated rows: 70 train, 20 val, 5 test, 5 unlabelled; 25 patients."""
    X, y = _rows(100)
    keys = [bytes([i]) * 16 for i in range(100)]
    cache = _fill(tmp_path / "cache", X, keys)
    split = ["train"] * 70 + ["val"] * 20 + ["test"] * 5 + [None] * 5
    labels = [str(v) for v in y[:95]] + [None] * 5
    cache.annotate(keys, label=labels, split=split, group=[f"p{i // 4}" for i in range(100)])
    return tmp_path / "cache"


def test_probe_cache_uses_annotated_labels_and_splits(toy_cache, tmp_path):
    report = probe_cache(toy_cache, labels="from-cache", val="val", out_dir=tmp_path / "o",
                         **FAST)
    assert (report.n_train, report.n_val) == (70, 20) and report.classes == [0, 1]
    assert report.info["skipped"] == {"without a label": 5, "failed": 1, "test split": 5}
    assert report.info["namespace"] == "fp_a" and report.info["image_size"] == 8
    assert report.info["validation"] == "split 'val'"
    assert report.info["selection"] == {"dataset": None, "manifest": None, "rows": 100,
                                        "records": 100}
    assert "5 without a label" in str(report)
    assert (tmp_path / "o" / "report.json").is_file()


def test_predictions_carry_the_key_and_source_of_each_row(toy_cache, tmp_path):
    report = probe_cache(toy_cache, out_dir=tmp_path / "o", **FAST)
    frame = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype={"key": str})
    assert list(frame.columns[:4]) == ["key", "source", "y_true", "y_pred"]
    # the validation rows are rows 70..89: key bytes([i]) * 16, source "row<i>"
    assert list(frame["key"]) == [(bytes([i]) * 16).hex() for i in range(70, 90)]
    assert list(frame["source"]) == [f"row{i}" for i in range(70, 90)]
    assert list(frame["y_true"]) == list(report.y_true)


def test_default_val_falls_back_to_cross_validation_and_says_so(tmp_path):
    """The README's class-folder layout records no split: the default still runs."""
    X, y = _rows(60)
    keys = [bytes([i]) * 16 for i in range(60)]
    cache = _fill(tmp_path / "c", X, keys)
    cache.annotate(keys, label=[str(v) for v in y])
    report = probe_cache(tmp_path / "c", cv=3, **FAST)
    assert report.n_train == report.n_val == 60 and "3-fold StratifiedKFold" in report.selection
    assert report.info["validation"] == "cross-validation"
    assert "no labelled row has split 'val'" in str(report) and "val=0.2" in str(report)
    assert len(report.samples["key"]) == 60       # out-of-fold: every row is evaluated once
    with pytest.raises(ProbeError, match="no labelled row has split 'val'"):
        probe_cache(tmp_path / "c", val="val", **FAST)    # asked for explicitly: an error


def test_probe_cache_fraction_and_cross_validation(toy_cache):
    fraction = probe_cache(toy_cache, val=0.2, groups=True, **FAST)
    assert fraction.n_train + fraction.n_val == 90 and 14 <= fraction.n_val <= 22
    assert not fraction.info["notes"] and fraction.info["validation"] == "fraction 0.2"
    cv = probe_cache(toy_cache, val=None, groups=True, cv=3, **FAST)
    assert cv.n_train == cv.n_val == 90 and "StratifiedGroupKFold" in cv.selection
    ungrouped = probe_cache(toy_cache, val=None, cv=3, **FAST)
    assert "StratifiedKFold" in ungrouped.selection
    assert "note: the cache records groups but the split ignores them; pass " \
           "groups='from-cache'" in str(ungrouped)


def test_probe_cache_errors_name_the_fix(toy_cache, tmp_path):
    with pytest.raises(ProbeError, match="no labelled row has split 'holdout'.*val=0.2"):
        probe_cache(toy_cache, val="holdout", **FAST)
    with pytest.raises(ProbeError, match="names a CSV column"):
        probe_cache(toy_cache, groups="patient", **FAST)
    with pytest.raises(ProbeError, match="val must be 'auto', a split name"):
        probe_cache(toy_cache, val=[0.2], **FAST)
    _fill(toy_cache, np.zeros((2, 6), np.float32), [b"\x01" * 16, b"\x02" * 16], "fp_b")
    with pytest.raises(ProbeError, match="holds 2 namespaces: fp_a .*toy.*pass namespace="):
        probe_cache(toy_cache, **FAST)
    with pytest.raises(ProbeError, match="'zz' matches no namespace"):
        probe_cache(toy_cache, "zz", **FAST)
    assert probe_cache(toy_cache, "fp_a", **FAST).n_val == 20


def test_probe_cache_with_a_csv_matches_by_content_key_and_source(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 20)
    paths, keys = [], []
    for i in range(40):
        path = tmp_path / "imgs" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
        keys.append(content_key(path, i))
    X = rng.normal(size=(40, 5)).astype(np.float32) + y[:, None]
    cache = _fill(tmp_path / "cache", X, keys)
    # the last image was moved away: its row is found by its recorded source
    cache.annotate(keys[-1:], source=[str(paths[-1])])
    paths[-1].rename(tmp_path / "moved.png")
    csv = tmp_path / "labels.csv"
    lines = ["path,label,split,patient"] + [
        f"imgs/{i}.png,{'pneumonia' if y[i] else 'normal'},{'val' if i >= 30 else 'train'},"
        f"p{i // 2}" for i in range(40)] + ["imgs/unknown.png,normal,train,p99"]
    csv.write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path / "imgs")    # relative paths resolve from the CSV's folder too
    report = probe_cache(tmp_path / "cache", labels=csv, groups="patient", **FAST)
    assert (report.n_train, report.n_val) == (30, 10)
    assert report.classes == ["normal", "pneumonia"]
    assert report.info["notes"] == ["1 CSV row(s) matched no cached embedding (files not "
                                    "extracted into this namespace, or changed since)"]
    with pytest.raises(ProbeError, match=r"lacks column\(s\) \['ward'\]"):
        probe_cache(tmp_path / "cache", labels=csv, groups="ward", **FAST)


# ----------------------------------------------------------------------------- datasets
@pytest.fixture
def two_studies(tmp_path):
    """One namespace, 100 rows: study 'a' = rows 0..59, study 'b' = rows 40..99.

    Rows 40..59 belong to both, with opposite labels in each study. Study 'a' separates its
    classes well (shift 3), study 'b' is noise, so mixing them shows in the numbers.
    """
    Xa, ya = _rows(60, seed=1, shift=3.0)
    Xb, yb = _rows(60, seed=2, shift=0.0)
    X = np.concatenate([Xa, Xb[20:]])
    keys = [bytes([i]) * 16 for i in range(100)]
    cache = _fill(tmp_path / "c", X, keys)
    split_a = ["train"] * 40 + ["val"] * 20
    cache.annotate(keys[:60], label=[f"a{v}" for v in ya], split=split_a, dataset="a")
    cache.annotate(keys[40:], label=[f"b{v}" for v in yb], split=["train"] * 40 + ["val"] * 20,
                   source=[f"b/{i}.png" for i in range(40, 100)], dataset="b")
    return tmp_path / "c"


def test_a_dataset_selects_exactly_its_rows_with_its_own_labels(two_studies, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a chosen dataset warns about nothing
        a = probe_cache(two_studies, dataset="a", out_dir=tmp_path / "a", **FAST)
    assert (a.n_train, a.n_val) == (40, 20) and a.classes == ["a0", "a1"]
    assert a.info["selection"] == {"dataset": "a", "manifest": None, "rows": 60, "records": 60}
    assert a.info["skipped"]["failed"] == 0     # the failure is not tagged with study 'a'
    keys = pd.read_csv(tmp_path / "a" / "predictions.csv", dtype={"key": str})["key"]
    assert set(keys) == {(bytes([i]) * 16).hex() for i in range(40, 60)}
    b = probe_cache(two_studies, dataset="b", **FAST)
    assert (b.n_train, b.n_val) == (40, 20) and b.classes == ["b0", "b1"]
    assert set(b.samples["source"]) == {f"b/{i}.png" for i in range(80, 100)}


def test_a_mixed_namespace_warns_and_names_the_datasets(two_studies):
    with pytest.warns(MixedDatasetsWarning, match=r"holds rows of dataset 'a' \(60 rows\) and "
                                                  r"dataset 'b' \(60 rows\); the probe uses all "
                                                  r"100 of them\. Pass dataset='a'"), \
            pytest.warns(ContentLeakWarning, match="20 images"):
        mixed = probe_cache(two_studies, val=None, cv=3, **FAST)
    # rows 40..59 are inputs of both studies: two records each (one per study)
    assert mixed.info["selection"]["rows"] == 100 and mixed.n_train == 120
    assert mixed.leaks["splits"]["count"] == 20     # val in study a, train in study b
    with pytest.raises(CacheValueError, match=r"dataset='c' tags no row of namespace fp_a; its "
                                              r"rows are dataset 'a' \(60 rows\) and dataset "
                                              r"'b' \(60 rows\)"):
        probe_cache(two_studies, dataset="c", **FAST)
    with pytest.raises(CacheValueError, match="not a dataset name"):
        probe_cache(two_studies, dataset="", **FAST)


def test_tagged_and_untagged_rows_warn_too(tmp_path):
    X, y = _rows(40)
    keys = [bytes([i]) * 16 for i in range(40)]
    cache = _fill(tmp_path / "c", X, keys)
    cache.annotate(keys[:30], label=[str(v) for v in y[:30]], dataset="a")
    cache.annotate(keys[30:], label=[str(v) for v in y[30:]])
    with pytest.warns(MixedDatasetsWarning, match=r"dataset 'a' \(30 rows\) and 10 untagged "
                                                  "rows"):
        probe_cache(tmp_path / "c", cv=3, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probe_cache(tmp_path / "c", dataset="a", cv=3, **FAST).n_train == 30


def _pngs(folder, n, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(paths[-1])
    return paths


def test_a_manifest_selects_the_rows_of_its_inputs(tmp_path):
    paths = _pngs(tmp_path / "imgs", 50, 3)
    keys = [content_key(p, i) for i, p in enumerate(paths)]
    X, y = _rows(50)
    cache = _fill(tmp_path / "c", X, keys, sources=[str(p) for p in paths])
    cache.annotate(keys, label=[str(v) for v in y], source=[str(p) for p in paths],
                   dataset="x")
    cache.annotate(keys[:10], label=["0"] * 10, dataset="y")
    manifest = tmp_path / "study.csv"
    chosen = list(range(10, 40)) + [49]
    manifest.write_text("path\n" + "".join(f"imgs/{i}.png\n" for i in chosen) + "imgs/new.png\n")
    _pngs(tmp_path / "other", 1, 9)[0].rename(tmp_path / "imgs" / "new.png")  # never extracted
    paths[49].unlink()                            # gone: matched by its recorded source
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = probe_cache(tmp_path / "c", manifest=manifest, cv=3, **FAST)
    assert report.info["selection"]["rows"] == 31 and report.n_train == 31
    assert set(report.samples["key"]) == {keys[i].hex() for i in chosen}
    assert "1 manifest input(s) matched no row of this namespace" in str(report)


# ----------------------------------------------------------------------------- records
def test_byte_identical_pngs_stay_two_records_through_extract_probe_and_export(tmp_path):
    """PneumoniaMNIST has byte-identical train/val images: each input keeps its own record."""
    from featcache.jobs.extraction import extract
    from featcache.inputs.sources import collect_inputs

    rng = np.random.default_rng(4)
    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(f"{i}.png,{i % 2},{'train' if i < 30 else 'val'},p{i}")
    # two copies of train image 0 in the validation split, of other patients and labels
    shutil.copy(folder / "0.png", folder / "copy-a.png")
    shutil.copy(folder / "0.png", folder / "copy-b.png")
    lines += ["copy-a.png,1,val,p100", "copy-b.png,0,val,p101"]
    manifest = folder / "study.csv"
    manifest.write_text("path,label,split,group\n" + "\n".join(lines) + "\n")
    extract(collect_inputs([manifest]), tmp_path / "c", image_size=32, progress=False)
    cache = FeatureCache(tmp_path / "c")
    records = cache.records()
    assert len(records) == 42 and len({r["key"] for r in records}) == 40
    assert {r["source"].rsplit("/", 1)[-1]: (r["label"], r["split"], r["group"])
            for r in records if r["key"] == records[0]["key"]} == \
        {"0.png": ("0", "train", "p0"), "copy-a.png": ("1", "val", "p100"),
         "copy-b.png": ("0", "val", "p101")}
    leak = r"1 image \(content key\) is in more than one split, e\.g\. '[^']*/0\.png' \(train\)"
    with pytest.warns(ContentLeakWarning, match=leak):
        report = probe_cache(tmp_path / "c", val="val", groups=True, out_dir=tmp_path / "r",
                             **FAST)
    assert (report.n_train, report.n_val) == (30, 12)
    assert report.info["selection"] == {"dataset": None, "manifest": None, "rows": 40,
                                        "records": 42}
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["leaks"]["splits"]["count"] == saved["leaks"]["groups"]["count"] == 1
    assert [s.rsplit("/", 1)[-1] for s in saved["leaks"]["splits"]["examples"][0]["sources"]] \
        == ["0.png", "copy-a.png", "copy-b.png"]
    assert "byte-identical" in str(report)
    frame = pd.read_csv(tmp_path / "r" / "predictions.csv", dtype={"key": str})
    copies = frame[frame["source"].str.contains("copy")]
    assert sorted(zip(copies["source"].str.rsplit("/", n=1).str[-1], copies["y_true"])) == \
        [("copy-a.png", 1), ("copy-b.png", 0)]
    # the export writes one entry per record; the copies share their row's features
    with pytest.warns(ContentLeakWarning, match="more than one split"):
        out = cache.export(tmp_path / "all.h5")
    with h5py.File(out, "r") as f:
        sources = [s.rsplit("/", 1)[-1] for s in f["sources"].asstr()[()]]
        labels, splits = f["labels"].asstr()[()].tolist(), f["splits"].asstr()[()].tolist()
        features, keys = f["features"][()], f["keys"][()]
        assert f.attrs["rows"] == 42
    at = {name: i for i, name in enumerate(sources)}
    assert len(sources) == 42
    assert (labels[at["copy-a.png"]], splits[at["copy-a.png"]]) == ("1", "val")
    assert (labels[at["0.png"]], splits[at["0.png"]]) == ("0", "train")
    np.testing.assert_array_equal(features[at["copy-b.png"]], features[at["0.png"]])
    assert bytes(keys[at["copy-b.png"]]) == bytes(keys[at["0.png"]])
    # a rerun records nothing new
    before = sorted((tmp_path / "c" / "annotations").iterdir())
    extract(collect_inputs([manifest]), tmp_path / "c", image_size=32, progress=False)
    assert sorted((tmp_path / "c" / "annotations").iterdir()) == before


def test_groups_with_a_named_validation_split_are_checked_for_overlap(toy_cache):
    from featcache.exceptions import GroupOverlapWarning

    # rows 68, 69 (train) and 70, 71 (val) are patient p17: one patient on both sides
    with pytest.raises(ProbeError, match=r"1 group\(s\) have rows in both .*'p17'"):
        probe_cache(toy_cache, groups="from-cache", **FAST)
    with pytest.warns(GroupOverlapWarning, match="'p17'"):
        report = probe_cache(toy_cache, groups="from-cache", group_overlap="warn", **FAST)
    assert report.metrics_source["group_overlap"] == {"count": 1, "examples": ["p17"]}
    assert report.metrics_source["held_out"] is False      # C was chosen on the val split
    with pytest.warns(GroupOverlapWarning):
        held = probe_cache(toy_cache, groups="from-cache", group_overlap="warn",
                           select_on="train", cv=3, **FAST)
    assert held.metrics_source["held_out"] is True and "StratifiedGroupKFold" in held.selection
    fraction = probe_cache(toy_cache, groups="from-cache", val=0.25, **FAST)
    assert "group_overlap" not in fraction.metrics_source     # drawn group-aware
    assert probe_cache(toy_cache, val=None, cv=3, **FAST).metrics_source["held_out"] is True
