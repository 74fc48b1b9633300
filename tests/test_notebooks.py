"""The notebooks in notebooks/: each runs top to bottom, and its committed outputs are true.

Every notebook is executed with nbclient in a fresh "python3" kernel (this environment's
ipykernel) from the notebooks/ folder, with small sizes set through the FEATCACHE_NB_*
environment variables that its parameters cell reads, and a work folder (cache, files) under
pytest's tmp_path. CI executes a copy: outputs are never written back to the files.

Policy for git: a notebook is committed either **stripped** (no code cell has outputs or an
execution count) or **with the outputs of its full-size run**, made by
``notebooks/run_full.py`` (``make notebooks``), which records in the notebook metadata the
full-size parameters it ran with and a digest of every code cell's source. The test then
checks that those outputs are true to the committed source (``run_full.problems``): the digest
matches the current code cells (editing code without rerunning fails), the parameters are
``run_full.FULL_SIZE``'s, every code cell ran once in order without an error, and the
markdown states those parameters. Every notebook in ``FULL_SIZE`` must carry outputs. To strip
a notebook instead, clear all outputs in Jupyter and save, or run from the repository root::

    .venv/bin/python - <<'EOF'
    import pathlib, nbformat
    path = pathlib.Path("notebooks/01_quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("featcache", None)
    nbformat.write(nb, path)
    EOF
"""

from __future__ import annotations

import copy
import importlib.util
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

_spec = importlib.util.spec_from_file_location("run_full", NOTEBOOK_DIR / "run_full.py")
run_full = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_full)

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
            "04_batch_jobs.ipynb", "05_which_layers_to_freeze.ipynb",
            "06_from_fit_to_deployment.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_true_to_the_source(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert run_full.problems(nb, path.name) == []
    if path.name in run_full.FULL_SIZE:
        assert not run_full.is_stripped(nb), (
            f"{path.name} is committed stripped, but notebooks/run_full.py FULL_SIZE lists it: "
            f"run .venv/bin/python notebooks/run_full.py {path.name} and commit the result")


def test_every_full_size_notebook_exists():
    assert set(run_full.FULL_SIZE) <= {p.name for p in NOTEBOOKS}


# ------------------------------------------------------- what the check of committed outputs catches
def _executed_notebook(name="05_which_layers_to_freeze.ipynb"):
    """A small notebook as run_full.py leaves it: outputs, counts in order, the run record."""
    params = run_full.FULL_SIZE[name]
    stated = " ".join(f"`{k}={v}`" for k, v in params.items())
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"Full size: {stated}."),
        nbformat.v4.new_code_cell("x = 1", execution_count=1),
        nbformat.v4.new_code_cell("x + 1", execution_count=2, outputs=[
            nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=2)]),
    ])
    nb.metadata[run_full.METADATA_KEY] = {"code_digest": run_full.code_digest(nb),
                                          "parameters": dict(params)}
    return nb, name


def test_the_check_accepts_a_true_and_a_stripped_notebook():
    nb, name = _executed_notebook()
    assert run_full.problems(nb, name) == []
    stripped = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    assert run_full.is_stripped(stripped) and run_full.problems(stripped, "any.ipynb") == []
    assert not run_full.is_stripped(nb)


def test_the_check_catches_code_edited_without_a_rerun():
    nb, name = _executed_notebook()
    nb.cells[2].source = "x + 2"    # the output still says 2
    [problem] = run_full.problems(nb, name)
    assert "code cells changed since the outputs were made" in problem
    assert "run_full.py 05_which_layers_to_freeze.ipynb" in problem
    nb.cells[2].source = "x + 1"
    nb.cells.insert(1, nbformat.v4.new_code_cell("import os"))   # a new, never-run cell
    assert any("code cells changed" in p for p in run_full.problems(nb, name))


def test_the_check_ignores_markdown_edits():
    nb, name = _executed_notebook()
    nb.cells[0].source += "\n\nA new paragraph."
    assert run_full.problems(nb, name) == []


def test_the_check_catches_other_parameters_counts_errors_and_no_record():
    nb, name = _executed_notebook()
    small = copy.deepcopy(nb)
    small.metadata[run_full.METADATA_KEY]["parameters"]["FEATCACHE_NB_N_TRAIN"] = "200"
    assert any("expected the full-size parameters" in p for p in run_full.problems(small, name))

    rerun = copy.deepcopy(nb)
    rerun.cells[2].execution_count = 5      # a cell run again out of order
    assert any("execution counts [1, 5], expected 1 to 2" in p
               for p in run_full.problems(rerun, name))

    failed = copy.deepcopy(nb)
    failed.cells[2].outputs.append(nbformat.v4.new_output(
        "error", ename="ValueError", evalue="boom", traceback=[]))
    assert any("cells [2] hold error outputs" in p for p in run_full.problems(failed, name))

    unrecorded = copy.deepcopy(nb)
    del unrecorded.metadata[run_full.METADATA_KEY]
    [problem] = run_full.problems(unrecorded, name)
    assert "no 'featcache' run record" in problem

    unknown = copy.deepcopy(nb)
    [problem] = run_full.problems(unknown, "99_not_listed.ipynb")
    assert "no full-size parameters in notebooks/run_full.py FULL_SIZE" in problem

    unstated = copy.deepcopy(nb)
    unstated.cells[0].source = "Full size: see the script."
    assert any("markdown does not state" in p for p in run_full.problems(unstated, name))


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
    committed = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    assert path.read_bytes() == committed, f"{path.name} was written to while CI executed it"


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
