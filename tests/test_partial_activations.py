"""Cached prefix activations: served from memory, from the shards, or from a GPU."""

import numpy as np
import pytest
import torch

from featcache.inputs import as_items
from featcache.options import resolve_run_options
from featcache.partial.activations import prefix_activations

SIZE = 32


def _activations(tmp_path, views=0, max_memory=None):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, size=(12, SIZE, SIZE, 3), dtype=np.uint8)
    options = resolve_run_options(device="cpu", progress=False)
    return prefix_activations(as_items(X), model="efficientnet_lite0", weights="DEFAULT",
                              layer="blocks.5", pooling="none", image_size=SIZE, options=options,
                              cache=tmp_path / "c", storage="float16", views=views,
                              max_memory=max_memory)


def test_rows_on_a_cpu_are_the_rows(tmp_path):
    acts = _activations(tmp_path)
    assert acts.in_memory and acts.rows_on("cpu") == acts.rows


def test_streamed_rows_equal_the_rows_in_memory(tmp_path):
    in_memory, streamed = _activations(tmp_path), _activations(tmp_path, max_memory=0)
    assert in_memory.in_memory and not streamed.in_memory
    positions = [5, 0, 11, 3]
    np.testing.assert_array_equal(streamed.rows(positions), in_memory.rows(positions))


@pytest.mark.gpu
def test_rows_on_a_gpu_equal_the_rows_and_stay_there(tmp_path):
    acts = _activations(tmp_path, views=2)
    rows = acts.rows_on("cuda")
    assert rows != acts.rows
    positions, views = np.array([3, 0, 7, 7, 11]), np.array([0, 2, 1, 0, 2])
    on_gpu = rows(positions, views)
    assert on_gpu.is_cuda and on_gpu.dtype == torch.float32
    np.testing.assert_array_equal(on_gpu.cpu().numpy(), acts.rows(positions, views))
    np.testing.assert_array_equal(rows(positions).cpu().numpy(), acts.rows(positions))


@pytest.mark.gpu
def test_rows_too_large_for_the_gpu_stay_on_the_host(tmp_path):
    acts = _activations(tmp_path)
    assert acts.rows_on("cuda", fraction=0.0) == acts.rows
