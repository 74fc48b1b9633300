"""Tests for featcache.demo (`make demo`), on a small slice of the bundled data."""

import json

import pytest

from featcache import FeatureCache
from featcache.demo import main
from featcache.probe import PLOTS, probe_cache


def test_demo_prints_the_report_and_timings_and_writes_the_plots(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["--n-train", "60", "--n-val", "40", "--image-size", "32", "--cache", str(cache),
            "--out", str(out), "--n-bootstrap", "30"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "60 train / 40 val" in text
    assert "| metric | value | 95% CI |" in text and "| ROC AUC |" in text
    assert "| first run | " in text and " | 100 | 0 |" in text          # 100 computed, 0 cached
    assert "| second run (warm cache) | " in text and " | 0 | 100 |" in text
    assert "featcache probe" in text
    report = json.loads((out / "report.json").read_text())
    assert report["n_train"] == 60 and report["n_val"] == 40
    assert report["classes"] == ["normal", "pneumonia"]
    assert 0.5 < report["metrics"]["roc_auc"]["value"] <= 1
    for name in PLOTS:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name

    # labels and splits went into the cache: the probe runs from the cache alone
    annotations = FeatureCache(cache).annotations()
    assert len(annotations) == 100
    assert {a["split"] for a in annotations.values()} == {"train", "val"}
    from_cache = probe_cache(cache, val="val", n_bootstrap=30)
    assert (from_cache.n_train, from_cache.n_val) == (60, 40)
    assert from_cache.metrics["roc_auc"].value == pytest.approx(
        report["metrics"]["roc_auc"]["value"])

    # a rerun finds everything cached and says so; annotations are not written twice
    assert main(argv) == 0
    assert "already held every embedding" in capsys.readouterr().out
    assert len(list((cache / "annotations").iterdir())) == 1


def test_demo_names_missing_data(tmp_path):
    from featcache.exceptions import FeatcacheError

    with pytest.raises(FeatcacheError, match="bundled data not found.*--data"):
        main(["--data", str(tmp_path / "none.npz"), "--cache", str(tmp_path / "c")])
