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
    "FEATCACHE_NB_MAX_EPOCHS": "2",
    "FEATCACHE_NB_BLOCKS": "0,1,2",
    "FEATCACHE_NB_AUGMENT_VIEWS": "1",
}
CELL_TIMEOUT_S = 600


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_notebooks_are_there():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_pneumonia_xray.ipynb", "03_dicom_and_16bit.ipynb",
            "04_batch_jobs.ipynb", "05_which_layers_to_freeze.ipynb"} <= names, names


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


# ---------------------------------------------------------------------- the progress bar in Jupyter
def _execute_cell(source):
    """Run one code cell in a fresh "python3" kernel; returns its outputs."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3").execute()
    return nb.cells[0].outputs


_EXTRACT_CELL = (
    "import numpy as np\n"
    "from featcache import FrozenBackbone\n"
    "X = np.random.default_rng(0).integers(0, 255, (3, 16, 16), dtype=np.uint8)\n"
    "FrozenBackbone(image_size=32, cache=False).fit_transform(X).shape\n"
)


@pytest.mark.parametrize("widgets", [
    True, pytest.param(False, marks=pytest.mark.slow)], ids=["ipywidgets", "no-ipywidgets"])
def test_the_default_shows_a_progress_bar_in_a_notebook(widgets):
    """progress=None in a Jupyter kernel: a widget bar with ipywidgets, else a text bar."""
    if widgets:
        pytest.importorskip("ipywidgets")
    hide = "" if widgets else "import sys; sys.modules['ipywidgets'] = None  # not installed\n"
    outputs = _execute_cell(hide + _EXTRACT_CELL)
    assert outputs[-1]["data"]["text/plain"] == "(3, 1280)"
    if widgets:
        bars = [o for o in outputs if o["output_type"] == "display_data"
                and "application/vnd.jupyter.widget-view+json" in o["data"]]
        assert len(bars) == 1, outputs
        assert "featcache" in bars[0]["data"]["text/plain"]
    else:
        text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
        assert "featcache (0 cached): 100%" in text and "3/3" in text, outputs
