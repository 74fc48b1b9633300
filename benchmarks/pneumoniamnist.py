"""PneumoniaMNIST linear-probe benchmark: frozen EfficientNet-Lite0 on a CPU vs MedMNIST v2.

Train on the bundled train split (4,690 images), choose hyper-parameters on the validation
split (524 images) and report **validation** ROC AUC and accuracy with 95% bootstrap intervals
(the official test split is not bundled; see benchmarks/README.md). Rows:

- raw pixels (784 features) + logistic regression: the baseline;
- the default backbone (final feature map, average-pooled, 1280-d) at 28, 64, 128, 224 px;
- intermediate block outputs (blocks.3 to blocks.6, average-pooled) at 128 px, and blocks.4
  at 64 and 96 px (``--configs``);
- MLP and RBF-SVM heads on the features of the best logistic row (``--heads``);
- frozen EfficientNet-Lite1 and Lite2 (``--lite``: final layer and blocks.4 at 96 px);
- partial freezing (``--partial``): :class:`featcache.PartiallyFrozenClassifier` with
  ``trainable_blocks`` 0-3 at ``--partial-size`` px, then the best of them with augmentation
  views, with ``class_weight="balanced"`` and with ``batchnorm="train"``, trained on train
  for ``--partial-epochs`` epochs (seed 0) and scored on val like every other row.

Every head is fitted with :func:`featcache.probe.linear_probe` (standardise, sweep, select on
val). Timings: extraction of all 5,214 images into a cold cache (when the cache already held
them, the "computed" column says 0 and that time is a warm one), the same extraction again
(warm: every row read from the cache), the head's hyper-parameter sweep and one fit at the
chosen value. Embeddings go to ``--cache`` (default ``benchmarks/.cache``), so a rerun only
fits heads (about 2 minutes; about 7 minutes cold on a 2-core CPU).

    .venv/bin/python benchmarks/pneumoniamnist.py [--cache DIR] [--configs 128:blocks.4,...]
        [--heads mlp,svc] [--n-bootstrap 1000]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "pneumoniamnist_trainval.npz"

#: Backbone configurations (input size : layer) of the table; "final" is the default layer.
CONFIGS = ("28:final,64:final,128:final,224:final,"
           "128:blocks.3,128:blocks.4,128:blocks.5,128:blocks.6,64:blocks.4,96:blocks.4")
#: The winning configuration of this benchmark (see benchmarks/README.md): the row with the
#: highest validation AUC (to 3 decimals), ties broken by validation accuracy. ``kind`` is
#: "probe" (a frozen backbone + logistic regression) or "partial" (PartiallyFrozenClassifier).
BEST = {"kind": "partial", "model": "efficientnet_lite0", "trainable_blocks": 3, "image_size": 64,
        "max_epochs": 8, "augment_views": 2}


def best_pipeline(cache="auto"):
    """The best configuration found here, unfitted, whatever kind it is.

    Takes ``(n, 28, 28)`` uint8 PneumoniaMNIST arrays (or any input FrozenBackbone takes);
    ``predict_proba`` gives the class probabilities (column 1: pneumonia). A "probe" winner is
    a Pipeline (frozen backbone, standardisation, L2-regularised logistic regression with the
    ``C`` chosen on the validation split); a "partial" winner a
    :class:`~featcache.PartiallyFrozenClassifier` with the parameters chosen on it.
    """
    if BEST["kind"] == "partial":
        from featcache import PartiallyFrozenClassifier

        params = {k: v for k, v in BEST.items() if k not in ("kind", "model")}
        return PartiallyFrozenClassifier(BEST["model"], cache=cache, random_state=0, **params)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from featcache import FrozenBackbone

    return Pipeline([
        ("backbone", FrozenBackbone(BEST["model"], image_size=BEST["image_size"],
                                    layer=BEST["layer"], cache=cache)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(C=BEST["C"], max_iter=5000)),
    ])


def load(path=DATA):
    with np.load(path) as d:
        return (d["train_images"], d["train_labels"].ravel(), d["val_images"],
                d["val_labels"].ravel())


def extract(X, image_size, layer, cache, model="efficientnet_lite0"):
    """(features, cold seconds, rows computed, warm seconds); model loading not timed."""
    from featcache import FrozenBackbone

    backbone = FrozenBackbone(model, image_size=image_size, layer=layer, cache=cache,
                              progress=False)
    backbone.fit(X[:1])                              # loads the network (memoised per process)
    start = time.perf_counter()
    features = backbone.transform(X)
    cold, computed = time.perf_counter() - start, backbone.transform_stats_["computed"]
    start = time.perf_counter()
    again = backbone.transform(X)
    warm = time.perf_counter() - start
    assert backbone.transform_stats_["computed"] == 0 and np.array_equal(features, again)
    return features, cold, computed, warm


def probe(name, F, n_train, y_train, y_val, n_bootstrap, timing, head=None):
    """Run the probe; return one result row (a dict)."""
    from sklearn.base import clone

    from featcache.probe import linear_probe

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # convergence notes of extreme C values
        report = linear_probe(F[:n_train], y_train, X_val=F[n_train:], y_val=y_val, head=head,
                              n_bootstrap=n_bootstrap, refit=False)
    sweep = time.perf_counter() - start
    pipe = _pipeline_for(report, head)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clone(pipe).fit(F[:n_train], y_train)
    fit = time.perf_counter() - start
    chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in report.best_params.items())
    print(f"  {name}: AUC {report.metrics['roc_auc'].value:.4f} "
          f"ACC {report.metrics['accuracy'].value:.4f} ({chosen}; {sweep:.0f} s)", flush=True)
    return {"name": name, "dim": F.shape[1], "report": report, "chosen": chosen,
            "sweep_s": sweep, "fit_s": fit, **timing}


def _pipeline_for(report, head):
    """StandardScaler + the head at the chosen parameters (what linear_probe fits)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featcache.probe import make_head

    estimator, _ = make_head(head or "logistic")
    return make_pipeline(StandardScaler(), estimator.set_params(**report.best_params))


class _Scored:
    """The part of a ProbeReport the table reads: metrics with bootstrap intervals."""

    def __init__(self, metrics):
        self.metrics = metrics


def partial_row(name, X, n, y_train, y_val, n_bootstrap, cache, **params):
    """Fit a PartiallyFrozenClassifier on train, score it on val; one result row."""
    from featcache import PartiallyFrozenClassifier
    from featcache.probe.metrics import bootstrap_metrics

    clf = PartiallyFrozenClassifier(cache=cache, random_state=0, progress=False, **params)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        clf.fit(X[:n], y_train)
    fit = time.perf_counter() - start
    proba = clf.predict_proba(X[n:])
    yi = np.searchsorted(clf.classes_, y_val)
    metrics = bootstrap_metrics(yi, proba.argmax(axis=1), proba, len(clf.classes_),
                                n_bootstrap, 0)
    chosen = ", ".join(f"{k}={v}" for k, v in params.items() if k != "model")
    stats = clf.fit_stats_
    print(f"  {name}: AUC {metrics['roc_auc'].value:.4f} ACC {metrics['accuracy'].value:.4f} "
          f"({fit:.0f} s; prefix {stats['prefix_seconds']:.0f} s, {clf.n_iter_} epochs)",
          flush=True)
    return {"name": name, "dim": "x".join(map(str, clf.row_shape_)), "report": _Scored(metrics),
            "chosen": chosen, "fit_s": fit, "params": params,
            "cold_s": stats["prefix_seconds"], "computed": stats["computed"]}


def run_partial(args, X, n, y_train, y_val):
    """Rows of partial freezing: trainable_blocks, then variants of the best cut point."""
    base = {"image_size": args.partial_size, "max_epochs": args.partial_epochs}
    rows = []
    for k in args.partial_blocks:
        rows.append(partial_row(f"Lite0 {args.partial_size} px, partial, {k} trainable", X, n,
                                y_train, y_val, args.n_bootstrap, args.cache,
                                trainable_blocks=k, **base))
    best = max(rows, key=_selection_key)["params"]
    variants = [("augment_views", args.partial_views), ("class_weight", "balanced"),
                ("batchnorm", "train")]
    for key, value in variants:
        if value:
            rows.append(partial_row(f"Lite0 {args.partial_size} px, partial, "
                                    f"{best['trainable_blocks']} trainable, {key}={value}", X, n,
                                    y_train, y_val, args.n_bootstrap, args.cache,
                                    **{**best, key: value}))
    return rows


def _selection_key(row):
    """The benchmark's one selection rule: highest val AUC to 3 decimals, then accuracy."""
    metrics = row["report"].metrics
    return round(metrics["roc_auc"].value, 3), round(metrics["accuracy"].value, 3)


def _default_cache_dir() -> str:
    """``benchmarks/.cache``, holding a ``.gitignore`` so git never picks up the embeddings."""
    path = HERE / ".cache"
    path.mkdir(exist_ok=True)
    if not (path / ".gitignore").exists():
        (path / ".gitignore").write_text("# embeddings cached by pneumoniamnist.py\n*\n")
    return str(path)


def run(args):
    X_train, y_train, X_val, y_val = load(args.data)
    X, n = np.concatenate([X_train, X_val]), len(X_train)
    print(f"PneumoniaMNIST: {n} train / {len(X_val)} val; cache {args.cache}", flush=True)
    rows = [probe("raw pixels (784) + logistic", X.reshape(len(X), -1).astype(np.float32), n,
                  y_train, y_val, args.n_bootstrap, {})]
    backbone_rows = []
    for size, layer in args.configs:
        F, cold, computed, warm = extract(X, size, layer, args.cache)
        timing = {"cold_s": cold, "computed": computed, "warm_s": warm, "size": size,
                  "layer": layer}
        name = f"EfficientNet-Lite0 {size} px, {layer or 'final'} + logistic"
        backbone_rows.append((probe(name, F, n, y_train, y_val, args.n_bootstrap, timing), F))
    rows += [r for r, _ in backbone_rows]
    best, F = max(backbone_rows, key=lambda rf: _selection_key(rf[0]), default=(None, None))
    for head in args.heads if backbone_rows else ():
        rows.append(probe(f"EfficientNet-Lite0 {best['size']} px, {best['layer'] or 'final'} + "
                          f"{head}", F, n, y_train, y_val, args.n_bootstrap,
                          {k: best[k] for k in ("cold_s", "computed", "warm_s")}, head=head))
    for model in args.lite:
        for layer in (None, "blocks.4"):
            F, cold, computed, warm = extract(X, 96, layer, args.cache, model)
            timing = {"cold_s": cold, "computed": computed, "warm_s": warm, "size": 96,
                      "layer": layer}
            rows.append(probe(f"{model} 96 px, {layer or 'final'} + logistic", F, n, y_train,
                              y_val, args.n_bootstrap, timing))
    if args.partial:
        rows += run_partial(args, X, n, y_train, y_val)
    return rows


def table(rows) -> str:
    def ci(m):
        return f"{m.value:.3f} [{m.ci_low:.3f}, {m.ci_high:.3f}]"

    def secs(row, key):
        return f"{row[key]:.1f}" if key in row else "–"

    lines = ["| configuration | dim | val AUC [95% CI] | val ACC [95% CI] | chosen | "
             "extract cold s (computed) | extract warm s | sweep s | head fit s |",
             "|---|---:|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        m = r["report"].metrics
        cold = f"{r['cold_s']:.1f} ({r['computed']})" if "cold_s" in r else "–"
        lines.append(f"| {r['name']} | {r['dim']} | {ci(m['roc_auc'])} | {ci(m['accuracy'])} | "
                     f"{r['chosen']} | {cold} | {secs(r, 'warm_s')} | {secs(r, 'sweep_s')} | "
                     f"{secs(r, 'fit_s')} |")
    return "\n".join(lines)


def _csv(text):
    return [t for t in text.split(",") if t]


def _configs(text):
    out = []
    for item in _csv(text):
        size, _, layer = item.partition(":")
        out.append((int(size), None if layer in ("", "final") else layer))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None,
                        help="embedding cache directory (default: benchmarks/.cache)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--configs", type=_configs, default=_configs(CONFIGS),
                        help="SIZE:LAYER,... backbone configurations (LAYER 'final' is the "
                             f"default layer); default {CONFIGS}")
    parser.add_argument("--heads", type=_csv, default=["mlp", "svc"],
                        help="other heads (featcache.probe.HEADS) on the best backbone row")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--lite", type=_csv, default=["efficientnet_lite1", "efficientnet_lite2"],
                        help="other frozen backbones probed at 96 px (final layer and blocks.4)")
    parser.add_argument("--partial", action=argparse.BooleanOptionalAction, default=True,
                        help="partial-freezing rows (PartiallyFrozenClassifier)")
    parser.add_argument("--partial-blocks", type=lambda t: [int(b) for b in _csv(t)],
                        default=[0, 1, 2, 3])
    parser.add_argument("--partial-size", type=int, default=64)
    parser.add_argument("--partial-epochs", type=int, default=8)
    parser.add_argument("--partial-views", type=int, default=2,
                        help="augmentation views of the variant row (0: no such row)")
    args = parser.parse_args(argv)
    args.cache = args.cache or _default_cache_dir()
    start = time.perf_counter()
    rows = run(args)
    print("\n" + table(rows))
    winner = max(rows, key=_selection_key)
    print(f"\nbest (highest val AUC, then ACC): {winner['name']} ({winner['chosen']})")
    import torch

    print(f"total {time.perf_counter() - start:.0f} s on {os.cpu_count()} CPU cores "
          f"({torch.get_num_threads()} torch threads); validation numbers (train on train, "
          "select on val), not test")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
