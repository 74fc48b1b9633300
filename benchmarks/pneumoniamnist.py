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
  for ``--partial-epochs`` epochs (seed 0) and scored on val like every other row;
- the prevalence study (``--prevalence``, run alone): the partial-freezing winner of
  2026-11-26 with thresholds (the train prevalence; one tuned for balanced accuracy on 20% of
  train held out), ``class_weight="balanced"``, calibrated probabilities, test-time
  augmentation (``tta_views``) and soft-voting ensembles over seeds and cut points, all
  trained on train and scored on val with :func:`featcache.evaluate`: AUC, accuracy,
  balanced accuracy, sensitivity, specificity, Brier and the accuracy at the published test
  prevalence (62.5% pneumonia), with bootstrap intervals. It selects by AUC (3 decimals),
  then balanced accuracy: numbers that do not depend on the validation prevalence.
  ``--refit`` fits ``best_pipeline()`` on train + val and times it.

Every head is fitted with :func:`featcache.probe.linear_probe` (standardise, sweep, select on
val). Timings: extraction of all 5,214 images into a cold cache (when the cache already held
them, the "computed" column says 0 and that time is a warm one), the same extraction again
(warm: every row read from the cache), the head's hyper-parameter sweep and one fit at the
chosen value. Embeddings go to ``--cache`` (default ``benchmarks/.cache``), so a rerun only
fits heads (about 2 minutes; about 7 minutes cold on a 2-core CPU).

    .venv/bin/python benchmarks/pneumoniamnist.py [--cache DIR] [--configs 128:blocks.4,...]
        [--heads mlp,svc] [--n-bootstrap 1000]
    .venv/bin/python benchmarks/pneumoniamnist.py --prevalence [--tta 2,4] [--limit N]
    .venv/bin/python benchmarks/pneumoniamnist.py --refit
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
#: The winning configuration of this benchmark (see benchmarks/README.md, "Prevalence-robust
#: selection (2026-12-02)"): the row with the highest validation AUC (to 3 decimals), ties
#: broken by validation balanced accuracy (before 2026-12-02: by accuracy, which depends on
#: the validation prevalence). ``kind`` is "probe" (a frozen backbone + logistic regression),
#: "partial" (PartiallyFrozenClassifier) or "vote" (a soft vote of several); a "prior_shift"
#: or a "threshold" wraps it (see best_pipeline). The winner is the prior shift from the
#: training classes' balance to a balanced one: PriorShiftClassifier computes it from the
#: labels given to fit, and it predicts as a threshold at the training prevalence of
#: pneumonia would (train 3,477 / 4,690 = 0.741, the measured row; train + val 3,866 / 5,214).
BEST = {"kind": "partial", "model": "efficientnet_lite0", "trainable_blocks": 3, "image_size": 64,
        "max_epochs": 8, "augment_views": 2, "prior_shift": "balanced"}
#: The partial-freezing winner of 2026-11-26 (the prevalence study's starting point).
BEST_PARTIAL = {"model": "efficientnet_lite0", "trainable_blocks": 3, "image_size": 64,
                "max_epochs": 8, "augment_views": 2}


def best_pipeline(cache="auto"):
    """The best configuration found here, unfitted, whatever kind it is.

    The contract (what the maintainers score on the official test split): fit on
    ``(n, 28, 28)`` uint8 PneumoniaMNIST arrays (or any input FrozenBackbone takes) and their
    labels as :func:`load` gives them (integers, 0 normal, 1 pneumonia); ``predict`` gives
    those labels and ``predict_proba(X)[:, 1]`` the probability of pneumonia. Kinds of
    ``BEST``: "probe", a Pipeline (frozen backbone, standardisation, L2-regularised logistic
    regression with the ``C`` chosen on the validation split); "partial", a
    :class:`~featcache.PartiallyFrozenClassifier` with the parameters chosen on it; "vote", a
    soft ``VotingClassifier`` of such classifiers (``members``). A "prior_shift" in ``BEST``
    wraps it in :class:`featcache.probe.PriorShiftClassifier` with that ``target_prior``
    (``"balanced"``: pneumonia when the model's probability is at least the pneumonia
    prevalence of the labels given to fit; ``predict_proba`` is the adjusted probability). A
    "threshold" wraps it instead: a number in ``FixedThresholdClassifier`` (pneumonia when its
    probability is at least that), ``"tuned"`` in ``TunedThresholdClassifierCV`` choosing the
    threshold of best balanced accuracy on a stratified 20% of the training data, then
    refitting on all of it (:func:`featcache.probe.tuned_threshold`); ``predict_proba`` is the
    wrapped model's either way.
    """
    threshold, shift = BEST.get("threshold"), BEST.get("prior_shift")
    if BEST["kind"] == "probe":
        return _probe_pipeline(BEST, cache)
    if BEST["kind"] == "vote":
        from sklearn.ensemble import VotingClassifier

        model = VotingClassifier([(name, _partial(params, cache))
                                  for name, params in BEST["members"]], voting="soft")
    else:
        model = _partial(BEST, cache)
    if shift is not None:
        from featcache.probe import PriorShiftClassifier

        return PriorShiftClassifier(model, target_prior=shift)
    if threshold is None:
        return model
    if threshold == "tuned":
        from featcache.probe import tuned_threshold

        return tuned_threshold(model, cv=0.2, refit=True, random_state=0)
    from sklearn.model_selection import FixedThresholdClassifier

    return FixedThresholdClassifier(model, threshold=threshold)


def _partial(params, cache):
    from featcache import PartiallyFrozenClassifier

    chosen = {k: v for k, v in params.items()
              if k not in ("kind", "model", "threshold", "prior_shift")}
    return PartiallyFrozenClassifier(params["model"], cache=cache,
                                     **{"random_state": 0, **chosen})


def _probe_pipeline(params, cache):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from featcache import FrozenBackbone

    return Pipeline([
        ("backbone", FrozenBackbone(params["model"], image_size=params["image_size"],
                                    layer=params["layer"], cache=cache)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(C=params["C"], max_iter=5000)),
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


# ------------------------------------------------------------------ the prevalence study
#: Published class balance of the official test split: 234 normal / 390 pneumonia.
TEST_PREVALENCE = 390 / 624


def _acc_at(prevalence):
    """``values`` for :func:`featcache.probe.metrics.bootstrap_metrics`: the binary metrics
    plus ``acc_at_prevalence`` = prevalence * sensitivity + (1 - prevalence) * specificity,
    the accuracy the same operating point would have where ``prevalence`` of the inputs are
    positive (sensitivity and specificity do not depend on prevalence)."""
    from featcache.probe.metrics import binary_values

    def values(yi, pi, score, k):
        out = binary_values(yi, pi, score, k)
        out["acc_at_prevalence"] = (prevalence * out["sensitivity"]
                                    + (1 - prevalence) * out["specificity"])
        return out

    return values


def prevalence_row(name, estimator, X_val, y_val, n_bootstrap, fit_s, models):
    """Score a fitted classifier on val with :func:`featcache.evaluate`; one result row.

    The bootstrap intervals of ``acc_at_prevalence`` come from the same resamples as
    evaluate's (same seed, same sample count): its predictions and scores are re-bootstrapped
    with the extra metric.
    """
    import featcache
    from featcache.probe.metrics import bootstrap_metrics

    start = time.perf_counter()
    report = featcache.evaluate(estimator, X_val, y_val, n_bootstrap=n_bootstrap,
                                random_state=0, held_out=True)
    positive = report.classes[1]
    yi = (np.asarray(report.y_true) == positive).astype(int)
    pi = (np.asarray(report.y_pred) == positive).astype(int)
    metrics = bootstrap_metrics(yi, pi, np.asarray(report.y_score), 2, n_bootstrap, 0,
                                values=_acc_at(TEST_PREVALENCE))
    for key, metric in report.metrics.items():  # evaluate's own numbers, where it has them
        metrics[key] = metric
    threshold = report.operating_point.get("threshold", "argmax")
    shown = threshold if isinstance(threshold, str) else f"{threshold:.3f}"
    m = metrics
    print(f"  {name}: AUC {m['roc_auc'].value:.4f} ACC {m['accuracy'].value:.4f} "
          f"bACC {m['balanced_accuracy'].value:.4f} sens {m['sensitivity'].value:.3f} "
          f"spec {m['specificity'].value:.3f} ACC@{TEST_PREVALENCE:.3f} "
          f"{m['acc_at_prevalence'].value:.4f} (threshold {shown}; scored in "
          f"{time.perf_counter() - start:.0f} s)", flush=True)
    return {"name": name, "metrics": metrics, "threshold": threshold, "fit_s": fit_s,
            "models": models}


def _fit_timed(estimator, X, y):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        estimator.fit(X, y)
    return estimator, time.perf_counter() - start


def run_prevalence(args):
    """Candidates trained on train only, scored on val; selection on prevalence-free numbers.

    Models (each fitted once, on train): the current winner ``BEST`` (seed 0), the same with
    ``class_weight="balanced"``, with seed 1, with 2 trainable stages, the same as the winner
    on a stratified 80% of train (the other 20% held out, to choose a threshold and calibrate
    on data val never sees), and the frozen probe (96 px ``blocks.4`` + logistic). The
    candidates combine them with scikit-learn's own wrappers (``FrozenEstimator`` keeps a
    fitted model from being refitted): thresholds (``FixedThresholdClassifier``,
    ``TunedThresholdClassifierCV``), ``CalibratedClassifierCV``, ``VotingClassifier``, and
    ``tta_views``.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import VotingClassifier
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import FixedThresholdClassifier, StratifiedShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featcache import FrozenBackbone, PartiallyFrozenClassifier
    from featcache.probe import tuned_threshold

    X_train, y_train, X_val, y_val = _limited(args)
    prior = float(np.mean(y_train == 1))
    print(f"PneumoniaMNIST prevalence study: {len(y_train)} train ({prior:.3f} pneumonia) / "
          f"{len(y_val)} val ({np.mean(y_val == 1):.3f}); ACC@{TEST_PREVALENCE:.3f} is the "
          f"accuracy at the published test prevalence; cache {args.cache}", flush=True)
    base = {k: v for k, v in BEST_PARTIAL.items() if k != "model"}
    base.update(image_size=args.partial_size, max_epochs=args.partial_epochs)

    def pfc(**params):
        return PartiallyFrozenClassifier(BEST_PARTIAL["model"], cache=args.cache,
                                         progress=False, **{**base, "random_state": 0,
                                                            **params})

    n = args.n_bootstrap
    rows = []
    best, t_best = _fit_timed(pfc(), X_train, y_train)
    print(f"  fitted the winner of 2026-11-26 in {t_best:.0f} s", flush=True)
    rows.append(prevalence_row("BEST (2026-11-26): 3 trainable, augment_views=2, seed 0",
                               best, X_val, y_val, n, t_best, 1))
    rows.append(prevalence_row(
        f"BEST, threshold = train prevalence {prior:.3f} (prior shift to balanced classes)",
        FixedThresholdClassifier(FrozenEstimator(best), threshold=prior).fit(X_train, y_train),
        X_val, y_val, n, t_best, 1))
    for k in args.tta:
        rows.append(prevalence_row(f"BEST, tta_views={k}", best.set_params(tta_views=k), X_val,
                                   y_val, n, t_best, 1))
        rows.append(prevalence_row(
            f"BEST, tta_views={k}, threshold = train prevalence {prior:.3f}",
            FixedThresholdClassifier(FrozenEstimator(best), threshold=prior)
            .fit(X_train, y_train), X_val, y_val, n, t_best, 1))
    best.set_params(tta_views=0)

    balanced, t_bal = _fit_timed(pfc(class_weight="balanced"), X_train, y_train)
    rows.append(prevalence_row('BEST, class_weight="balanced"', balanced, X_val, y_val, n,
                               t_bal, 1))
    for k in args.tta:
        rows.append(prevalence_row(f'BEST, class_weight="balanced", tta_views={k}',
                                   balanced.set_params(tta_views=k), X_val, y_val, n, t_bal, 1))

    # A threshold and a calibration chosen on 20% of train held out from an 80% model.
    split = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    fit_idx, hold_idx = next(split.split(X_train, y_train))
    tuned, t_tuned = _fit_timed(tuned_threshold(pfc(), cv=0.2, refit=False, random_state=0),
                                X_train, y_train)
    sub = tuned.estimator_
    rows.append(prevalence_row(
        "80% model, threshold tuned for balanced accuracy on the 20% train holdout "
        "(TunedThresholdClassifierCV)", tuned, X_val, y_val, n, t_tuned, 1))
    cut = float(tuned.best_threshold_)
    rows.append(prevalence_row(
        f"BEST, that tuned threshold ({cut:.3f}): TunedThresholdClassifierCV(cv=0.2, "
        "refit=True)", FixedThresholdClassifier(FrozenEstimator(best), threshold=cut)
        .fit(X_train, y_train), X_val, y_val, n, t_best + t_tuned, 2))
    calibrated = CalibratedClassifierCV(FrozenEstimator(sub), method="sigmoid")
    calibrated.fit(X_train[hold_idx], y_train[hold_idx])
    rows.append(prevalence_row("80% model, sigmoid-calibrated on the 20% holdout "
                               "(CalibratedClassifierCV)", calibrated, X_val, y_val, n,
                               t_tuned, 1))
    rows.append(prevalence_row(
        f"80% model, calibrated, threshold = train prevalence {prior:.3f}",
        FixedThresholdClassifier(FrozenEstimator(calibrated), threshold=prior)
        .fit(X_train, y_train), X_val, y_val, n, t_tuned, 1))

    seed1, t_s1 = _fit_timed(pfc(random_state=1), X_train, y_train)
    rows.append(prevalence_row("BEST, seed 1", seed1, X_val, y_val, n, t_s1, 1))
    two, t_two = _fit_timed(pfc(trainable_blocks=2), X_train, y_train)
    rows.append(prevalence_row("2 trainable, augment_views=2, seed 0", two, X_val, y_val, n,
                               t_two, 1))
    members = [("tb3_s0", best), ("tb3_s1", seed1), ("tb2_s0", two)]
    t_members = t_best + t_s1 + t_two

    def vote(estimators):
        frozen = [(name, FrozenEstimator(est)) for name, est in estimators]
        return VotingClassifier(frozen, voting="soft").fit(X_train, y_train)

    ensemble = vote(members)
    rows.append(prevalence_row("soft vote: BEST seeds 0 and 1 + 2 trainable",
                               ensemble, X_val, y_val, n, t_members, 3))
    rows.append(prevalence_row(
        f"soft vote, threshold = train prevalence {prior:.3f}",
        FixedThresholdClassifier(FrozenEstimator(ensemble), threshold=prior)
        .fit(X_train, y_train), X_val, y_val, n, t_members, 3))
    for k in args.tta:
        for _, est in members:
            est.set_params(tta_views=k)
        rows.append(prevalence_row(f"soft vote, tta_views={k}", vote(members), X_val, y_val, n,
                                   t_members, 3))
        rows.append(prevalence_row(
            f"soft vote, tta_views={k}, threshold = train prevalence {prior:.3f}",
            FixedThresholdClassifier(FrozenEstimator(vote(members)), threshold=prior)
            .fit(X_train, y_train), X_val, y_val, n, t_members, 3))
    for _, est in members:
        est.set_params(tta_views=0)
    if args.prevalence_probe:
        probe_model, t_probe = _fit_timed(make_pipeline(
            FrozenBackbone("efficientnet_lite0", image_size=96, layer="blocks.4",
                           cache=args.cache, progress=False),
            StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)), X_train, y_train)
        rows.append(prevalence_row("frozen probe: 96 px blocks.4 + logistic (C=0.1)",
                                   probe_model, X_val, y_val, n, t_probe, 1))
        rows.append(prevalence_row("soft vote of the three + the frozen probe",
                                   vote(members + [("probe", probe_model)]), X_val, y_val, n,
                                   t_members + t_probe, 4))
    return rows


def _prevalence_key(row):
    """Selection without the val prevalence: AUC to 3 decimals, then balanced accuracy."""
    m = row["metrics"]
    return round(m["roc_auc"].value, 3), round(m["balanced_accuracy"].value, 3)


def prevalence_table(rows) -> str:
    def ci(m):
        return f"{m.value:.3f} [{m.ci_low:.3f}, {m.ci_high:.3f}]"

    lines = ["| candidate | threshold | val AUC [95% CI] | ACC [95% CI] | balanced ACC [95% CI] "
             f"| sensitivity | specificity | ACC@{TEST_PREVALENCE:.3f} [95% CI] | Brier "
             "| train fit s (models) |",
             "|---|---:|---|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        m, t = r["metrics"], r["threshold"]
        lines.append(
            f"| {r['name']} | {t if isinstance(t, str) else f'{t:.3f}'} | {ci(m['roc_auc'])} | "
            f"{ci(m['accuracy'])} | {ci(m['balanced_accuracy'])} | "
            f"{m['sensitivity'].value:.3f} | {m['specificity'].value:.3f} | "
            f"{ci(m['acc_at_prevalence'])} | {m['brier'].value:.4f} | "
            f"{r['fit_s']:.0f} ({r['models']}) |")
    return "\n".join(lines)


def _limited(args):
    X_train, y_train, X_val, y_val = load(args.data)
    if args.limit:
        return X_train[:args.limit], y_train[:args.limit], X_val[:args.limit], y_val[:args.limit]
    return X_train, y_train, X_val, y_val


def refit_best(args):
    """Fit ``best_pipeline()`` on train + val (all 5,214 images), as the maintainers will."""
    X_train, y_train, X_val, y_val = _limited(args)
    X, y = np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])
    print(f"refit of best_pipeline() = {best_pipeline(cache=args.cache)!r}", flush=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    cpu = time.process_time()
    model, seconds = _fit_timed(best_pipeline(cache=args.cache), X, y)
    cpu = time.process_time() - cpu
    print(f"best_pipeline() fitted on train + val ({len(y)} images) in {seconds:.0f} s wall, "
          f"{cpu:.0f} s CPU of this process; load average after: {os.getloadavg()}",
          flush=True)
    proba, labels = model.predict_proba(X_val), model.predict(X_val)
    assert proba.shape == (len(X_val), 2) and set(np.unique(labels)) <= {0, 1}
    print(f"(a sanity check, not a score: val is in this fit) predict_proba shape "
          f"{proba.shape}, val ACC {np.mean(labels == y_val):.3f}", flush=True)
    return seconds


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
    parser.add_argument("--prevalence", action="store_true",
                        help="run only the prevalence study (candidates on train, scored on "
                             "val with featcache.evaluate; --partial-size/--partial-epochs "
                             "apply)")
    parser.add_argument("--tta", type=lambda t: [int(b) for b in _csv(t)], default=[2, 4],
                        help="tta_views of the prevalence study's test-time-augmentation rows")
    parser.add_argument("--prevalence-probe", action=argparse.BooleanOptionalAction,
                        default=True, help="the frozen-probe rows of the prevalence study")
    parser.add_argument("--limit", type=int, default=0,
                        help="--prevalence and --refit: only the first N train and N val "
                             "images (a smoke run)")
    parser.add_argument("--refit", action="store_true",
                        help="only fit best_pipeline() on train + val and time it")
    args = parser.parse_args(argv)
    args.cache = args.cache or _default_cache_dir()
    start = time.perf_counter()
    if args.refit:
        refit_best(args)
        return 0
    if args.prevalence:
        rows = run_prevalence(args)
        print("\n" + prevalence_table(rows))
        winner = max(rows, key=_prevalence_key)
        print(f"\nbest (highest val AUC to 3 decimals, then balanced accuracy): "
              f"{winner['name']}")
        print(f"total {time.perf_counter() - start:.0f} s on {os.cpu_count()} CPU cores, load "
              f"average {os.getloadavg()}; validation numbers (train on train, select on val),"
              " not test")
        return 0
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
