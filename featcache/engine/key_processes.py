"""Hash the input files no memo knows in several processes: a cold job's content keys.

A job's content keys come before anything else (the plan needs them), one file after
another: on one core about 5,400 JPEG photos of 640x427 a second (``benchmarks/key_rate.py``),
under the 5,000 images/s a GPU job is asked for. For many files that no memo knows,
:func:`hashed_files` reads and hashes them in processes forked from this one, in chunks, and
gives the results back in order; the caller records them in the memos
(:func:`featcache.inputs.keys.remember`), which live in this process only.

Processes are used only where they are cheap and safe: this process forks by default (as
the decode workers do; not under ``spawn`` or ``forkserver``: a Dask worker, macOS,
Windows, Python 3.14's default), it is not a daemon (which may not have children), more than
one core is usable, and there are at least :data:`MIN_FILES` files to hash. Anywhere else, and
if the processes cannot start, the files are hashed here, one after another: the same keys.
No torch.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..exceptions import InputError
from ..inputs.errors import as_input_error, without_tracebacks
from ..inputs.keys import hash_file
from ..log import get_logger
from ..options import start_method, usable_cores

_log = get_logger(__name__)

__all__ = ["MIN_FILES", "CHUNK_FILES", "key_processes", "hashed_files"]

#: Fewer files than this are hashed in this process (processes cost milliseconds to start).
MIN_FILES = 2048
#: Files per task given to a hashing process.
CHUNK_FILES = 256
#: At most this many hashing processes.
MAX_PROCESSES = 32


def key_processes(n_files: int) -> int:
    """How many processes :func:`hashed_files` uses for ``n_files`` files (0: none)."""
    if n_files < MIN_FILES or multiprocessing.current_process().daemon:
        return 0
    if start_method() != "fork":
        return 0
    n = min(usable_cores(), MAX_PROCESSES, -(-n_files // CHUNK_FILES))
    return n if n >= 2 else 0


def _hash_one(index, item, probe):
    """:func:`hash_file`, or the input's :class:`InputError` (as a value, to travel back,
    without its traceback: :func:`~featcache.inputs.errors.without_tracebacks`)."""
    try:
        with as_input_error(item, index, "cannot be read"):
            return hash_file(item, index, probe)
    except InputError as exc:
        return without_tracebacks(exc)


def _hash_chunk(chunk):
    return [_hash_one(*file) for file in chunk]


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _ignore_interrupts(parent: int):
    # This process decides when to stop (Ctrl-C, SIGTERM at a safe point), then waits for the
    # running chunks to end; a hashing process never stops half-way on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # But it ends with the process that forked it (killed, or ended by SIGTERM without the
    # deferral): it would otherwise wait for work forever, holding that process's memory and
    # its stdout (a pipe reading it never ends). Linux; elsewhere processes are not used.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def _hashed_here(files, check=None):
    """:func:`hashed_files` in this process, one file after another."""
    for file in files:
        if check is not None:
            check()
        yield file[0], _hash_one(*file)


def _submitted(pool, chunks):
    """The chunks' futures; None, and no process left, when a process cannot be started.

    The executor forks its processes at the first submit: one that fails there (EAGAIN at
    the process limit, ENOMEM without overcommit; a thread that cannot start) leaves those
    forked before it waiting for work that never comes, and the interpreter then waits for
    them forever at exit. They are killed (they hold nothing of this process's).
    """
    try:
        return [pool.submit(_hash_chunk, chunk) for chunk in chunks]
    except (OSError, RuntimeError) as exc:
        _log.info("hashing in this process: a hashing process cannot start (%s)", exc)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
            process.join()
        pool.shutdown(wait=False, cancel_futures=True)
        return None


def hashed_files(files, *, check=None):
    """Yield ``(position, HashedFile or InputError)`` for ``files``, ``(position, path,
    probe)`` triples (``probe``: :func:`featcache.inputs.keys.probe_file`'s, or None), in
    their order.

    ``check()`` is called between chunks (e.g. to raise on an interrupt); whatever it raises
    stops the hashing: the running chunks end, the others never start, no process is left.
    """
    files = list(files)
    processes = key_processes(len(files))
    if processes:
        try:
            pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_ignore_interrupts, initargs=(os.getpid(),))
        except (OSError, RuntimeError, ValueError) as exc:  # no processes: hash them here
            _log.info("hashing %d files in this process (%s)", len(files), exc)
            processes = 0
    if not processes:
        yield from _hashed_here(files, check)
        return
    _log.info("hashing %d files in %d processes", len(files), processes)
    chunks = [files[i:i + CHUNK_FILES] for i in range(0, len(files), CHUNK_FILES)]
    try:
        futures = _submitted(pool, chunks)
        if futures is None:  # no processes after all: hash them here
            yield from _hashed_here(files, check)
            return
        for chunk, future in zip(chunks, futures):
            if check is not None:
                check()
            try:
                results = future.result()
            except BrokenProcessPool:  # a hashing process died (killed): hash its chunk here
                results = _hash_chunk(chunk)
            yield from zip((file[0] for file in chunk), results)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
