"""The notebooks in notebooks/: each runs top to bottom, and each is committed without outputs.

Every notebook is executed with nbclient in a fresh "python3" kernel (this environment's
ipykernel) from the notebooks/ folder, with small sizes set through the FEATCACHE_NB_*
environment variables that its parameters cell reads, and a work folder (cache, files) under
pytest's tmp_path. Executed outputs are never written back to the files.

Policy for git: notebooks are committed **stripped** — no code cell has outputs or an
execution count — so diffs show only source changes. To strip the notebooks before
committing, clear all outputs in Jupyter and save, or run from the repository root::

    .venv/bin/python - <<'EOF'
    import pathlib, nbformat
    for path in pathlib.Path("notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, path)
    EOF
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

#: Small sizes for CI (each notebook in about a minute on 2 CPU cores).
CI_SIZES = {
    "FEATCACHE_NB_N_TRAIN": "200",
    "FEATCACHE_NB_N_VAL": "100",
    "FEATCACHE_NB_IMAGE_SIZE": "64",
    "FEATCACHE_NB_IMAGE_SIZES": "64,128",
    "FEATCACHE_NB_N_BOOTSTRAP": "200",
    "FEATCACHE_NB_N_IMAGES": "120",
    "FEATCACHE_NB_RESUME_IMAGE_SIZE": "128",
}
CELL_TIMEOUT_S = 600


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_notebooks_are_there():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_pneumonia_xray.ipynb", "03_dicom_and_16bit.ipynb",
            "04_batch_jobs.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, (
            f"{path.name}, cell {i}: committed with outputs or an execution count; notebooks are "
            "committed stripped (see this file's docstring for how to clear them)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_parameters_cell_first(path):
    cells = _code_cells(path)
    assert cells, f"{path.name} has no code cell"
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", []), \
        f"{path.name}: the first code cell must be tagged 'parameters'"
    assert "FEATCACHE_NB_" in first.source and "os.environ.get" in first.source, \
        f"{path.name}: the parameters cell must read FEATCACHE_NB_* environment variables"
    assert nbformat.read(path, as_version=4).metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    for name, value in CI_SIZES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FEATCACHE_NB_WORK_DIR", str(tmp_path / "work"))
    # FEATCACHE_HOME already points into tmp (conftest); the kernel inherits the environment.
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
