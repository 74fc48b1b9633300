"""Cached prefix activations: served from memory, from the shards, or from a GPU."""

import numpy as np
import pytest
import torch

from featcache.inputs import as_items
from featcache.engine.run_options import resolve_run_options
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


def test_a_streamed_fit_reads_through_a_concurrent_compaction(tmp_path, monkeypatch):
    # The fit commits the rows it computed as a new shard; a compaction (another process)
    # merges it away right after the first streamed read lists it, before that read loads it.
    # The read lists the shards again and streams the rows from the merged shard.
    import pathlib
    import subprocess
    import sys

    from featcache import FeatureCache, PartiallyFrozenClassifier
    from featcache.cache import files

    rng = np.random.default_rng(0)
    X = rng.integers(0, 200, size=(24, SIZE, SIZE, 3), dtype=np.uint8)
    y = np.array([0, 1] * 12)

    def clf(**params):
        return PartiallyFrozenClassifier(trainable_blocks=1, image_size=SIZE, max_epochs=2,
                                         batch_size=8, cache=tmp_path / "c", random_state=0,
                                         progress=False, **params)

    clf(max_memory=0).fit(X[:12], y[:12])  # the first shard: the first 12 inputs
    [fp] = FeatureCache(tmp_path / "c").namespaces()
    shards_dir = tmp_path / "c" / fp / "shards"
    before, real, fired = set(files.list_shards(shards_dir)), files.list_shards, []
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from cache_writer_proc import "
            "import_cache; import_cache().FeatureCache(sys.argv[2]).compact()")

    def listing(directory):
        out = real(directory)
        if not fired and pathlib.Path(directory) == shards_dir and set(out) - before:
            fired.append(out)
            subprocess.run([sys.executable, "-c", code, str(pathlib.Path(__file__).parent),
                            str(tmp_path / "c")], check=True, timeout=120)
        return out

    monkeypatch.setattr(files, "list_shards", listing)
    streamed = clf(max_memory=0).fit(X, y)
    monkeypatch.undo()
    assert fired and len(fired[0]) == 2 and len(real(shards_dir)) == 1  # the race happened
    assert streamed.fit_stats_["computed"] == 12 and not streamed.fit_stats_["in_memory"]
    held = clf().fit(X, y)  # every row cached now, held in memory
    assert held.fit_stats_["computed"] == 0 and held.fit_stats_["in_memory"]
    np.testing.assert_array_equal(streamed.predict_proba(X), held.predict_proba(X))


@pytest.mark.parametrize("in_memory", [True, False])
def test_check_finite_names_the_first_non_finite_row_in_memory_or_streamed(in_memory):
    from featcache.cache import MemoryNamespace
    from featcache.exceptions import NonFiniteError
    from featcache.partial.activations import ActivationSet

    keys = [bytes([i]) * 16 for i in range(4)]
    ns = MemoryNamespace("fp", 2)
    rows = np.array([[0, 1], [2, 3], [np.inf, 0], [4, np.nan]], dtype=np.float32)
    with ns.writer() as writer:
        writer.add(keys, rows, [f"img{i}.png" for i in range(4)])
    acts = ActivationSet(keys, {}, (2,), [ns], ["fp"], sources=[f"/d/img{i}.png" for i in range(4)])
    if in_memory:
        assert acts.load(10**6)
    acts.check_finite([0, 1])  # finite rows pass
    np.testing.assert_array_equal(acts.rows([0, 1]), rows[:2])
    with pytest.raises(NonFiniteError, match=r"training input 2 \('/d/img2.png'\) has non-finite.*"
                                             r"namespace fp; 2 such rows"):
        acts.check_finite([0, 2, 3])
        acts.rows([0, 2, 3])  # streamed rows are checked as they are read
