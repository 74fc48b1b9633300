"""Extraction on a Dask cluster (featcache.jobs.dask_client and .dask_worker), real worker processes.

A module-wide ``LocalCluster(n_workers=2, processes=True, threads_per_worker=1)`` runs the
jobs; every result is compared with a single-process ``extract`` of the same inputs. Faults
are real: a worker process is killed by its pid while it holds a partition (the test waits for
the worker to write a marker file, never for a time), Ctrl-C reaches the client mid-job, a
scheduler address where nothing listens. The command line runs end to end against a
``dask scheduler`` and two ``dask worker`` processes.
"""

import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import featcache.jobs.dask_client as fd
import featcache.jobs.dask_worker as fw
from featcache import FeatureCache
from featcache.exceptions import InvalidOptionError
from featcache.jobs.extraction import extract
from featcache.inputs.sources import collect_inputs

distributed = pytest.importorskip("distributed")  # the `dask` extra (installed by `dev`)

pytestmark = pytest.mark.filterwarnings("ignore:.*random:UserWarning")

N_IMAGES = 240
BATCH = 16
#: Inputs per partition: three batches (so a partition batches its inputs as a local run does)
PART = 3 * BATCH
#: Random weights at 32 px: the same numbers in every process (seeded), and quick to build.
PARAMS = dict(weights=None, image_size=32, batch_size=BATCH, progress=False)
BIN = Path(sys.executable).parent


def _write_images(folder: Path, n: int, seed: int) -> None:
    """``n`` distinct random 32x32 RGB PNGs in two class folders (labels ``a`` and ``b``)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / "ab"[i % 2] / f"img_{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    _write_images(folder, N_IMAGES, seed=0)
    return folder


def _local_extract(*args, **kwargs):
    """A single-process ``extract`` on one torch thread, as each single-threaded worker runs
    (and much faster than two threads when other jobs share this machine's two cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return extract(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """The single-process run: its summary and key -> row."""
    cache = tmp_path_factory.mktemp("local") / "cache"
    summary = _local_extract(collect_inputs([images]), cache, **PARAMS)
    return summary, _rows(cache, summary.fingerprints["default"])


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _rows(cache, fingerprint) -> dict:
    keys, features = FeatureCache(cache).to_numpy(fingerprint)
    return {bytes(k): row for k, row in zip(keys, features)}


def _rows_on_disk(cache, fingerprint) -> int:
    """Rows in every shard file, duplicates included (a recomputed row would count twice)."""
    total = 0
    for path in glob.glob(os.path.join(cache, fingerprint, "shards", "*.h5")):
        with h5py.File(path, "r") as f:
            total += int(f.attrs["rows"])
    return total


def _assert_same_rows(rows, reference_rows, exact=False):
    """Same keys, same rows: bit for bit when every batch held the same inputs, else within
    what another batch composition changes (the last bits, see docs/concepts.md)."""
    assert rows.keys() == reference_rows.keys()
    for key, row in reference_rows.items():
        if exact:
            np.testing.assert_array_equal(rows[key], row)
        else:
            np.testing.assert_allclose(rows[key], row, rtol=1e-4, atol=1e-5)


def _wait_for(path: Path, what: str, limit=300.0) -> None:
    """Wait for an event (a file appearing); the limit only turns a hang into a failure."""
    deadline = time.monotonic() + limit
    while not path.exists():
        assert time.monotonic() < deadline, f"{what} never happened ({path} did not appear)"
        time.sleep(0.01)


class PauseOnce:
    """``on_batch`` hook, run on the workers: pause one task in the middle of a partition.

    The first task to reach the third batch of its partition (the writers committed its first
    batch by then: commits every ``BATCH`` rows, at most two batches queued) writes its
    process id to ``marker`` and waits until ``go`` exists. Every other call does nothing.
    """

    def __init__(self, marker: Path, go: Path):
        self.marker, self.go = str(marker), str(go)

    def __call__(self, batch):
        if not len(batch.positions) or int(batch.positions.min()) < 2 * BATCH:
            return
        try:
            os.close(os.open(self.marker + ".claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        Path(self.marker + ".tmp").write_text(str(os.getpid()))
        os.replace(self.marker + ".tmp", self.marker)
        deadline = time.monotonic() + 600
        while not os.path.exists(self.go) and time.monotonic() < deadline:
            time.sleep(0.01)


class KillAtThirdBatch:
    """``on_batch`` hook: every worker that reaches the third batch of a partition dies there.

    ``kill -9`` of its own process, as the kernel's OOM killer would do it, after the
    partition's first batch is committed (see ``PauseOnce``). The client's process never dies:
    the hook only acts in another process.
    """

    def __init__(self, client_pid: int):
        self.client_pid = client_pid

    def __call__(self, batch):
        if os.getpid() != self.client_pid and len(batch.positions) and \
                int(batch.positions.min()) >= 2 * BATCH:
            os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- fast
def test_partitions_are_contiguous_chunks_of_the_sorted_sources():
    sources = ["c", "a", "d", "b", "e"]
    parts = fd.partitions(sources, 2)
    assert [[sources[p] for p in part] for part in parts] == [["a", "b"], ["c", "d"], ["e"]]
    assert [p.tolist() for p in fd.partitions(list(reversed(sources)), 2)] == \
        [[3, 1], [4, 2], [0]]  # the same chunks of inputs, whatever order they came in


def test_the_default_partition_size_is_larger_on_gpus():
    assert fd.default_partition_size(None, "cpu") == fd.DEFAULT_PARTITION_SIZE == 512
    assert fd.default_partition_size(None, "auto") == 512  # workers that declare no GPU
    assert fd.default_partition_size({"GPU": 1}, "auto") == fd.GPU_PARTITION_SIZE == 4096
    assert fd.default_partition_size(None, "cuda:1") == 4096


def test_a_cpu_partition_keeps_its_freed_buffers_for_the_next_one(images, tmp_path,
                                                                  monkeypatch):
    """A worker's partitions follow each other within milliseconds: the activation buffers a
    partition freed stay in the process (glibc tuned) for PARTITION_LINGER seconds instead of
    being trimmed and page-faulted back in by the next one (0.3-0.6 s per partition at 224 px).
    The task runs in this process, so its allocator state can be looked at."""
    import featcache.engine.allocator as allocator

    if not allocator.allocator_tunable():
        pytest.skip("glibc's malloc only")
    monkeypatch.setattr(fw, "PARTITION_LINGER", 600.0)  # longer than the test: no race
    job = fd._job(tmp_path / "cache", "efficientnet_lite0", None, (None,), "avg", 32,
                  dict(batch_size=BATCH, device="cpu"), None)
    part = collect_inputs([images]).subset(range(BATCH))
    try:
        result = fw.run_partition(job, part, np.arange(BATCH))
        assert (result.computed, result.failures) == (BATCH, {})
        assert allocator._depth == 0 and allocator._tuned, "kept for the next partition"
        again = fw.run_partition(job, part, np.arange(BATCH))  # a rerun: all cached
        assert again.cached == BATCH and allocator._tuned
    finally:
        with allocator.reuse_freed_memory():  # one without a linger releases at once
            pass
    assert not allocator._tuned


def test_job_on_the_cluster_equals_a_single_process_run_and_a_rerun_computes_nothing(
        client, images, reference, tmp_path):
    local, reference_rows = reference
    cache = tmp_path / "cache"
    inputs = collect_inputs([images])
    # Partitions of 3 batches: every batch holds the inputs it held in the local run.
    summary = extract(inputs, cache, client=client, partition_size=PART, **PARAMS)
    assert (summary.inputs, summary.computed, summary.cached, summary.failed) == \
        (N_IMAGES, N_IMAGES, 0, 0)
    assert summary.fingerprints == local.fingerprints
    fp = local.fingerprints["default"]
    _assert_same_rows(_rows(cache, fp), reference_rows, exact=True)
    assert _rows_on_disk(cache, fp) == N_IMAGES
    labels = {a["source"]: a["label"] for a in FeatureCache(cache).annotations().values()}
    assert labels == dict(zip(inputs.sources, inputs.labels))  # annotations, as a local run

    again = extract(inputs, cache, client=client, partition_size=PART, **PARAMS)
    assert (again.computed, again.cached, again.failed) == (0, N_IMAGES, 0)
    assert _rows_on_disk(cache, fp) == N_IMAGES


def test_bad_inputs_are_skipped_and_recorded_as_in_a_local_run(client, images, tmp_path):
    good = sorted(str(p) for p in images.rglob("*.png"))[:30]
    (tmp_path / "truncated.png").write_bytes((images / "a" / "img_0000.png").read_bytes()[:60])
    (tmp_path / "text.png").write_text("not an image")
    paths = good[:10] + [str(tmp_path / "truncated.png"), str(tmp_path / "missing.png")] \
        + good[10:] + [str(tmp_path / "text.png")]
    params = dict(PARAMS, on_error="skip")
    local = _local_extract(paths, tmp_path / "local", **params)
    summary = extract(paths, tmp_path / "dask", client=client, partition_size=8, **params)
    assert sorted(summary.failures) == sorted(local.failures) == [10, 11, 32]
    for pos in summary.failures:
        assert Path(paths[pos]).name in summary.failures[pos]
    assert (summary.computed, summary.cached, summary.failed) == (30, 0, 3)
    fp = local.fingerprints["default"]
    recorded = FeatureCache(tmp_path / "dask").namespace(fp).failures()
    assert len(recorded) == len(FeatureCache(tmp_path / "local").namespace(fp).failures()) == 2
    _assert_same_rows(_rows(tmp_path / "dask", fp), _rows(tmp_path / "local", fp))

    again = extract(paths, tmp_path / "dask", client=client, partition_size=8, **params)
    assert (again.computed, again.cached, again.failed) == (0, 30, 3)  # failures not retried


def test_a_client_that_is_not_the_default_one(client, images, tmp_path):
    inputs = collect_inputs([images]).subset(range(BATCH))
    with distributed.Client(client.scheduler.address, set_as_default=False) as other:
        summary = extract(inputs, tmp_path / "cache", client=other, partition_size=4, **PARAMS)
    assert (summary.computed, summary.failed) == (BATCH, 0)


def _malloc_in_worker():
    """(started with Dask's malloc variable, tunable after a task's drop) in this process."""
    from featcache.engine.allocator import _start_environment, allocator_tunable

    started_with = "MALLOC_TRIM_THRESHOLD_" in (_start_environment() or {})
    fw._drop_dask_malloc_setting()
    return started_with, allocator_tunable()


def test_workers_tune_malloc_although_the_nanny_set_a_malloc_variable(client):
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ (glibc read it); what a task
    drops, featcache no longer takes for the user's tuning (2.8x on a CPU)."""
    from featcache.engine.allocator import allocator_tunable

    glibc = allocator_tunable({})
    workers = list(client.scheduler_info()["workers"])
    found = [client.submit(_malloc_in_worker, workers=[w], pure=False).result(timeout=120)
             for w in workers]  # tasks, as featcache's are (get_worker() works in one)
    assert len(workers) == 2 and set(found) == {(True, glibc)}


def test_decode_workers_in_a_daemonic_worker_process(client, images, tmp_path):
    """Dask's worker processes are daemonic and cannot start DataLoader workers: the task
    decodes in its own thread instead of failing."""
    inputs = collect_inputs([images]).subset(range(BATCH))
    summary = extract(inputs, tmp_path / "cache", client=client, num_workers=1, **PARAMS)
    assert (summary.computed, summary.failed) == (BATCH, 0)


def test_options_are_checked_on_the_client(client, images, tmp_path):
    with pytest.raises(InvalidOptionError, match="'partition_size' parameter of extract"):
        extract([images], tmp_path, client=client, partition_size=0)
    with pytest.raises(InvalidOptionError, match="'batch_size' parameter of extract"):
        extract([images], tmp_path, client=client, batch_size=0)
    with pytest.raises(ValueError, match="every worker can reach"):
        extract([images], False, client=client)


def test_unreachable_scheduler_exits_1_with_one_line_naming_it(images, tmp_path, capfd,
                                                                monkeypatch):
    from featcache.cli import main

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(fd, "CONNECT_TIMEOUT", 1.0)
    status = main(["extract", str(images), "--cache", str(tmp_path / "c"),
                   "--dask-scheduler", address])
    err = capfd.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and address in err[0] and "dask scheduler" in err[0], err
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- slow: faults
@pytest.mark.slow
def test_a_worker_killed_mid_partition_loses_nothing_committed(client, images, reference,
                                                                tmp_path):
    local, reference_rows = reference
    marker, go = tmp_path / "paused", tmp_path / "go"
    cache = tmp_path / "cache"
    params = dict(PARAMS, commit_rows=BATCH, on_batch=PauseOnce(marker, go))
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(extract, collect_inputs([images]), cache, client=client,
                          partition_size=PART, **params)
        _wait_for(marker, "a task pausing mid-partition")
        pid = int(marker.read_text())
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)  # the worker process; its nanny starts a new one
        summary = job.result(timeout=600)
    go.touch()
    fp = local.fingerprints["default"]
    assert (summary.computed + summary.cached, summary.failed) == (N_IMAGES, 0)
    # The dead worker had committed at least one batch of the partition it held: the rerun
    # of that partition found those rows (cached) and computed only the rest.
    assert summary.cached >= BATCH
    assert _rows_on_disk(cache, fp) == N_IMAGES  # nothing computed twice
    _assert_same_rows(_rows(cache, fp), reference_rows)
    client.wait_for_workers(2, timeout=300)


@pytest.mark.slow
def test_ctrl_c_cancels_the_job_and_committed_rows_stay(client, images, reference, tmp_path):
    import _thread

    local, reference_rows = reference
    marker, go = tmp_path / "paused", tmp_path / "go"
    cache = tmp_path / "cache"
    params = dict(PARAMS, commit_rows=BATCH, on_batch=PauseOnce(marker, go))
    interrupter = threading.Thread(target=lambda: (_wait_for(marker, "a paused task"),
                                                   _thread.interrupt_main()))
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        extract(collect_inputs([images]), cache, client=client, partition_size=PART, **params)
    interrupter.join()
    left = client.run_on_scheduler(
        lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks
                                if str(k).startswith("featcache-")])
    assert left == []  # every task of the job cancelled, queued ones never start
    go.touch()
    fp = local.fingerprints["default"]
    rerun = extract(collect_inputs([images]), cache, client=client, partition_size=PART, **PARAMS)
    assert rerun.cached >= BATCH and rerun.computed + rerun.cached == N_IMAGES
    _assert_same_rows(_rows(cache, fp), reference_rows)


@pytest.mark.slow
def test_a_partition_that_kills_every_worker_fails_the_job_naming_it(images, reference,
                                                                      tmp_path):
    """Past ``allowed-failures`` the job stops with a FeatcacheError naming the partition's
    inputs; what the dead workers committed stays, and a rerun computes only the rest."""
    import dask

    from featcache.exceptions import FeatcacheError

    local, reference_rows = reference
    cache = tmp_path / "cache"
    inputs = collect_inputs([images])
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                     dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as dying:
        with pytest.raises(FeatcacheError, match=r"(?s)partition of 48 inputs from .*img_.*"
                                                 r"killed every worker that ran it.*run again"):
            extract(inputs, cache, client=dying, partition_size=PART,
                    **dict(PARAMS, commit_rows=BATCH, on_batch=KillAtThirdBatch(os.getpid())))
    fp = local.fingerprints["default"]
    committed = _rows_on_disk(cache, fp)
    assert BATCH <= committed < N_IMAGES  # the first batch of the partition that killed it
    rerun = _local_extract(inputs, cache, **PARAMS)
    assert (rerun.cached, rerun.computed + rerun.cached, rerun.failed) == \
        (committed, N_IMAGES, 0)
    _assert_same_rows(_rows(cache, fp), reference_rows)


@pytest.mark.slow
def test_a_cache_directory_removed_between_jobs_is_created_again(client, images, tmp_path):
    """The workers' per-process state does not outlive the directory it was resolved for."""
    import shutil

    inputs = collect_inputs([images]).subset(range(PART))
    first = extract(inputs, tmp_path / "cache", client=client, partition_size=BATCH, **PARAMS)
    shutil.rmtree(tmp_path / "cache")
    again = extract(inputs, tmp_path / "cache", client=client, partition_size=BATCH, **PARAMS)
    assert (first.computed, again.computed, again.cached) == (PART, PART, 0)
    fp = again.fingerprints["default"]
    assert (tmp_path / "cache" / "featcache.json").exists()
    assert (tmp_path / "cache" / fp / "config.json").exists()
    assert len(_rows(tmp_path / "cache", fp)) == PART


@pytest.mark.slow
def test_grid_search_on_a_warm_cache_with_the_dask_joblib_backend(images, tmp_path):
    """Workers read the shared cache through FrozenBackbone, and never import torch."""
    from joblib import parallel_backend
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from featcache import FrozenBackbone

    inputs = collect_inputs([images])
    fp = _local_extract(inputs, tmp_path / "cache", **PARAMS).fingerprints["default"]  # warm
    shards = sorted(glob.glob(str(tmp_path / "cache" / fp / "shards" / "*.h5")))
    pipe = Pipeline([("backbone", FrozenBackbone(weights=None, image_size=32,
                                                 cache=str(tmp_path / "cache"))),
                     ("clf", LogisticRegression(max_iter=200))])
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=2,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as dask_client:
        with parallel_backend("dask"):
            search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0]}, cv=2, n_jobs=-1)
            search.fit([str(p) for p in inputs.items], inputs.labels)
        torch_on_workers = dask_client.run(lambda: "torch" in sys.modules)
    assert set(search.cv_results_["param_clf__C"]) == {0.1, 1.0}
    assert not any(torch_on_workers.values()), torch_on_workers
    assert sorted(glob.glob(str(tmp_path / "cache" / fp / "shards" / "*.h5"))) == shards


# ---------------------------------------------------------------- slow: the command line
@pytest.mark.slow
def test_cli_with_a_dask_scheduler_and_two_workers(images, reference, tmp_path):
    local, reference_rows = reference
    scheduler_file = tmp_path / "scheduler.json"
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("scheduler", "worker0", "worker1")]
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--scheduler-file", scheduler_file,
                               "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                              stdout=logs[0], stderr=subprocess.STDOUT, cwd=tmp_path)]
    try:
        _wait_for(scheduler_file, "the scheduler starting", limit=120)
        for log in logs[1:]:
            procs.append(subprocess.Popen(
                [BIN / "dask", "worker", "--scheduler-file", scheduler_file, "--nthreads", "1",
                 "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))
        with distributed.Client(scheduler_file=str(scheduler_file), timeout="60s") as c:
            c.wait_for_workers(2, timeout=300)
            address = c.scheduler.address
        cache = tmp_path / "cache"
        done = subprocess.run(
            [sys.executable, "-m", "featcache.cli", "extract", str(images), "--cache", str(cache),
             "--weights", "none", "--image-size", "32", "--batch-size", str(BATCH), "--quiet",
             "--dask-scheduler", address, "--partition-size", "60"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{N_IMAGES} inputs: {N_IMAGES} computed, 0 from cache, 0 failed" in done.stdout
        _assert_same_rows(_rows(cache, local.fingerprints["default"]), reference_rows)
        again = subprocess.run(  # the scheduler file works as an address too
            [sys.executable, "-m", "featcache.cli", "extract", str(images), "--cache", str(cache),
             "--weights", "none", "--image-size", "32", "--quiet",
             "--dask-scheduler", str(scheduler_file)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"0 computed, {N_IMAGES} from cache" in again.stdout
    finally:
        _stop(procs, logs)


#: ``featcache extract`` in a real process whose Dask tasks pause as ``PauseOnce`` says
#: (argv: MARKER GO EXTRACT_ARGS...).
_PAUSING_CLI = """\
import sys
import featcache.jobs.extraction as fx
from test_dask_client import BATCH, PauseOnce
real = fx.extract_on_cluster  # patched where extract() looks it up
fx.extract_on_cluster = lambda *a, **k: real(
    *a, **{**k, "commit_rows": BATCH, "on_batch": PauseOnce(sys.argv[1], sys.argv[2])})
from featcache.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_the_scheduler_killed_mid_job_exits_1_naming_it_and_what_was_committed(images, tmp_path):
    """``featcache extract --dask-scheduler``: the scheduler is killed (SIGKILL) once the job
    has committed a shard; the command exits 1 with one message naming the scheduler and the
    rows committed, no traceback. Synchronised on events: a task paused mid-partition after its
    first commit, and a shard file in the cache."""
    scheduler_file, cache = tmp_path / "scheduler.json", tmp_path / "cache"
    marker, go = tmp_path / "paused", tmp_path / "go"
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("scheduler", "worker")]
    # the command, the scheduler and the worker unpickle PauseOnce: they import this module
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--scheduler-file", scheduler_file,
                               "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                              stdout=logs[0], stderr=subprocess.STDOUT, cwd=tmp_path, env=env)]
    try:
        _wait_for(scheduler_file, "the scheduler starting", limit=120)
        procs.append(subprocess.Popen(
            [BIN / "dask", "worker", "--scheduler-file", scheduler_file, "--nthreads", "1",
             "--no-dashboard"], stdout=logs[1], stderr=subprocess.STDOUT, cwd=tmp_path,
            env=env))
        with distributed.Client(scheduler_file=str(scheduler_file), timeout="60s") as c:
            c.wait_for_workers(1, timeout=300)
            address = c.scheduler.address
        command = subprocess.Popen(
            [sys.executable, "-c", _PAUSING_CLI, str(marker), str(go), "extract", str(images),
             "--cache", str(cache), "--weights", "none", "--image-size", "32", "--batch-size",
             str(BATCH), "--quiet", "--dask-scheduler", address, "--partition-size", str(PART)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
        procs.append(command)
        _wait_for(marker, "a task pausing after its first commit")
        _wait_for_glob(cache, "*/shards/*.h5", "a committed shard")
        procs[0].send_signal(signal.SIGKILL)
        out, err = command.communicate(timeout=300)
        assert command.returncode == 1, err
        assert "Traceback" not in err and "CancelledError" not in err, err
        committed = sum(int(h5py.File(p, "r").attrs["rows"])
                        for p in glob.glob(str(cache / "*" / "shards" / "*.h5")))
        assert committed >= BATCH
        assert err.startswith(f"featcache extract: error: lost the Dask scheduler at {address}")
        assert f"{committed} rows committed" in err and "run the same command again" in err, err
    finally:
        go.touch()
        _stop(procs, logs)


def _wait_for_glob(folder: Path, pattern: str, what: str, limit=300.0) -> None:
    """Wait for a file matching ``pattern`` under ``folder`` to appear."""
    deadline = time.monotonic() + limit
    while not glob.glob(str(folder / pattern)):
        assert time.monotonic() < deadline, f"{what} never happened ({folder / pattern})"
        time.sleep(0.01)


def _stop(procs, logs) -> None:
    """Terminate the started processes (newest first), kill any that hang, close their logs."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for log in logs:
        log.close()
