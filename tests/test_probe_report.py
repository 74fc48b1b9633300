"""Tests for featcache.probe.report: the ProbeReport, its table, JSON and files."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

from featcache.exceptions import ProbeError
from featcache.probe import linear_probe
from featcache.probe.report import PLOTS, Metric, json_float, jsonable

FAST = dict(n_bootstrap=50, Cs=[0.01, 0.1, 1.0])


@pytest.fixture(scope="module")
def data():
    """A binary problem: 160 training and 80 validation rows, 12 features."""
    X, y = make_classification(240, 12, n_informative=4, random_state=0)
    return X[:160], y[:160], X[160:], y[160:]


def test_report_saves_json_predictions_and_plots(data, tmp_path):
    X, y, X_val, y_val = data
    report = linear_probe(X, y, X_val=X_val, y_val=y_val, **FAST)
    out = report.save(tmp_path / "out")
    saved = json.loads((out / "report.json").read_text())
    assert saved["C"] == report.C and saved["n_val"] == 80 and saved["classes"] == [0, 1]
    assert set(saved["metrics"]["roc_auc"]) == {"value", "ci_low", "ci_high"}
    assert [s["params"]["C"] for s in saved["sweep"]] == FAST["Cs"]
    assert {p.name for p in out.iterdir()} == {"report.json", "predictions.csv", *PLOTS}
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert len((out / "predictions.csv").read_text().splitlines()) == 81
    table = str(report)
    assert "| metric | value | 95% CI |" in table and "| ROC AUC |" in table
    assert f"{report.metrics['accuracy'].value:.4f}" in table
    assert isinstance(report.metrics["accuracy"], Metric)


def test_predictions_name_each_evaluated_sample(data, tmp_path):
    X, y, X_val, y_val = data
    report = linear_probe(X, y, X_val=X_val, y_val=y_val, refit=False, **FAST)
    frame = pd.read_csv(report.save(tmp_path / "o") / "predictions.csv")
    assert list(frame.columns) == ["row", "y_true", "y_pred", "score_0", "score_1"]
    np.testing.assert_array_equal(frame["row"], np.arange(80))   # position in X_val
    np.testing.assert_array_equal(frame["y_true"], y_val)
    report.samples = {"key": np.array(["ab" * 16] * 80), "source": np.array(["/x.png"] * 80)}
    frame = report.predictions()
    assert list(frame.columns[:3]) == ["key", "source", "y_true"]


def test_report_save_to_an_unwritable_place_raises_probe_error(data, tmp_path):
    X, y, X_val, y_val = data
    report = linear_probe(X, y, X_val=X_val, y_val=y_val, refit=False, **FAST)
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(ProbeError, match="cannot write the probe report.*writable directory"):
        report.save(tmp_path / "taken")


def test_json_helpers_drop_nan_and_numpy_types():
    assert json_float(float("nan")) is None and json_float(None) is None
    assert jsonable({1: np.float32(0.5), "a": [np.int64(2), np.bool_(True), np.inf]}) == \
        {"1": 0.5, "a": [2, True, None]}


def test_predictions_csv_escapes_cells_a_spreadsheet_would_run(data, tmp_path):
    """OWASP CSV injection: text starting with = + - @ tab or CR gets a leading quote."""
    import csv

    X, y, X_val, y_val = data
    names = np.array(["@SUM(A1)", "=1+1"])
    report = linear_probe(X, names[y], X_val=X_val, y_val=names[y_val], refit=False, **FAST)
    evil = ["=HYPERLINK(\"http://x\")", "+cmd", "-2+3", "@A1", "\tx", "\ry", "ok.png", "-0.5"]
    report.samples = {"source": np.array((evil * 10)[:80], dtype=object),
                      "margin": np.linspace(-1, 1, 80)}
    with open(report.save(tmp_path / "o") / "predictions.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    # a header cell is escaped by the same rule: "score_=1+1" starts with a letter, no formula
    assert rows[0] == ["source", "margin", "y_true", "y_pred", "score_=1+1", "score_@SUM(A1)"]
    assert [r[0] for r in rows[1:9]] == ["'=HYPERLINK(\"http://x\")", "'+cmd", "'-2+3", "'@A1",
                                          "'\tx", "'\ry", "ok.png", "-0.5"]
    assert float(rows[1][1]) == -1.0                       # numbers are data, not formulas
    assert {r[2] for r in rows[1:]} == {"'=1+1", "'@SUM(A1)"}
    assert all(float(v) >= 0 for r in rows[1:] for v in r[4:])
    # the DataFrame itself keeps the values as they are
    assert set(report.predictions()["y_true"]) == {"=1+1", "@SUM(A1)"}
