"""Smoke runs of the benchmark scripts with tiny sizes, so they keep working (slow / gpu)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script, *args):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_extract_throughput_prints_its_table():
    out = _run("extract_throughput.py", "--n", "64", "--naive-n", "8", "--resnet-n", "0")
    assert "| **featcache extract from PNG files** |" in out and "naive per-image loop" in out


@pytest.mark.slow
def test_cpu_decode_benchmark_times_both_decode_scales():
    out = _run("cpu_decode.py", "--n", "2", "--repeats", "1", "--kinds", "jpeg,png16,dicom")
    assert "| jpeg 2048x1536 |" in out and "| png 16-bit 2048x2048 |" in out
    assert "| dicom RLE Lossless 2048x2048 |" in out and "min cosine" in out
    assert "network alone / extraction full" in out


@pytest.mark.slow
def test_gpu_throughput_runs_on_a_cpu():
    out = _run("gpu_throughput.py", "--device", "cpu", "--n", "16", "--batch-size", "8",
               "--workers", "1")
    for model in ("efficientnet_lite0", "resnet50"):
        for decoder in ("pillow", "device"):
            assert f"| {model} | **featcache extract, decoder='{decoder}'**" in out
        assert f"| {model} | NVIDIA DALI (mixed decode + GPU resize) + model | needs CUDA |" in out
    assert "| efficientnet_lite0 | >= 5,000 images/s end to end |" in out and "its bound" in out
    assert "a fresh process's first job, then its second |" in out
    assert "| efficientnet_lite0 | first job >= 0.9x the later ones (item 2) |" in out
    assert "| (none) | featcache decoder='device' feed only: files read and checked in 1 " in out


def test_key_rate_benchmark_times_both_ways():
    # A few seconds: 2,048 files (the fewest that are hashed in processes), one pass.
    out = _run("key_rate.py", "--n", "2048", "--passes", "1")
    assert "| hashed in this process, one file after another (before) |" in out
    assert "| hashed in 2 processes (now) |" in out or "| hashed in 0 processes" in out


def test_device_feed_benchmark_prints_both_hand_overs():
    # A few seconds: 48 files, one pass, in the main process and with one worker.
    out = _run("device_feed.py", "--n", "48", "--workers", "1", "--passes", "1",
               "--batch-size", "16")
    assert "read + key and frame check alone, one process:" in out
    assert "| decode workers | per file (before) files/s | packed files/s |" in out
    assert "| 0 |" in out and "| 1 |" in out


@pytest.mark.slow
def test_gpu_cluster_benchmark_runs_on_a_cpu():
    out = _run("gpu_cluster.py", "--device", "cpu", "--n", "16", "--batch-size", "4",
               "--num-workers", "0", "--partition-sizes", "8")
    assert "| 1 Dask worker, task resources None, partitions of 8 |" in out
    assert "rerun over the warm cache" in out


@pytest.mark.slow
def test_decode_start_benchmark_prints_its_table():
    out = _run("decode_start.py", "--n", "16", "--batch-size", "8", "--repeats", "1")
    assert "| whole (8 per worker step) |" in out and "| split (4 per worker step" in out


@pytest.mark.gpu
def test_gpu_throughput_on_the_gpu():
    out = _run("gpu_throughput.py", "--n", "1024")
    print(out)
    assert "| resnet50 | torchvision decode_jpeg on the device + engine resize + model |" in out
    assert "| resnet50 | >= 0.5x the model-only rate |" in out


def test_key_memo_benchmark_prints_its_table():
    # A few seconds: 1,000 and 20,000 synthetic entries, 20 one-file calls each (window 0).
    out = _run("key_memo.py", "--quick")
    assert "| ratio 20,000 / 1,000 entries, median call |" in out
    assert "segments opened / records read by a lookup" in out


@pytest.mark.slow
def test_warm_path_benchmark_runs_quick():
    # Slow: --quick still runs two cold extractions, four grid searches with fresh joblib
    # workers (about 6 s each to start here) and three new processes.
    out = _run("warm_path.py", "--quick")
    assert "| measurement | value | target | met? |" in out
    for item in ("1. `featcache extract` rerun", "2. ratio n_jobs=2 / n_jobs=1",
                 "3. new process, fit + transform", "4. new process, fit + transform"):
        assert f"| {item}" in out, item


@pytest.mark.slow
def test_partial_freezing_benchmark_prints_its_table():
    out = _run("partial_freezing.py", "--n", "32", "--sizes", "32", "--blocks", "1", "--epochs",
               "2", "--classic-epochs", "2", "--rounds", "2")
    assert "| px | trainable | cut (shape) |" in out and "| 32 | 1 | blocks.5" in out


@pytest.mark.slow
def test_pneumoniamnist_prevalence_study_and_refit_run_small(tmp_path):
    # 60 train and 60 val images, 32 px, one epoch: every candidate of the study, then
    # best_pipeline() fitted on the 120 images.
    common = ("--limit", "60", "--n-bootstrap", "20", "--cache", str(tmp_path / "c"))
    out = _run("pneumoniamnist.py", "--prevalence", "--partial-size", "32", "--partial-epochs",
               "1", "--tta", "1", *common)
    assert "| candidate | threshold | val AUC [95% CI] |" in out
    for row in ("| BEST, tta_views=1 |", "| soft vote: BEST seeds 0 and 1 + 2 trainable |",
                "(CalibratedClassifierCV) |", "| frozen probe: 96 px blocks.4 + logistic"):
        assert row in out, row
    assert "best (highest val AUC to 3 decimals, then balanced accuracy):" in out
    out = _run("pneumoniamnist.py", "--refit", *common)
    assert "best_pipeline() fitted on train + val (120 images)" in out


@pytest.mark.slow
def test_distributed_benchmark_runs_small():
    out = _run("distributed.py", "--n", "16", "--image-size", "32", "--batch-size", "4",
               "--overhead-n", "16", "--overhead-image-size", "32", "--repeats", "1",
               "--decode-n", "4")
    assert "| 1 worker / in process, best times |" in out
    assert "| 2 workers, profiler off: CPU / kernel seconds / minor page faults per job" in out
    for what in ("kept for the next partition (default)", "trimmed after each partition"):
        assert f"| per-partition overhead at 32 px, 3 extra partitions of 4, buffers {what}:" \
            in out


@pytest.mark.slow
def test_dask_profiler_benchmark_measures_both_settings():
    out = _run("dask_profiler.py", "--seconds", "1", "--rounds", "1")
    assert "| on (default) |" in out and "| off |" in out
