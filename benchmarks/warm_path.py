"""The warm path (issue #11): what a rerun costs when every row is already in the cache.

All four measurements run in one invocation on this machine, each with its own cache in a
temporary directory (removed at the end), the default backbone at 32 px. Prints one markdown
table, measurement | value | target | met?:

1. ``featcache extract DIR --cache C --image-size 32 --quiet`` rerun over 400 PNG files
   (28x28 PneumoniaMNIST train images) already in the cache, wall time of the subprocess
   (target: under 1 s), next to ``python -c "import featcache"`` as the floor, and whether
   the rerun imported torch (a separate, untimed run through ``runpy``; not with ``--quick``).
2. ``GridSearchCV(Pipeline([backbone, LogisticRegression(max_iter=200)]),
   {"clf__C": [0.1, 1, 10]}, cv=3)`` on 1,000 train images with a warm cache, ``n_jobs=2``
   (fresh joblib workers) vs ``n_jobs=1`` (target: ``n_jobs=2`` no slower). ``n_jobs=1`` runs
   with BLAS limited to one thread, as joblib limits each of the two workers
   (``cpu_count // n_jobs``): the head then does the same work on both sides. (Without the
   limit, the head's two BLAS threads on a busy 2-core machine made ``n_jobs=1`` 20x slower
   than the same fits on one thread, which says nothing about the cache.) The floor: the same
   search on the embeddings as a numpy matrix (no featcache), ``n_jobs=2`` with fresh workers
   vs ``n_jobs=1``: what joblib's process start costs any scikit-learn search. And searches
   of realistic size (every train image, 6 and 12 C values, 5 folds: 30 and 60 fits) with
   ``n_jobs=2`` vs ``n_jobs=1`` (target: no slower), each next to the same search on the
   numpy matrix. ``n_jobs=2`` once more, with joblib's workers already started, is reported
   for information.
3. A new process doing ``FrozenBackbone(image_size=32, cache=C).fit(X).transform(X)`` on the
   4,690 cached train images, timed inside the child (target: under 0.5 s), and whether the
   child imported torch.
4. 200 random-noise 580x580 RGB uncompressed TIFF files (1.01 MB each), embedded once (a
   ``fit_transform`` in this process, the same call the child makes), evicted from the page
   cache (fsync + ``POSIX_FADV_DONTNEED``), then a new process does
   ``FrozenBackbone(image_size=32, cache=C).fit(paths).transform(paths)``; the child reads
   ``/proc/self/io`` before and after (target: under 5% of the files' bytes). ``rchar`` counts
   every byte the process got from ``read()``-like calls (the network's weights and any Python
   modules imported on the way included; page cache or not), ``read_bytes`` the bytes fetched
   from storage. An audit hook counts how many of the 200 files the child opened.

Files written for items 1 and 4 are left to *settle* before they are first embedded: the key
memo remembers a file's key only once its mtime and ctime are older than the racily-clean
window (``FEATCACHE_RACY_WINDOW``, 3 s by default; :mod:`featcache.cache.identity`), and a
rerun right after the files were written would hash them all again. The benchmark waits until
the newest file is older than the window (the wait is printed in the table) and measures what
a user rerunning over files written more than a few seconds earlier gets; it does not shorten
the window.

Subprocess timings are the median of ``--repeats`` runs (3; 1 with ``--quick``). The machine
is shared: its load average is printed with the table.

    .venv/bin/python benchmarks/warm_path.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from featcache import FrozenBackbone
from featcache.cache.identity import racy_window_ns

DATA = Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist_trainval.npz"
IMAGE_SIZE = 32
PARAMS = dict(image_size=IMAGE_SIZE, progress=False)
FULL = dict(extract_files=400, grid_n=1000, transform_n=4690, io_files=200)
QUICK = dict(extract_files=40, grid_n=150, transform_n=300, io_files=10)

# Item 1, untimed: did the CLI rerun import torch? (runs the documented module as __main__)
CLI_TORCH = """
import atexit, runpy, sys
atexit.register(lambda: print("TORCH_IMPORTED=%s" % ("torch" in sys.modules)))
sys.argv = ["featcache"] + sys.argv[1:]
runpy.run_module("featcache.cli", run_name="__main__", alter_sys=True)
"""

# Item 3: fit + transform of cached arrays in a new process, timed inside it.
NEW_PROCESS_TRANSFORM = """
import json, sys, time
import numpy as np
from featcache import FrozenBackbone
X = np.load(sys.argv[1])["train_images"][: int(sys.argv[2])]
torch_before = "torch" in sys.modules
t0 = time.perf_counter()
b = FrozenBackbone(image_size=int(sys.argv[3]), cache=sys.argv[4], progress=False).fit(X)
t1 = time.perf_counter()
Z = b.transform(X)
t2 = time.perf_counter()
print(json.dumps({"fit": t1 - t0, "total": t2 - t0, "rows": len(Z),
                  "torch_before": torch_before, "torch": "torch" in sys.modules,
                  "stats": {k: v for k, v in dict(b.transform_stats_).items()
                            if isinstance(v, (int, float))}}))
"""

# Item 4: bytes read by fit + transform of cached files in a new process.
NEW_PROCESS_IO = """
import json, sys, time
from featcache import FrozenBackbone

def io():
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}

paths = open(sys.argv[1]).read().splitlines()
wanted = set(paths)
opened = set()

def hook(event, args):
    if event == "open" and args and isinstance(args[0], str) and args[0] in wanted:
        opened.add(args[0])

sys.addaudithook(hook)
torch_before = "torch" in sys.modules
start = io()
t0 = time.perf_counter()
b = FrozenBackbone(image_size=int(sys.argv[2]), cache=sys.argv[3], progress=False).fit(paths)
t1 = time.perf_counter()
after_fit = io()
Z = b.transform(paths)
t2 = time.perf_counter()
end = io()
print(json.dumps({"fit": t1 - t0, "total": t2 - t0, "rows": len(Z),
                  "rchar": end["rchar"] - start["rchar"],
                  "rchar_fit": after_fit["rchar"] - start["rchar"],
                  "read_bytes": end["read_bytes"] - start["read_bytes"],
                  "read_bytes_fit": after_fit["read_bytes"] - start["read_bytes"],
                  "opened": len(opened), "torch_before": torch_before,
                  "torch": "torch" in sys.modules,
                  "stats": {k: v for k, v in dict(b.transform_stats_).items()
                            if isinstance(v, (int, float))}}))
"""


def run(args, **kwargs):
    """Run a subprocess; return (stdout, wall seconds). Raise with its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{args[:4]}... exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout, wall


def child_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def extract_cmd(directory, cache):
    return [sys.executable, "-m", "featcache.cli", "extract", str(directory), "--cache",
            str(cache), "--image-size", str(IMAGE_SIZE), "--quiet"]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def evict(paths):
    """Drop the files' pages from the page cache, so read_bytes sees what a rerun fetches."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def settle(paths) -> float:
    """Wait until every file is older than the racily-clean window; the seconds waited."""
    window = racy_window_ns()
    newest = max(max(st.st_mtime_ns, st.st_ctime_ns) for st in map(os.stat, paths))
    waited = 0.0
    while (late := newest + window - time.time_ns()) > 0:
        time.sleep(late / 1e9 + 0.01)
        waited += late / 1e9 + 0.01
    return waited


def settled_row(item, n, waited):
    return (f"{item}. files left to settle before the first run (racily-clean window "
            f"{racy_window_ns() / 1e9:g} s)", f"waited {waited:.1f} s for {n} files", "", "")


def yes(flag):
    return "yes" if flag else "no"


def met(ok):
    return "**yes**" if ok else "**NO**"


def fresh_workers():
    """Shut joblib's reusable worker pool down, so the next n_jobs=2 call starts fresh workers."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def numpy_search(F, y, n_jobs, Cs, cv):
    """The same search as item 2 on a feature matrix: what joblib costs without featcache."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GridSearchCV(LogisticRegression(max_iter=200), {"C": Cs}, cv=cv,
                            n_jobs=n_jobs).fit(F, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per subprocess timing, median reported (3; 1 with --quick)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    with np.load(DATA) as data:
        images, labels = data["train_images"], data["train_labels"].ravel()
    rows = []
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featcache-warm-path-") as tmp:
        tmp = Path(tmp)

        # 1. featcache extract rerun over cached PNG files.
        n1 = sizes["extract_files"]
        png_dir = tmp / "pngs"
        png_dir.mkdir()
        for i in range(n1):
            Image.fromarray(images[i]).save(png_dir / f"{i:05d}.png")
        waited1 = settle(list(png_dir.iterdir()))
        cache1 = tmp / "cache-extract"
        _, cold1 = run(extract_cmd(png_dir, cache1))
        reruns = [run(extract_cmd(png_dir, cache1)) for _ in range(repeats)]
        rerun = statistics.median(wall for _, wall in reruns)
        summary = " ".join(reruns[-1][0].split()).replace("|", "/")
        floor = statistics.median(run([sys.executable, "-c", "import featcache"])[1]
                                  for _ in range(repeats))
        if args.quick:   # one process start fewer (each loads the network today)
            cli_torch = None
        else:
            out, _ = run([sys.executable, "-c", CLI_TORCH, *extract_cmd(png_dir, cache1)[3:]])
            cli_torch = "TORCH_IMPORTED=True" in out
        rows += [
            (f"1. `featcache extract` rerun, {n1} cached PNG files (wall)", f"{rerun:.2f} s",
             "< 1 s", met(rerun < 1.0)),
            ("1. `python -c \"import featcache\"` (wall, the floor)", f"{floor:.2f} s", "", ""),
            ("1. the rerun imported torch", "not checked (--quick)" if cli_torch is None
             else yes(cli_torch), "", ""),
            ("1. cold extract, first run (for reference)", f"{cold1:.2f} s", "", ""),
            ("1. the rerun's summary", f"`{summary}`", "", ""),
            settled_row(1, n1, waited1),
        ]

        # 2. GridSearchCV on a warm cache, n_jobs=2 vs n_jobs=1.
        n2 = sizes["grid_n"]
        X2, y2 = images[:n2], labels[:n2]
        cache2 = tmp / "cache-grid"
        FrozenBackbone(cache=str(cache2), **PARAMS).fit_transform(X2)

        def search(n_jobs, X=X2, y=y2, grid=None, cv=3):
            pipe = Pipeline([
                ("backbone", FrozenBackbone(cache=str(cache2), **PARAMS)),
                ("clf", LogisticRegression(max_iter=200)),
            ])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                return GridSearchCV(pipe, grid or {"clf__C": [0.1, 1, 10]}, cv=cv,
                                    n_jobs=n_jobs).fit(X, y)

        with threadpool_limits(1):   # as joblib limits each of the n_jobs=2 workers
            _, grid1 = timed(lambda: search(1))
        fresh_workers()
        _, grid2 = timed(lambda: search(2))
        _, grid2_again = timed(lambda: search(2))
        # The floor: the same search on the embeddings as a numpy matrix (no featcache at all).
        F2 = FrozenBackbone(cache=str(cache2), **PARAMS).fit_transform(X2)
        with threadpool_limits(1):
            _, plain1 = timed(lambda: numpy_search(F2, y2, 1, [0.1, 1, 10], 3))
        fresh_workers()
        _, plain2 = timed(lambda: numpy_search(F2, y2, 2, [0.1, 1, 10], 3))
        # Searches of realistic size: every train image, 6 and 12 C values, 5 folds (30 and 60
        # fits), on the warm cache and, for joblib's share, on the numpy matrix.
        nr = sizes["transform_n"]
        Xr, yr = images[:nr], labels[:nr]
        Fr = FrozenBackbone(cache=str(cache2), **PARAMS).fit_transform(Xr)
        realistic = []
        for n_C in (6, 12):
            Cs = list(np.logspace(-3, 1, n_C))
            big = dict(grid={"clf__C": Cs}, cv=5)
            with threadpool_limits(1):
                _, real1 = timed(lambda: search(1, Xr, yr, **big))
                _, floor1 = timed(lambda: numpy_search(Fr, yr, 1, Cs, 5))
            fresh_workers()
            _, real2 = timed(lambda: search(2, Xr, yr, **big))
            fresh_workers()
            _, floor2 = timed(lambda: numpy_search(Fr, yr, 2, Cs, 5))
            realistic += [
                (f"2. realistic search, {n_C} C x 5 folds, {nr} images, warm cache: n_jobs=1 / "
                 "n_jobs=2 fresh", f"{real1:.2f} s / {real2:.2f} s", "", ""),
                (f"2. ratio n_jobs=2 / n_jobs=1, {n_C} C x 5 folds", f"{real2 / real1:.2f}x",
                 "<= 1.0x", met(real2 <= real1)),
                (f"2. the floor, {n_C} C x 5 folds on the numpy matrix: n_jobs=1 / n_jobs=2 "
                 "fresh", f"{floor1:.2f} s / {floor2:.2f} s = {floor2 / floor1:.2f}x", "", ""),
            ]
        rows += [
            (f"2. GridSearchCV 3 C x 3 folds, {n2} images, warm cache, n_jobs=1 (BLAS 1 thread)",
             f"{grid1:.2f} s", "", ""),
            ("2. same, n_jobs=2 (fresh joblib workers)", f"{grid2:.2f} s", "", ""),
            ("2. ratio n_jobs=2 / n_jobs=1", f"{grid2 / grid1:.2f}x", "<= 1.0x",
             met(grid2 <= grid1)),
            ("2. n_jobs=2 again, workers already started (for reference)",
             f"{grid2_again:.2f} s ({grid2_again / grid1:.2f}x)", "", ""),
            ("2. the floor: same search on the numpy matrix, n_jobs=2 fresh / n_jobs=1",
             f"{plain2:.2f} s / {plain1:.2f} s = {plain2 / plain1:.2f}x", "", ""),
            ("2. featcache's share: (n_jobs=2 fresh, warm cache) - (same on the numpy matrix)",
             f"{grid2 - plain2:+.2f} s", "", ""),
        ] + realistic

        # 3. New process: fit + transform of cached arrays.
        n3 = sizes["transform_n"]
        cache3 = tmp / "cache-transform"
        FrozenBackbone(cache=str(cache3), **PARAMS).fit_transform(images[:n3])
        children = [run([sys.executable, "-c", NEW_PROCESS_TRANSFORM, str(DATA), str(n3),
                         str(IMAGE_SIZE), str(cache3)]) for _ in range(repeats)]
        results = [child_json(out) for out, _ in children]
        total3 = statistics.median(r["total"] for r in results)
        fit3 = statistics.median(r["fit"] for r in results)
        wall3 = statistics.median(wall for _, wall in children)
        computed3 = max(r["stats"].get("computed", 0) for r in results)
        rows += [
            (f"3. new process, fit + transform of {n3} cached images (inside the child)",
             f"{total3:.3f} s", "< 0.5 s", met(total3 < 0.5)),
            ("3. of which fit", f"{fit3:.3f} s", "", ""),
            ("3. torch imported in the child", yes(any(r["torch"] for r in results)), "", ""),
            ("3. the child's wall time, interpreter start and imports included",
             f"{wall3:.2f} s (computed {computed3})", "", ""),
        ]

        # 4. Bytes a new process reads to fit + transform cached ~1 MB files.
        n4 = sizes["io_files"]
        big_dir = tmp / "big"
        big_dir.mkdir()
        rng = np.random.default_rng(0)
        paths = []
        for i in range(n4):
            path = big_dir / f"{i:04d}.tif"   # uncompressed: 20x faster to write than PNG
            Image.fromarray(rng.integers(0, 256, size=(580, 580, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
        total_bytes = sum(os.path.getsize(p) for p in paths)
        waited4 = settle(paths)
        cache4 = tmp / "cache-io"   # filled in this process: its network is already loaded
        FrozenBackbone(cache=str(cache4), **PARAMS).fit_transform(paths)
        list_file = tmp / "paths.txt"
        list_file.write_text("\n".join(paths))
        evict(paths)
        out, _ = run([sys.executable, "-c", NEW_PROCESS_IO, str(list_file), str(IMAGE_SIZE),
                      str(cache4)])
        io = child_json(out)
        rchar_pct = 100 * io["rchar"] / total_bytes
        read_pct = 100 * io["read_bytes"] / total_bytes
        mb = 1e6
        rows += [
            (f"4. new process, fit + transform of {n4} cached files ({total_bytes / mb:.0f} MB): "
             "rchar",
             f"{rchar_pct:.1f}% ({io['rchar'] / mb:.1f} MB; fit {io['rchar_fit'] / mb:.1f} MB)",
             "< 5%", met(rchar_pct < 5)),
            ("4. same, read_bytes (from storage, files evicted from the page cache first)",
             f"{read_pct:.1f}% ({io['read_bytes'] / mb:.1f} MB)", "< 5%", met(read_pct < 5)),
            ("4. image files the child opened", f"{io['opened']} of {n4}", "", ""),
            settled_row(4, n4, waited4),
            ("4. fit + transform inside the child (for reference)",
             f"{io['total']:.2f} s (torch imported: {yes(io['torch'])})", "", ""),
        ]
    elapsed = time.perf_counter() - started
    print(f"Warm path, efficientnet_lite0 at {IMAGE_SIZE} px, {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after; "
          f"subprocess timings are the median of {repeats}; whole run {elapsed:.0f} s"
          f"{' (--quick sizes)' if args.quick else ''}\n")
    print("| measurement | value | target | met? |")
    print("|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
