"""Tests for featcache.cache.export: one namespace to a plain .h5 / .npz, with annotations."""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

import h5py
import numpy as np
import pytest

from featcache.cache import CacheValueError, FeatureCache, shards
from featcache.cache.export import export_facts
from featcache.cli import main as cli_main
from featcache.exceptions import ContentLeakWarning, MixedDatasetsWarning

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cache_writer_proc import CONFIG, FINGERPRINT, features, key_of  # noqa: E402

from cache_helpers import _fill  # noqa: E402

FAILED = {0, 37, 74}  # _fill records items i % 37 == 0 as failures


@pytest.fixture
def studies(tmp_path):
    """100 items (3 failed); study 'a' = items 0..59 with labels and splits, study 'b' =
    items 40..99 with other labels and groups; items 40..59 are in both."""
    cache = FeatureCache(tmp_path / "c")
    _fill(cache.namespace(FINGERPRINT, CONFIG), range(100), commit_rows=30)
    a = [key_of(i) for i in range(60)]
    cache.annotate(a, label=[f"a{i % 2}" for i in range(60)],
                   split=["train"] * 40 + ["val"] * 20, dataset="a")
    b = [key_of(i) for i in range(40, 100)]
    cache.annotate(b, label=[f"b{i % 3}" for i in range(40, 100)],
                   group=[f"p{i // 5}" for i in range(40, 100)], dataset="b")
    return cache


def _h5(path):
    with h5py.File(path, "r") as f:
        out = {name: f[name].asstr()[()].tolist() for name in
               ("sources", "labels", "groups", "splits")}
        out.update(keys=[bytes(k) for k in f["keys"][()]], features=f["features"][()],
                   failures=[bytes(k) for k in f["failures/keys"][()]], attrs=dict(f.attrs))
    return out


def test_a_dataset_exports_exactly_its_rows_with_its_annotations(studies, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = studies.export(tmp_path / "a.h5", dataset="a")
    got = _h5(out)
    expected = [key_of(i) for i in range(60) if i not in FAILED]
    assert sorted(got["keys"]) == sorted(expected) and len(got["keys"]) == 58
    np.testing.assert_array_equal(got["features"], features(got["keys"]))
    index = {key_of(i): i for i in range(100)}
    items = [index[k] for k in got["keys"]]
    assert got["labels"] == [f"a{i % 2}" for i in items]           # study a's own labels
    assert got["splits"] == ["train" if i < 40 else "val" for i in items]
    assert got["groups"] == [""] * 58                               # none recorded: ""
    assert got["sources"] == [f"item-{i}" for i in items]
    assert sorted(got["failures"]) == sorted(key_of(i) for i in (0, 37))   # a's failures only
    assert got["attrs"]["dataset"] == "a" and got["attrs"]["rows"] == 58
    assert json.loads(got["attrs"]["config"]) == CONFIG
    # the export is itself a valid shard: attributes, shapes and checksum check out
    info = shards.load_shard(out, FINGERPRINT, check_checksum=True)
    assert info.rows == 58 and info.checksum_ok


def test_every_row_without_a_dataset_warns_when_mixed(studies, tmp_path):
    with pytest.warns(MixedDatasetsWarning, match=r"holds rows of dataset 'a' \(58 rows\) and "
                                                  r"dataset 'b' \(59 rows\); the export uses "
                                                  r"all 97 of them\. Pass dataset='a'"), \
            pytest.warns(ContentLeakWarning, match="20 images .* in more than one split"):
        out = studies.export(tmp_path / "all.h5")
    got = _h5(out)
    index = {key_of(i): i for i in range(100)}
    items = [index[k] for k in got["keys"]]
    assert len(set(items)) == 97 and got["attrs"]["dataset"] == ""
    # one entry per record: items 40..59 are inputs of both studies, each with its labels
    with h5py.File(out, "r") as f:
        datasets = f["datasets"].asstr()[()].tolist()
        assert json.loads(f.attrs["leaks"])["splits"]["count"] == 20   # val in a, none in b
    entries = sorted(zip(items, datasets, got["labels"], got["groups"]))
    assert entries == sorted(
        [(i, "a", f"a{i % 2}", "") for i in range(60) if i not in FAILED]
        + [(i, "b", f"b{i % 3}", f"p{i // 5}") for i in range(40, 100) if i not in FAILED])
    assert len(got["failures"]) == 3
    with pytest.raises(CacheValueError, match="dataset='z' tags no row"):
        studies.export(tmp_path / "z.h5", dataset="z")
    assert not (tmp_path / "z.h5").exists()


def test_npz_export_carries_the_same_arrays(studies, tmp_path):
    h5 = _h5(studies.export(tmp_path / "b.h5", dataset="b"))
    with np.load(studies.export(tmp_path / "b.npz", dataset="b")) as z:
        assert {"keys", "features", "sources", "labels", "groups", "splits", "failure_keys",
                "failure_sources", "failure_reasons", "config", "fingerprint",
                "dataset"} <= set(z.files)
        assert [bytes(k) for k in z["keys"]] == h5["keys"] and len(h5["keys"]) == 59
        np.testing.assert_array_equal(z["features"], h5["features"])
        for name in ("labels", "groups", "splits", "sources"):
            assert z[name].tolist() == h5[name], name
        assert str(z["dataset"]) == "b" and [bytes(k) for k in z["failure_keys"]] == [key_of(74)]
        assert z["labels"].dtype.kind == "U"          # no pickled objects
    for name in ("b.h5", "b.npz"):
        assert export_facts(tmp_path / name) == {"rows": 59, "namespace": FINGERPRINT}


def test_an_untagged_cache_exports_empty_annotations_without_warning(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    _fill(cache.namespace(FINGERPRINT, CONFIG), range(10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _h5(cache.export(tmp_path / "e.h5"))
    assert got["labels"] == got["groups"] == got["splits"] == [""] * 9


def test_export_command_selects_a_dataset_and_prints_json(studies, tmp_path, capsys):
    d, out = str(studies.path), str(tmp_path / "a.npz")
    assert cli_main(["export", d, out, "--dataset", "a", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"path": out, "rows": 58, "namespace": FINGERPRINT,
                                        "dataset": "a"}
    assert captured.err == ""
    assert cli_main(["export", d, str(tmp_path / "all.h5")]) == 0
    captured = capsys.readouterr()
    assert f"exported 117 rows of namespace {FINGERPRINT} to" in captured.out  # 97 + 20
    assert "featcache: warning: namespace" in captured.err
    assert "Pass --dataset a to use one dataset's rows only" in captured.err
    assert cli_main(["export", d, str(tmp_path / "x.h5"), "--dataset", "x"]) == 1
    err = capsys.readouterr().err
    assert "featcache export: error: --dataset x tags no row" in err
    assert "Traceback" not in err
