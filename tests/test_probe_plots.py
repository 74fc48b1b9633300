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


def test_a_long_title_is_wrapped_inside_the_figure(tmp_path):
    # a report's title holds the estimator's name: 90 characters were cut off at both sides
    title = ("ROC (FixedThresholdClassifier(estimator=Pipeline(FrozenBackbone, StandardScaler, "
             "LogisticRegression)))")
    rng = np.random.default_rng(0)
    fig = plot_roc(rng.integers(0, 2, 40) == 1, rng.random((40, 2)), [False, True], title=title)
    save_figure(fig, tmp_path / "roc.png")  # draws it
    shown = fig.axes[0].title
    assert "".join(shown.get_text().split()) == "".join(title.split())  # all of it, wrapped
    assert "\n" in shown.get_text()
    box, frame = shown.get_window_extent(), fig.bbox
    assert box.x0 >= frame.x0 and box.x1 <= frame.x1, (box, frame)
