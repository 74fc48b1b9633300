"""Tests for featcache.probe.plots: figures of a probe report, written without pyplot."""


import numpy as np

from featcache.probe.plots import plot_confusion_matrix, plot_roc, plot_sweep, save_figure

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written_as_png(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array(["a", "b", "c"] * 10)
    score = rng.dirichlet(np.ones(3), size=30)
    pred = np.array(["a", "b", "c"])[score.argmax(axis=1)]
    figures = {
        "roc3.png": plot_roc(y, score, ["a", "b", "c"]),
        "roc2.png": plot_roc(y[:20] == "a", score[:20, :2], [False, True]),
        "cm.png": plot_confusion_matrix(y, pred, ["a", "b", "c"]),
        "sweep_c.png": plot_sweep([{"params": {"C": c}, "score": s}
                                   for c, s in [(0.01, 0.7), (1.0, 0.8), (100.0, None)]],
                                  chosen={"C": 1.0}),
        "sweep_grid.png": plot_sweep([{"params": {"alpha": 1, "hidden": (8,)}, "score": 0.7},
                                      {"params": {}, "score": 0.6}], chosen={}),
    }
    for name, fig in figures.items():
        path = save_figure(fig, tmp_path / name)
        assert path.read_bytes()[:8] == PNG, name
    roc_lines = figures["roc3.png"].axes[0].get_lines()
    assert len(roc_lines) == 4                       # one per class + the chance diagonal
