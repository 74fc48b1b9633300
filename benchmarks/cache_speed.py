"""The feature cache at work: cold vs warm transform, grid search on a warm cache, export.

On the PneumoniaMNIST train split (4,690 images) with the default backbone, prints a markdown
table of:

- cold ``transform`` (the network runs) vs warm ``transform`` in the same process and in a
  new process (target: warm at least 100x faster than cold);
- ``GridSearchCV(pipe, {"clf__C": [0.01, 0.1, 1, 10]}, cv=5)`` on a warm cache vs the same
  search on a precomputed numpy feature matrix (target: at most 1.3x);
- exporting the namespace to one ``.h5`` file, and reading it back with plain h5py (target:
  at least 1 GB/s).

    .venv/bin/python benchmarks/cache_speed.py [--image-size 224] [--n 4690]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from featcache import FeatureCache, FrozenBackbone

DATA = Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist_trainval.npz"
GRID = {"C": [0.01, 0.1, 1, 10]}

NEW_PROCESS = """
import sys, time, numpy as np
from featcache import FrozenBackbone
X = np.load(sys.argv[1])["train_images"][: int(sys.argv[2])]
b = FrozenBackbone(image_size=int(sys.argv[3]), cache=sys.argv[4], progress=False).fit(X)
t = time.perf_counter(); b.transform(X); print(time.perf_counter() - t, b.transform_stats_["computed"])
"""


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def grid_search(estimator, X, y, prefix):
    grid = {f"{prefix}{k}": v for k, v in GRID.items()}
    return GridSearchCV(estimator, grid, cv=5, scoring="roc_auc").fit(X, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n", type=int, default=4690)
    args = parser.parse_args()
    with np.load(DATA) as data:
        X, y = data["train_images"][: args.n], data["train_labels"].ravel()[: args.n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        params = dict(image_size=args.image_size, cache=str(cache), progress=False)
        backbone = FrozenBackbone(**params).fit(X)
        features, cold = timed(lambda: backbone.transform(X))
        rows.append(("cold transform (network runs)", cold, f"{len(X) / cold:.1f} img/s"))
        _, warm = timed(lambda: FrozenBackbone(**params).fit(X).transform(X))
        rows.append(("warm fit + transform, same process", warm, f"{cold / warm:.0f}x faster than cold"))
        out = subprocess.run([sys.executable, "-c", NEW_PROCESS, str(DATA), str(args.n),
                              str(args.image_size), str(cache)], capture_output=True, text=True,
                             check=True).stdout.split()
        warm_new = float(out[0])
        rows.append(("warm transform, new process", warm_new,
                     f"{cold / warm_new:.0f}x faster than cold; computed {out[1]}"))

        pipe = Pipeline([("backbone", FrozenBackbone(**params)), ("clf", LogisticRegression(max_iter=1000))])
        _, t_pipe = timed(lambda: grid_search(pipe, X, y, "clf__"))
        _, t_numpy = timed(lambda: grid_search(LogisticRegression(max_iter=1000), features, y, ""))
        rows.append(("GridSearchCV 4 C x 5 folds, numpy features", t_numpy, ""))
        rows.append(("GridSearchCV 4 C x 5 folds, warm cache", t_pipe,
                     f"{t_pipe / t_numpy:.2f}x the numpy search (target <= 1.3x)"))

        export = Path(tmp) / "features.h5"
        _, t_export = timed(lambda: FeatureCache(cache).export(export))
        nbytes = features.nbytes
        rows.append(("export to one .h5", t_export, f"{nbytes / t_export / 1e9:.2f} GB/s"))

        def read_back():
            with h5py.File(export, "r") as f:
                return f["features"][:]

        read_back()
        back, t_read = timed(read_back)
        assert np.array_equal(back[_order(export, X)], features), "exported rows differ"
        rows.append(("read export with plain h5py", t_read, f"{nbytes / t_read / 1e9:.2f} GB/s"))
    print(f"PneumoniaMNIST train, {len(X)} images, efficientnet_lite0 at {args.image_size} px\n")
    print("| step | seconds | note |")
    print("|---|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.3f} | {note} |")


def _order(export, X):
    """Position of each input's row in the export (rows are in shard order, keyed by content)."""
    from featcache.inputs import as_items, content_key

    with h5py.File(export, "r") as f:
        keys = {bytes(k): i for i, k in enumerate(f["keys"][:])}
    return np.array([keys[content_key(item, i)] for i, item in enumerate(as_items(X))])


if __name__ == "__main__":
    main()
