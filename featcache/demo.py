"""`make demo`: the main job on the bundled data, offline.

Embeds the bundled PneumoniaMNIST chest X-rays (train and validation splits) with the frozen
EfficientNet-Lite0 (its blocks.4 output by default: the best layer in benchmarks/README.md),
caching the embeddings and recording each image's label and split in the
cache; runs the linear probe (logistic regression, ``C`` chosen on the validation split) and
prints its report with 95% bootstrap intervals; extracts again to show the warm cache; writes
the report and its plots to ``--out``.

    python -m featcache.demo [--image-size 128] [--layer blocks.4] [--n-train N] [--n-val N]
                             [--cache DIR] [--out DIR] [--n-bootstrap 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .cache import FeatureCache
from .exceptions import FeatcacheError
from .frozen_backbone import FrozenBackbone
from .inputs import as_items, content_key
from .probe import linear_probe

DATA = Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist_trainval.npz"
CLASS_NAMES = np.array(["normal", "pneumonia"])


def load_pneumoniamnist(path=DATA, n_train=None, n_val=None):
    """(X_train, y_train, X_val, y_val): 28x28 uint8 arrays and 0/1 labels (1 = pneumonia)."""
    if not Path(path).is_file():
        raise FeatcacheError(f"bundled data not found at '{path}'; run the demo from a featcache "
                             "source checkout (the data/ folder), or pass --data PATH.")
    with np.load(path) as data:
        X_train, y_train = data["train_images"], data["train_labels"].ravel()
        X_val, y_val = data["val_images"], data["val_labels"].ravel()
    return X_train[:n_train], y_train[:n_train], X_val[:n_val], y_val[:n_val]


def extract(X_train, X_val, image_size, layer, cache):
    """Embed both splits; return (F_train, F_val, seconds, computed, cached, fingerprint)."""
    backbone = FrozenBackbone(image_size=image_size, layer=layer, cache=cache)
    start = time.perf_counter()
    F_train = backbone.fit_transform(X_train)
    computed, cached = backbone.transform_stats_["computed"], backbone.transform_stats_["cached"]
    F_val = backbone.transform(X_val)
    computed += backbone.transform_stats_["computed"]
    cached += backbone.transform_stats_["cached"]
    return F_train, F_val, time.perf_counter() - start, computed, cached, backbone.fingerprint_


def annotate(cache_dir, X_train, y_train, X_val, y_val) -> int:
    """Record label, split and source of every image in the cache; returns rows written."""
    items = as_items(X_train) + as_items(X_val)
    keys = [content_key(item, i) for i, item in enumerate(items)]
    labels = [str(v) for v in CLASS_NAMES[np.concatenate([y_train, y_val])]]
    splits = ["train"] * len(X_train) + ["val"] * len(X_val)
    sources = [f"pneumoniamnist:train[{i}]" for i in range(len(X_train))] + \
              [f"pneumoniamnist:val[{i}]" for i in range(len(X_val))]
    cache = FeatureCache(cache_dir)
    # one record per image (its source): byte-identical train/val images keep their own
    known = {r["source"]: r for r in cache.records(keys)}
    todo = [i for i, k in enumerate(keys)
            if (known.get(sources[i]) or {}).get("key") != k
            or known[sources[i]]["label"] != labels[i] or known[sources[i]]["split"] != splits[i]]
    if todo:
        cache.annotate([keys[i] for i in todo], label=[labels[i] for i in todo],
                       split=[splits[i] for i in todo], source=[sources[i] for i in todo])
    return len(todo)


def _timing_table(runs) -> str:
    lines = ["| extraction (train + val) | seconds | images through the network | "
             "read from the cache |", "|---|---:|---:|---:|"]
    for name, (seconds, computed, cached) in runs:
        lines.append(f"| {name} | {seconds:.1f} | {computed} | {cached} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="featcache demo",
                                     description="featcache demo on bundled PneumoniaMNIST")
    parser.add_argument("--image-size", type=int, default=128, help="network input size (px)")
    parser.add_argument("--layer", default="blocks.4",
                        help="layer to embed with ('final': the network's last feature map); "
                             "blocks.4 is the best on this data (benchmarks/README.md)")
    parser.add_argument("--n-train", type=int, default=None, help="use the first N training images")
    parser.add_argument("--n-val", type=int, default=None,
                        help="use the first N validation images")
    parser.add_argument("--cache", default="demo-output/cache", help="cache directory")
    parser.add_argument("--out", default="demo-output", help="folder for the report and plots")
    parser.add_argument("--n-bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--data", default=str(DATA))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    X_train, y_train, X_val, y_val = load_pneumoniamnist(args.data, args.n_train, args.n_val)
    print(f"PneumoniaMNIST: {len(X_train)} train / {len(X_val)} val chest X-rays (28x28 grayscale)")
    layer = None if args.layer == "final" else args.layer
    print(f"backbone: efficientnet_lite0 (ImageNet, frozen), layer {args.layer}, at "
          f"{args.image_size} px; cache: {args.cache}\n")
    F_train, F_val, *cold, fingerprint = extract(X_train, X_val, args.image_size, layer,
                                                 args.cache)
    annotate(args.cache, X_train, y_train, X_val, y_val)
    report = linear_probe(F_train, CLASS_NAMES[y_train], X_val=F_val, y_val=CLASS_NAMES[y_val],
                          n_bootstrap=args.n_bootstrap)
    print(report.to_markdown() + "\n")
    warm = extract(X_train, X_val, args.image_size, layer, args.cache)[2:5]
    print(_timing_table([("first run", cold), ("second run (warm cache)", warm)]))
    if cold[1] == 0:
        print(f"\n(the cache already held every embedding from an earlier run; delete "
              f"{args.cache} to watch a cold run)")
    else:
        print(f"\nwarm cache: the second extraction took {warm[0]:.1f} s instead of "
              f"{cold[0]:.1f} s ({cold[0] / max(warm[0], 1e-9):.0f}x faster): only cache "
              "misses go through the network.")
    out = report.save(args.out)
    print(f"\nwrote {out / 'report.json'}, predictions.csv, roc.png, confusion_matrix.png, "
          f"c_sweep.png\nlabels and splits are recorded in the cache, so the same probe runs "
          f"from the command line:\n  featcache probe {args.cache} --namespace {fingerprint} "
          f"--val val --out {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
