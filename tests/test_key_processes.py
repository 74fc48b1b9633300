"""featcache.engine.key_processes: a cold job's files hashed in forked processes give the keys,
memo entries and errors of hashing them here, in order, and leave no process behind."""

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from featcache.engine import key_processes
from featcache.engine.unit_of_work import content_keys
from featcache.exceptions import InputError
from featcache.inputs import keys as keys_module
from featcache.inputs.keys import FILE_KEY_MEMO, bytes_key, probe_file

pytestmark = pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                                reason="hashing processes are forked (Linux's default)")


@pytest.fixture
def small_pool(monkeypatch):
    """Processes for 8 files or more, 4 files per chunk, 2 processes (whatever the machine)."""
    monkeypatch.setattr(key_processes, "MIN_FILES", 8)
    monkeypatch.setattr(key_processes, "CHUNK_FILES", 4)
    monkeypatch.setattr(key_processes, "usable_cores", lambda: 2)
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "0")  # every identity settled at once
    FILE_KEY_MEMO.clear()
    _EARLIER.clear()
    _EARLIER.update(p.pid for p in multiprocessing.active_children())  # e.g. joblib's workers
    yield
    FILE_KEY_MEMO.clear()


_EARLIER: set = set()


def _ours():
    """This process's children started since the fixture (not earlier tests' joblib workers)."""
    return [p for p in multiprocessing.active_children() if p.pid not in _EARLIER]


def _files(folder, n):
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:03d}.bin")
        paths[-1].write_bytes(os.urandom(100 + i))
    return paths


def _record_pids(monkeypatch, folder):
    """Each process that hashes a file leaves a file named by its pid in ``folder``."""
    real = keys_module.hash_file

    def recording(path, index, probe=None):
        (folder / str(os.getpid())).touch()
        return real(path, index, probe)

    monkeypatch.setattr(key_processes, "hash_file", recording)  # forked children inherit it


def test_how_many_processes(monkeypatch):
    monkeypatch.setattr(key_processes, "usable_cores", lambda: 16)
    assert key_processes.key_processes(key_processes.MIN_FILES - 1) == 0  # too few to pay
    assert key_processes.key_processes(key_processes.MIN_FILES) == min(
        16, key_processes.MIN_FILES // key_processes.CHUNK_FILES)
    assert key_processes.key_processes(10**6) == 16
    monkeypatch.setattr(key_processes, "usable_cores", lambda: 1)
    assert key_processes.key_processes(10**6) == 0  # one core: nothing to gain
    monkeypatch.setattr(key_processes, "usable_cores", lambda: 64)
    assert key_processes.key_processes(10**6) == key_processes.MAX_PROCESSES
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    assert key_processes.key_processes(10**6) == 0  # a Dask worker, macOS, Windows


def test_processes_give_the_keys_and_memo_entries_of_hashing_here(tmp_path, small_pool,
                                                                   monkeypatch):
    paths = _files(tmp_path, 23)
    pids = tmp_path / "pids"
    pids.mkdir()
    _record_pids(monkeypatch, pids)
    items = [str(p) for p in paths]
    keys, failures = content_keys(items)
    assert failures == {} and keys == [bytes_key(p.read_bytes()) for p in paths]
    hashers = {int(p.name) for p in pids.iterdir()}
    assert hashers and os.getpid() not in hashers and not _ours()
    # The memo is this process's: it now knows every file, so nothing is hashed again.
    assert all(FILE_KEY_MEMO.get(probe_file(p, i).identity) == k
               for i, (p, k) in enumerate(zip(paths, keys)))
    for p in pids.iterdir():
        p.unlink()
    assert content_keys(items) == (keys, {}) and not list(pids.iterdir())


def test_hashing_here_when_processes_do_not_pay(tmp_path, small_pool, monkeypatch):
    paths = _files(tmp_path, 7)  # under MIN_FILES
    pids = tmp_path / "pids"
    pids.mkdir()
    _record_pids(monkeypatch, pids)
    keys, _ = content_keys(paths)
    assert keys == [bytes_key(p.read_bytes()) for p in paths]
    assert {int(p.name) for p in pids.iterdir()} == {os.getpid()}


def test_errors_come_back_in_order_named_after_their_input(tmp_path, small_pool, monkeypatch):
    paths = _files(tmp_path, 12)
    real = keys_module.hash_file

    def unreadable(path, index, probe=None):  # in the hashing process
        if str(path).endswith("005.bin"):
            raise PermissionError(13, "Permission denied")
        return real(path, index, probe)

    monkeypatch.setattr(key_processes, "hash_file", unreadable)
    items = [str(p) for p in paths] + [str(tmp_path / "missing.bin")]
    keys, failures = content_keys(items, on_error="skip")
    assert sorted(failures) == [5, 12]
    assert "005.bin" in failures[5] and "Permission denied" in failures[5]
    assert "missing.bin" in failures[12] and "not found" in failures[12]
    assert keys[5] is None and keys[12] is None
    assert keys[:5] + keys[6:12] == [bytes_key(p.read_bytes()) for p in paths[:5] + paths[6:]]
    with pytest.raises(InputError, match=r"005\.bin.*Permission denied"):
        content_keys([str(p) for p in paths])
    assert not _ours()


def test_verify_hash_reads_every_file_again(tmp_path, small_pool):
    paths = _files(tmp_path, 10)
    items = [str(p) for p in paths]
    keys, _ = content_keys(items)
    identity = probe_file(paths[3], 3).identity
    FILE_KEY_MEMO[identity] = b"\0" * 16  # a memo that went wrong (a memory-mapped write)
    assert content_keys(items)[0][3] == b"\0" * 16  # "stat" believes the memo
    assert content_keys(items, verify="hash")[0] == keys  # "hash" does not, and mends it
    assert FILE_KEY_MEMO[identity] == keys[3]


def test_stopping_between_chunks_leaves_no_process(tmp_path, small_pool):
    files = [(i, str(p), None) for i, p in enumerate(_files(tmp_path, 40))]
    calls = []

    def interrupted():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("signal SIGTERM received")

    got = []
    with pytest.raises(KeyboardInterrupt):
        for pos, hashed in key_processes.hashed_files(files, check=interrupted):
            got.append(pos)
    assert got == list(range(8))  # two chunks of 4, in order, then the stop
    assert not _ours()


def test_processes_that_cannot_start_leave_the_hashing_here(tmp_path, small_pool, monkeypatch):
    def no_processes(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(key_processes, "ProcessPoolExecutor", no_processes)
    paths = _files(tmp_path, 12)
    keys, _ = content_keys([str(p) for p in paths])
    assert keys == [bytes_key(p.read_bytes()) for p in paths]


def test_a_process_that_cannot_be_forked_leaves_the_hashing_here_and_no_process(
        tmp_path, small_pool, monkeypatch):
    # The executor forks its processes at the first submit, not when it is made: the second
    # fork hits the process limit (EAGAIN), after the first process started.
    real_fork, forks = os.fork, []

    def fork():
        forks.append(1)
        if len(forks) > 1:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)
    paths = _files(tmp_path, 12)
    try:
        keys, failures = content_keys([str(p) for p in paths])
        left = _ours()
    finally:  # without the fix, the forked process would wait for work until pytest's exit
        for process in _ours():
            process.kill()
            process.join()
    assert len(forks) == 2 and not left
    assert failures == {} and keys == [bytes_key(p.read_bytes()) for p in paths]


_KILLED_JOB = """
import multiprocessing, os, pathlib, signal, sys
from featcache.engine import key_processes
key_processes.MIN_FILES, key_processes.CHUNK_FILES = 8, 4
key_processes.usable_cores = lambda: 2
folder = pathlib.Path(sys.argv[1])
files = [(i, str(folder / f"{i:03d}.bin"), None) for i in range(40)]
calls = []

def check():
    calls.append(1)
    if len(calls) == 2:  # the hashing processes are running: this process is ended
        (folder / "pids").write_text(" ".join(str(p.pid) for p in multiprocessing.active_children()))
        os.kill(os.getpid(), signal.SIGTERM)  # not deferred here: the default action

for _ in key_processes.hashed_files(files, check=check):
    pass
"""


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")
def test_hashing_processes_end_with_the_process_that_forked_them(tmp_path):
    _files(tmp_path, 40)
    script = tmp_path / "job.py"
    script.write_text(_KILLED_JOB)
    with open(tmp_path / "out.txt", "wb") as out:  # a file, not a pipe an orphan would hold
        done = subprocess.run([sys.executable, str(script), str(tmp_path)], stdout=out,
                              stderr=subprocess.STDOUT, timeout=300)
    assert done.returncode == -signal.SIGTERM, (tmp_path / "out.txt").read_text()
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    try:
        for _ in range(600):  # they end as their parent does; an orphan would wait forever
            if not any(_running(pid) for pid in pids):
                break
            time.sleep(0.1)
        assert not any(_running(pid) for pid in pids)
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_killed_hashing_process_leaves_its_chunk_to_this_one(tmp_path, small_pool,
                                                               monkeypatch):
    paths = _files(tmp_path, 16)
    real, parent = keys_module.hash_file, os.getpid()

    def killed_on_005(path, index, probe=None):  # the OOM killer, say, in a hashing process
        if str(path).endswith("005.bin") and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, index, probe)

    monkeypatch.setattr(key_processes, "hash_file", killed_on_005)
    keys, failures = content_keys([str(p) for p in paths])
    assert failures == {} and keys == [bytes_key(p.read_bytes()) for p in paths]
    assert not _ours()


def test_deciding_leaves_the_start_method_to_the_caller():
    # Reading the start method must not fix it: a caller may still choose another.
    import subprocess
    import sys

    code = ("import multiprocessing\n"
            "from featcache.engine import key_processes\n"
            "key_processes.key_processes(10**6)\n"
            "multiprocessing.set_start_method('spawn')\n"
            "print(multiprocessing.get_start_method())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "spawn"
