"""Execute notebooks at full size, in place, and record how their outputs were made.

Notebooks are read on GitHub, so some are committed with the outputs of a full-size run.
This script runs one (or every notebook in :data:`FULL_SIZE`) top to bottom with nbclient in
a fresh "python3" kernel, from the notebooks/ folder, with the full-size ``FEATCACHE_NB_*``
parameters and a new temporary work folder (a cold cache, so first-fit timings are real),
then writes it back with its outputs and, under the notebook metadata key ``"featcache"``:

- ``code_digest``: the SHA-256 of every code cell's source, in order (:func:`code_digest`);
- ``parameters``: the ``FEATCACHE_NB_*`` environment the kernel ran with;
- ``executed_at`` (UTC), ``seconds``, ``featcache_version``, ``git_commit``: the commit of the
  featcache source that ran (the checkout ``import featcache`` finds; with ``+dirty`` when it
  had uncommitted changes). To run a clean commit while the working tree has changes, put a
  ``git worktree`` of it first on ``PYTHONPATH``; the kernel inherits the environment.

``tests/test_notebooks.py`` accepts a notebook that is either stripped (no outputs, no
execution counts) or carries outputs that :func:`problems` finds true to its source: the
digest matches the current code cells (editing code without rerunning fails), the parameters
are this file's full-size ones, every code cell ran once, in order, without an error, and the
markdown states every full-size ``NAME=VALUE`` (so the text says what the outputs show).

Usage, from the repository root::

    .venv/bin/python notebooks/run_full.py 05_which_layers_to_freeze.ipynb
    make notebooks          # every notebook in FULL_SIZE

A failing cell raises nbclient's ``CellExecutionError`` and leaves the file untouched.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import featcache

HERE = Path(__file__).resolve().parent

#: Notebooks committed with outputs, and the ``FEATCACHE_NB_*`` parameters of their full run.
#: 05: all the bundled PneumoniaMNIST data at 64 px, 6 epochs, trainable_blocks 0-2 (the
#: benchmark, ``benchmarks/pneumoniamnist.py --partial``, trains 8 epochs and tries 3 too);
#: under an hour on a 2-core CPU shared with other work.
FULL_SIZE = {
    # 03: the network's own input side (224 px; CI runs 64) for the one CT and one MR slice.
    "03_dicom_and_16bit.ipynb": {
        "FEATCACHE_NB_IMAGE_SIZE": "224",
    },
    # 04: PNG files of all the 4690 bundled training images (CI writes 120), embedded by the
    # sharded jobs at 64 px and by the interrupted-then-resumed job at 128 px (as in CI).
    "04_batch_jobs.ipynb": {
        "FEATCACHE_NB_N_IMAGES": "4690",
        "FEATCACHE_NB_IMAGE_SIZE": "64",
        "FEATCACHE_NB_RESUME_IMAGE_SIZE": "128",
    },
    # 01: all the bundled data (4690 train / 524 val) at 128 px, as its markdown suggests.
    "01_quickstart.ipynb": {
        "FEATCACHE_NB_N_TRAIN": "4690",
        "FEATCACHE_NB_N_VAL": "524",
        "FEATCACHE_NB_IMAGE_SIZE": "128",
    },
    # 02: all the bundled data at 64 and 128 px (its defaults; 224 px left out so that the run
    # finishes on the 2-core CPU shared with other work), 1000 bootstrap resamples.
    "02_pneumonia_xray.ipynb": {
        "FEATCACHE_NB_N_TRAIN": "4690",
        "FEATCACHE_NB_N_VAL": "524",
        "FEATCACHE_NB_IMAGE_SIZES": "64,128",
        "FEATCACHE_NB_N_BOOTSTRAP": "1000",
    },
    "05_which_layers_to_freeze.ipynb": {
        "FEATCACHE_NB_N_TRAIN": "4690",
        "FEATCACHE_NB_N_VAL": "524",
        "FEATCACHE_NB_IMAGE_SIZE": "64",
        "FEATCACHE_NB_MAX_EPOCHS": "6",
        "FEATCACHE_NB_BLOCKS": "0,1,2",
        "FEATCACHE_NB_AUGMENT_VIEWS": "2",
        "FEATCACHE_NB_N_BOOTSTRAP": "1000",
    },
    # 06: all the bundled data at 128 px (its defaults), 1000 bootstrap resamples.
    "06_from_fit_to_deployment.ipynb": {
        "FEATCACHE_NB_N_TRAIN": "4690",
        "FEATCACHE_NB_N_VAL": "524",
        "FEATCACHE_NB_IMAGE_SIZE": "128",
        "FEATCACHE_NB_N_BOOTSTRAP": "1000",
    },
}
#: The notebook metadata key of the run record.
METADATA_KEY = "featcache"
#: Seconds one cell may run.
CELL_TIMEOUT_S = 4 * 3600


def code_digest(nb) -> str:
    """SHA-256 (hex) of the sources of ``nb``'s code cells, in order.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        A notebook read with ``nbformat.read(path, as_version=4)``.

    Returns
    -------
    str
        64 hex digits; any change to a code cell's source, or to their number or order,
        changes it (markdown cells and outputs do not).
    """
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


def is_stripped(nb) -> bool:
    """True when no code cell of ``nb`` has outputs or an execution count."""
    return all(not cell.outputs and cell.execution_count is None
               for cell in nb.cells if cell.cell_type == "code")


def problems(nb, name) -> list:
    """Why the outputs committed in ``nb`` are not true to its source; ``[]`` when they are.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        The notebook as committed.
    name : str
        Its file name (the key of :data:`FULL_SIZE`).

    Returns
    -------
    list of str
        One sentence per problem, each saying what to do. A stripped notebook has none.
    """
    if is_stripped(nb):
        return []
    rerun = f"rerun it: .venv/bin/python notebooks/run_full.py {name} (or strip its outputs)"
    if name not in FULL_SIZE:
        return [f"{name} has outputs but no full-size parameters in notebooks/run_full.py "
                f"FULL_SIZE: commit it stripped, or add it there and run run_full.py on it"]
    record = nb.metadata.get(METADATA_KEY)
    if not isinstance(record, dict) or "code_digest" not in record:
        return [f"{name} has outputs but no '{METADATA_KEY}' run record in its metadata "
                f"(outputs saved from an interactive session?): {rerun}"]
    found = []
    if record["code_digest"] != code_digest(nb):
        found.append(f"{name}: its code cells changed since the outputs were made (digest "
                     f"{record['code_digest'][:12]} recorded, {code_digest(nb)[:12]} now): {rerun}")
    if record.get("parameters") != FULL_SIZE[name]:
        found.append(f"{name}: ran with {record.get('parameters')}, expected the full-size "
                     f"parameters {FULL_SIZE[name]}: {rerun}")
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    if counts != list(range(1, len(counts) + 1)):
        found.append(f"{name}: execution counts {counts}, expected 1 to {len(counts)} in "
                     f"order (every code cell run once, top to bottom): {rerun}")
    errors = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              and any(o.output_type == "error" for o in cell.outputs)]
    if errors:
        found.append(f"{name}: cells {errors} hold error outputs: fix them and {rerun}")
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    unstated = [f"{k}={v}" for k, v in FULL_SIZE[name].items()
                if not re.search(rf"\b{k}={re.escape(v)}(?![\w,.])", text)]
    if unstated:
        found.append(f"{name}: its markdown does not state the full-size parameters "
                     f"{' '.join(unstated)} its outputs were made with: say so in its text")
    return found


def _git_commit() -> str | None:
    """The commit of the featcache source the kernel imports (``+dirty``: changes not committed)."""
    source = Path(featcache.__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=source, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def run(name) -> dict:
    """Execute notebook ``name`` (in notebooks/) at full size and write it back with outputs.

    Parameters
    ----------
    name : str
        A key of :data:`FULL_SIZE`.

    Returns
    -------
    dict
        The run record written to the notebook's metadata.
    """
    if name not in FULL_SIZE:
        raise SystemExit(f"run_full.py: no full-size parameters for {name!r}; known: "
                         f"{', '.join(FULL_SIZE)} (add it to FULL_SIZE in notebooks/run_full.py)")
    path = HERE / name
    nb = nbformat.read(path, as_version=4)
    digest, commit = code_digest(nb), _git_commit()
    saved = {k: v for k, v in os.environ.items() if k.startswith("FEATCACHE_NB_")}
    for k in saved:
        del os.environ[k]
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="featcache-nb-") as work:
            os.environ.update(FULL_SIZE[name], FEATCACHE_NB_WORK_DIR=str(Path(work) / "work"))
            client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                    record_timing=False,
                                    resources={"metadata": {"path": str(HERE)}})
            client.execute()
    finally:
        for k in [k for k in os.environ if k.startswith("FEATCACHE_NB_")]:
            del os.environ[k]
        os.environ.update(saved)
    record = {"code_digest": digest, "parameters": dict(FULL_SIZE[name]),
              "executed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"),
              "seconds": round(time.perf_counter() - start, 1),
              "featcache_version": featcache.__version__, "git_commit": commit}
    nb.metadata[METADATA_KEY] = record
    nbformat.validate(nb)
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names in notebooks/ "
                        f"(default: every one in FULL_SIZE: {', '.join(FULL_SIZE)})")
    args = parser.parse_args(argv)
    for name in args.names or list(FULL_SIZE):
        name = Path(name).name
        print(f"{name}: running at full size ...", flush=True)
        record = run(name)
        print(f"{name}: {record['seconds']:.0f} s, written with outputs", flush=True)


if __name__ == "__main__":
    sys.exit(main())
