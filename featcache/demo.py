"""`make demo`: the main job on the bundled data, offline.

Trains a logistic-regression head on frozen EfficientNet-Lite0 embeddings of the bundled
PneumoniaMNIST chest X-rays (train split), reports ROC AUC and accuracy on the validation
split, then fits the same pipeline again to show the warm cache.

    python -m featcache.demo [--image-size 128] [--n-train N] [--cache DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist_trainval.npz"


def load_pneumoniamnist(path=DATA, n_train=None):
    """(X_train, y_train, X_val, y_val) as 28x28 uint8 arrays and 0/1 labels."""
    if not Path(path).is_file():
        from .exceptions import FeatcacheError

        raise FeatcacheError(f"bundled data not found at '{path}'; run the demo from a featcache "
                             "source checkout (the data/ folder), or pass --data PATH.")
    with np.load(path) as data:
        X_train, y_train = data["train_images"], data["train_labels"].ravel()
        X_val, y_val = data["val_images"], data["val_labels"].ravel()
    if n_train is not None:
        X_train, y_train = X_train[:n_train], y_train[:n_train]
    return X_train, y_train, X_val, y_val


def build_pipeline(image_size, cache):
    """FrozenBackbone (default model) -> standardise -> logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .transformer import FrozenBackbone

    return Pipeline([
        ("backbone", FrozenBackbone(image_size=image_size, cache=cache)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(C=0.1, max_iter=3000)),
    ])


def run_once(X_train, y_train, X_val, y_val, image_size, cache):
    """Fit on train, score on val; return (auc, accuracy, seconds, rows computed)."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    pipe = build_pipeline(image_size, cache)
    start = time.perf_counter()
    pipe.fit(X_train, y_train)
    computed = pipe.named_steps["backbone"].transform_stats_["computed"]
    proba = pipe.predict_proba(X_val)[:, 1]
    computed += pipe.named_steps["backbone"].transform_stats_["computed"]
    seconds = time.perf_counter() - start
    return roc_auc_score(y_val, proba), accuracy_score(y_val, proba > 0.5), seconds, computed


def main(argv=None):
    parser = argparse.ArgumentParser(description="featcache demo on bundled PneumoniaMNIST")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=None, help="use the first N training images")
    parser.add_argument("--cache", default="demo-output/cache", help="cache directory")
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args(argv)

    X_train, y_train, X_val, y_val = load_pneumoniamnist(args.data, args.n_train)
    print(f"PneumoniaMNIST: {len(X_train)} train / {len(X_val)} val chest X-rays (28x28 grayscale)")
    print(f"backbone: efficientnet_lite0 (ImageNet, frozen) at {args.image_size} px; "
          f"head: logistic regression; cache: {args.cache}\n")
    runs = [("first run", run_once(X_train, y_train, X_val, y_val, args.image_size, args.cache)),
            ("second run", run_once(X_train, y_train, X_val, y_val, args.image_size, args.cache))]
    print("| run | val ROC AUC | val accuracy | seconds | images through the network |")
    print("|---|---:|---:|---:|---:|")
    for name, (auc, acc, seconds, computed) in runs:
        print(f"| {name} | {auc:.4f} | {acc:.4f} | {seconds:.1f} | {computed} |")
    first, second = runs[0][1][2], runs[1][1][2]
    print(f"\nwarm cache: second run {first / second:.0f}x faster than the first "
          "(the network ran only for inputs not yet in the cache).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
