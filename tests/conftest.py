"""Shared fixtures: small real images, and skipping GPU tests without CUDA."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist_trainval.npz"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache_home(tmp_path_factory, monkeypatch):
    """cache="auto" never writes into the user's real cache during tests.

    Files a test writes are seconds old, so the memos' racily-clean window
    (:mod:`featcache.cache.identity`) would make every warm path hash them again: tests run
    with no window, and the tests of the rule set one themselves.
    """
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path_factory.mktemp("featcache_home")))
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "0")


@pytest.fixture(scope="session")
def xray():
    """(images, labels) of 60 PneumoniaMNIST training images, 28x28 uint8, both classes."""
    with np.load(DATA) as data:
        images, labels = data["train_images"], data["train_labels"].ravel()
    picked = np.concatenate([np.flatnonzero(labels == 0)[:30], np.flatnonzero(labels == 1)[:30]])
    return images[picked], labels[picked]


@pytest.fixture
def xray_pngs(xray, tmp_path):
    """The xray images written as PNG files; returns (paths, labels)."""
    images, labels = xray
    paths = []
    for i, img in enumerate(images):
        path = tmp_path / f"img_{i:03d}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    return paths, labels



@pytest.fixture
def forbid_network(monkeypatch):
    """Call it to make any forward pass over the data fail: proves rows came from the cache."""
    import featcache.engine.batches as engine

    def refuse(*args, **kwargs):
        raise AssertionError("the network ran although every row is cached")

    return lambda: monkeypatch.setattr(engine, "run_batches", refuse)
