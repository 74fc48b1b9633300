"""Tests for featcache.annotations: labels, groups and splits kept per content key."""

import os
import pathlib
import re
import sys
import warnings

import h5py
import numpy as np
import pytest

from featcache.cache import FeatureCache, annotations
from featcache.exceptions import (CacheCorruptError, CacheValueError, ContentLeakWarning,
                                  MixedDatasetsWarning)

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cache_helpers import _bomb_file  # noqa: E402


def test_annotations_are_kept_per_key_newest_first(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k1, k2, k3 = (bytes([i]) * 16 for i in (1, 2, 3))
    cache.annotate([k1, k2], label=["cat", None], group=["p1", "p2"], split=["train", "val"])
    cache.annotate([k2], label=["dog"], source=["/x/b.png"])
    got = cache.annotations()
    assert got[k1] == {"label": "cat", "group": "p1", "split": "train", "source": None,
                       "dataset": None}
    assert got[k2]["label"] == "dog" and got[k2]["source"] == "/x/b.png"
    assert cache.annotations([k3, k1]) == {k1: got[k1]}
    assert cache.namespaces() == [] and cache.verify().ok
    with pytest.raises(ValueError, match="expected 2 values, got 1"):
        cache.annotate([k1, k2], label=["only one"])


def test_annotations_with_text_that_is_not_utf8(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k1, k2 = bytes([7]) * 16, bytes([8]) * 16
    odd = os.fsdecode(b"/x/caf\xe9.png")  # legal on Linux, not valid UTF-8
    cache.annotate([k1, k2], label=["caf\udce9", "dog"], group=["p\x001", None], source=[odd, "b"])
    got = cache.annotations()
    assert got[k1] == {"label": "caf\\udce9", "group": "p\\x001", "split": None,
                       "source": "/x/caf\\udce9.png", "dataset": None}
    assert got[k2] == {"label": "dog", "group": None, "split": None, "source": "b",
                       "dataset": None}


def test_dataset_tags_keep_each_study_its_own_records(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k1, k2, k3 = (bytes([i]) * 16 for i in (1, 2, 3))
    cache.annotate([k1, k2], label=["cat", "dog"], split=["train", "val"], dataset="study-a")
    cache.annotate([k2, k3], label=["lion", "ant"], dataset="study-b")   # k2 is in both
    a = cache.annotations(dataset="study-a")
    assert set(a) == {k1, k2} and a[k2]["label"] == "dog" and a[k2]["dataset"] == "study-a"
    b = cache.annotations([k1, k2], dataset="study-b")
    assert set(b) == {k2} and b[k2]["label"] == "lion"
    assert cache.annotations()[k2]["label"] == "lion"        # without a dataset: the newest
    assert annotations.dataset_counts(cache.path, [k1, k2, k3, b"\x09" * 16]) == \
        {"study-a": 2, "study-b": 2, None: 1}                 # k2 counts in both; 9 is untagged
    assert annotations.describe_datasets({"b": 1, "a": 2, None: 3}) == \
        "dataset 'a' (2 rows), dataset 'b' (1 row) and 3 untagged rows"
    for bad in ("", "  ", 3, ["a"]):
        with pytest.raises(CacheValueError, match="not a dataset name"):
            cache.annotate([k1], label=["x"], dataset=bad)


def test_select_dataset_warns_only_about_a_mixed_choice(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k1, k2 = bytes([1]) * 16, bytes([2]) * 16
    cache.annotate([k1], label=["cat"], dataset="a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keep, ann = annotations.select_dataset(cache.path, [k1], None, what="the export",
                                               namespace="fp")
        assert keep.tolist() == [True] and ann[k1]["label"] == "cat"
        keep, _ = annotations.select_dataset(cache.path, [k1, k2], "a", what="x", namespace="fp")
        assert keep.tolist() == [True, False]
    with pytest.warns(MixedDatasetsWarning, match=r"namespace fp holds rows of dataset 'a' "
                                                  r"\(1 row\) and 1 untagged row; the export "
                                                  "uses all 2 of them"):
        annotations.select_dataset(cache.path, [k1, k2], None, what="the export", namespace="fp")
    with pytest.raises(CacheValueError, match="dataset='b' tags no row of namespace fp"):
        annotations.select_dataset(cache.path, [k1, k2], "b", what="x", namespace="fp")


def test_files_written_before_dataset_tags_read_as_untagged(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    old = cache.path / "annotations" / f"{1:020d}-{'a' * 32}.h5"
    old.parent.mkdir()
    text = h5py.string_dtype("utf-8")
    with h5py.File(old, "w") as f:            # the layout before dataset tags
        f.create_dataset("keys", data=np.full((1, 16), 7, np.uint8))
        for name, value in (("label", "cat"), ("group", ""), ("split", "val"), ("source", "")):
            f.create_dataset(name, data=np.array([value], dtype=object), dtype=text)
    got = cache.annotations()[bytes([7]) * 16]
    assert got["label"] == "cat" and got["split"] == "val" and got["dataset"] is None
    assert cache.verify().ok


def _junk(path):
    path.write_bytes(b"not an hdf5 file")


def _missing_field(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("keys", data=np.zeros((2, 16), np.uint8))


def _inconsistent(path):
    text = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.create_dataset("keys", data=np.zeros((3, 16), np.uint8))
        for name in ("label", "group", "split", "source"):
            f.create_dataset(name, data=np.array(["a", "b"], dtype=object), dtype=text)


def _bomb(path):
    _bomb_file(path, 10**6, fields=("keys", "label", "group", "split", "source"), failures=False)


@pytest.mark.parametrize("damage", [_junk, _missing_field, _inconsistent, _bomb])
def test_a_damaged_annotations_file_is_named(tmp_path, damage):
    cache = FeatureCache(tmp_path / "c")
    k1 = bytes([1]) * 16
    cache.annotate([k1], label=["cat"])
    bad = cache.path / "annotations" / f"{0:020d}-{'d' * 32}.h5"
    damage(bad)
    with pytest.raises(CacheCorruptError, match=re.escape(str(bad)) + ".*[Dd]elete it"):
        cache.annotations()
    report = cache.verify()
    assert not report.ok and len(report.problems) == 1 and str(bad) in report.problems[0]
    bad.unlink()
    assert cache.annotations()[k1]["label"] == "cat" and cache.verify().ok


# ----------------------------------------------------------------------------- records
def _by_source(records):
    return {r["source"]: r for r in records}


def test_byte_identical_inputs_stay_two_records_sharing_one_key(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k, other = bytes([5]) * 16, bytes([6]) * 16
    cache.annotate([k, k, other], label=["0", "1", "0"], split=["train", "val", "train"],
                   group=["p1", "p2", "p3"], source=["train/a.png", "val/b.png", "train/c.png"])
    records = cache.records()
    assert len(records) == 3 and [r["key"] for r in records] == [k, k, other]
    got = _by_source(records)
    assert {f: got["train/a.png"][f] for f in ("label", "split", "group")} == \
        {"label": "0", "split": "train", "group": "p1"}
    assert {f: got["val/b.png"][f] for f in ("label", "split", "group")} == \
        {"label": "1", "split": "val", "group": "p2"}
    # rewriting one record (same source, e.g. a rerun with a new label) replaces that one only
    cache.annotate([k], label=["7"], split=["val"], source=["val/b.png"])
    got = _by_source(cache.records([k]))
    assert set(got) == {"train/a.png", "val/b.png"} and got["val/b.png"]["label"] == "7"
    assert got["train/a.png"]["label"] == "0"
    # the by-key view is the newest record of each key
    assert cache.annotations([k])[k]["source"] == "val/b.png"


def test_records_are_per_dataset_and_an_edited_file_moves_to_its_new_key(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k1, k2 = bytes([1]) * 16, bytes([2]) * 16
    cache.annotate([k1], label=["0"], source=["a.png"], dataset="s1")
    cache.annotate([k1], label=["1"], source=["a.png"], dataset="s2")
    assert len(cache.records()) == 2 and len(cache.records(dataset="s1")) == 1
    cache.annotate([k2], label=["0"], source=["a.png"], dataset="s1")   # a.png was edited
    assert [(r["key"], r["dataset"]) for r in cache.records(dataset="s1")] == [(k2, "s1")]
    assert cache.records([k1], dataset="s1") == []


def test_annotating_content_without_a_source_relabels_its_records(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k = bytes([3]) * 16
    cache.annotate([k], label=["x"])                       # by content: one record
    cache.annotate([k, k], label=["0", "1"], source=["a.png", "b.png"])
    got = _by_source(cache.records())                      # inputs replace the content record
    assert set(got) == {"a.png", "b.png"} and got["b.png"]["label"] == "1"
    cache.annotate([k], label=["2"], split=["test"])         # relabels every input of k
    got = _by_source(cache.records())
    assert set(got) == {"a.png", "b.png"}
    assert {(r["label"], r["split"]) for r in got.values()} == {("2", "test")}


def test_files_written_by_content_key_read_as_records(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    old = cache.path / "annotations" / f"{1:020d}-{'a' * 32}.h5"
    old.parent.mkdir()
    text = h5py.string_dtype("utf-8")
    with h5py.File(old, "w") as f:            # an older file: two inputs with one content
        f.create_dataset("keys", data=np.full((2, 16), 7, np.uint8))
        for name, values in (("label", ["0", "1"]), ("group", ["", ""]),
                             ("split", ["train", "val"]), ("source", ["a.png", "b.png"]),
                             ("dataset", ["", ""])):
            f.create_dataset(name, data=np.array(values, dtype=object), dtype=text)
    records = cache.records()
    assert [(r["source"], r["label"], r["split"]) for r in records] == \
        [("a.png", "0", "train"), ("b.png", "1", "val")]
    assert cache.annotations()[bytes([7]) * 16]["label"] == "1"     # by key: the newest


def test_identical_content_across_splits_or_groups_is_a_named_leak(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k1, k2, k3 = (bytes([i]) * 16 for i in (1, 2, 3))
    cache.annotate([k1, k1, k2, k2, k3, k3], label=["0"] * 6,
                   split=["train", "val", "train", "train", "train", "train"],
                   group=["p1", "p1", "p2", "p3", "p4", "p4"],
                   source=["t/a.png", "v/a.png", "t/b.png", "t/b2.png", "t/c.png", "t/c2.png"])
    leaks = annotations.find_leaks(cache.records())
    assert leaks["splits"]["count"] == 1 and leaks["groups"]["count"] == 1
    assert leaks["splits"]["examples"] == [{"key": k1.hex(), "sources": ["t/a.png", "v/a.png"],
                                            "values": ["train", "val"]}]
    assert leaks["groups"]["examples"] == [{"key": k2.hex(), "sources": ["t/b.png", "t/b2.png"],
                                            "values": ["p2", "p3"]}]
    with pytest.warns(ContentLeakWarning, match=r"1 image \(content key\) is in more than one "
                                                r"split.*'t/a.png' \(train\) and 'v/a.png' "
                                                r"\(val\).*1 image.*more than one group.*"
                                                r"'t/b.png' \(p2\) and 't/b2.png' \(p3\)"):
        annotations.warn_leaks(leaks, what="the probe")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = annotations.find_leaks([r for r in cache.records() if r["key"] == k3])
        assert clean == {} and annotations.warn_leaks(clean, what="x") is None


def test_a_batch_job_records_each_input_once_and_a_rerun_nothing(tmp_path):
    from featcache.jobs.summary import annotate_inputs
    from featcache.inputs.sources import InputSet

    cache = FeatureCache(tmp_path / "c")
    k, other = bytes([5]) * 16, bytes([6]) * 16
    inputs = InputSet()
    inputs.extend(["x", "y", "z"], ["train/a.png", "val/b.png", "train/c.png"],
                  ["0", "1", "0"], ["p1", "p2", "p3"], ["train", "val", "train"])
    annotate_inputs(cache, inputs, [k, k, other])
    folder = cache.path / "annotations"
    before = sorted(folder.iterdir())
    assert {(r["source"], r["label"], r["split"]) for r in cache.records()} == \
        {("train/a.png", "0", "train"), ("val/b.png", "1", "val"), ("train/c.png", "0", "train")}
    annotate_inputs(cache, inputs, [k, k, other])              # a rerun records nothing
    assert sorted(folder.iterdir()) == before
    inputs.labels[1] = "2"                                      # one input relabelled
    annotate_inputs(cache, inputs, [k, k, None])                # (z failed to read: no key)
    assert len(list(folder.iterdir())) == len(before) + 1
    assert {r["source"]: r["label"] for r in cache.records()} == \
        {"train/a.png": "0", "val/b.png": "2", "train/c.png": "0"}


def test_the_demo_records_identical_train_and_val_images_once_each(tmp_path):
    """PneumoniaMNIST holds byte-identical train/val images: both records, then no rewrite."""
    from featcache.demo import annotate

    rng = np.random.default_rng(0)
    X_train = rng.integers(0, 255, (4, 8, 8), dtype=np.uint8)
    X_val = np.concatenate([X_train[:1], rng.integers(0, 255, (1, 8, 8), dtype=np.uint8)])
    y_train, y_val = np.array([0, 1, 0, 1]), np.array([1, 0])
    assert annotate(tmp_path / "c", X_train, y_train, X_val, y_val) == 6
    records = FeatureCache(tmp_path / "c").records()
    assert len(records) == 6 and len({r["key"] for r in records}) == 5
    assert annotate(tmp_path / "c", X_train, y_train, X_val, y_val) == 0   # a rerun: nothing
    assert len(list((tmp_path / "c" / "annotations").iterdir())) == 1
