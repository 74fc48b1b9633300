"""The built wheel ships the whole package: featcache and every subpackage."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "featcache"


def _source_files():
    """Every .py file under featcache/, as wheel paths (``featcache/cache/store.py`` ...)."""
    return {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")
            if "__pycache__" not in p.parts}


def test_every_source_folder_is_a_regular_package():
    """A folder of modules without __init__.py is easy to leave out of a distribution."""
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"folders of modules without an __init__.py: {missing}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built, offline, from a copy of the project (the working tree stays untouched)."""
    pytest.importorskip("setuptools", minversion="77",
                        reason="pyproject.toml needs setuptools>=77 to build")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "featcache", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                           "--no-build-isolation", "--no-index", "--disable-pip-version-check",
                           "-w", str(out), str(src)],
                          capture_output=True, text=True, cwd=tmp, timeout=300)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    wheels = list(out.glob("featcache-*.whl"))
    assert len(wheels) == 1, f"expected one featcache wheel, got {wheels}"
    return wheels[0]


def test_wheel_contains_every_module(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    shipped = {n for n in names if n.startswith("featcache/") and n.endswith(".py")}
    source = _source_files()
    assert {"featcache/cache/store.py", "featcache/backbones/registry.py"} <= source
    assert not source - shipped, f"modules missing from the wheel: {sorted(source - shipped)}"
    assert not shipped - source, f"modules in the wheel but not in featcache/: " \
                                 f"{sorted(shipped - source)}"
    top = {n.split("/")[0] for n in names if not re.match(r"featcache-[^/]+\.dist-info/", n)}
    assert top == {"featcache"}, f"the wheel ships more than featcache: {sorted(top)}"


def test_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode("utf-8")
        entry_points = zf.read(meta.replace("METADATA", "entry_points.txt")).decode("utf-8")
    assert re.search(r"^License-Expression: Apache-2\.0$", metadata, re.M)
    assert "featcache = featcache.cli:main" in entry_points
