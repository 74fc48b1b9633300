"""Helpers shared by the cache tests: fill a namespace, run the writer helper process, check rows."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np

from featcache.cache import files
from featcache.cache import FeatureCache, clear_memo

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cache_writer_proc import CONFIG, FINGERPRINT, feature, features, key_of  # noqa: E402

HELPER = str(pathlib.Path(__file__).with_name("cache_writer_proc.py"))
ROOT = pathlib.Path(__file__).resolve().parents[1]
FAIL_EVERY = 37  # the helper default: items i % 37 == 0 are recorded as failures


def _fill(ns, idx, *, commit_rows=50, dtype="float32", fail_every=FAIL_EVERY):
    """Write items ``idx`` (failures for i % fail_every == 0) through a writer."""
    with ns.writer(commit_rows=commit_rows, dtype=dtype) as w:
        for i in idx:
            if fail_every and not i % fail_every:
                w.add_failure(key_of(i), f"item-{i}", f"synthetic failure {i}")
            else:
                w.add([key_of(i)], feature(key_of(i))[None], [f"item-{i}"])
    return w


def _ns(tmp_path, name="c"):
    return FeatureCache(tmp_path / name).namespace(FINGERPRINT, dict(CONFIG))


def _spawn(mode, cache, *args):
    cmd = [sys.executable, HELPER, mode, str(cache), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)


def _run_helper(mode, cache, *args, timeout=60):
    p = _spawn(mode, cache, *args)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"helper failed ({p.returncode}):\n{out}\n{err}"
    return out


def _check_served(cache_dir, n):
    """verify() is ok and every served row equals its expected value; returns hit mask."""
    clear_memo()  # look at the files as a fresh process would
    cache = FeatureCache(cache_dir)
    report = cache.verify()
    assert report.ok, report.problems
    ns = cache.namespace(FINGERPRINT)
    keys = [key_of(i) for i in range(n)]
    hit = ns.lookup(keys)
    if hit.any():
        got = ns.read([k for k, h in zip(keys, hit) if h])
        np.testing.assert_array_equal(got, features([k for k, h in zip(keys, hit) if h]))
    fails = ns.failures(keys)
    assert all(int(s.split("-")[1]) % FAIL_EVERY == 0 for s, _ in fails.values())
    return hit, fails


def _shard_paths(ns):
    return [ns.shards_dir / n for n in files.list_shards(ns.shards_dir)]


def _flip_feature_bytes(path):
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_offset()
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(offset + 10)
        b = fh.read(1)
        fh.seek(offset + 10)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))


def _bomb_file(path, rows, *, chunked=True, fields=("keys", "features", "sources"),
               failures=True, fingerprint=FINGERPRINT, dim=16):
    """A tiny HDF5 file whose attributes and dataset shapes declare ``rows`` rows, none stored.

    Reading what it declares would allocate gigabytes (a "memory bomb"); a reader must see
    that the data is not in the file before it allocates anything.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = h5py.string_dtype("utf-8")
    spec = {"keys": ((rows, 16), np.uint8), "features": ((rows, dim), "<f4")}

    def make(group, name):
        shape, dtype = spec.get(name, ((rows,), text))
        chunks = (min(1024, rows),) + shape[1:] if chunked else None
        group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)

    with h5py.File(path, "w") as f:
        for name in fields:
            make(f, name)
        if failures:
            g = f.create_group("failures")
            for name in ("keys", "sources", "reasons"):
                make(g, name)
        f.attrs.update({"fingerprint": fingerprint, "rows": rows, "dim": dim,
                        "dtype": "float32", "checksum": "0" * 64, "failures": rows,
                        "created": "2024-01-01T00:00:00+00:00", "format_version": 1})
    return path


_MEMORY_PROBE = r"""
import json, resource, sys, tracemalloc, warnings
sys.path.insert(0, "tests")
from cache_writer_proc import import_cache
cache_mod = import_cache()
from featcache.exceptions import CacheCorruptError
warnings.simplefilter("ignore")
cache = cache_mod.FeatureCache(sys.argv[1], create=False, verify_on_load=False)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
info = {e["fingerprint"]: [e["rows"], e["bad_shards"]] for e in cache.info()}
report = cache.verify()
try:
    cache.annotations()
    annotations = "read"
except CacheCorruptError as exc:
    annotations = str(exc)
peak = tracemalloc.get_traced_memory()[1]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
print(json.dumps({"info": info, "problems": report.problems, "annotations": annotations,
                  "peak_mib": peak / 2**20, "rss_growth_mib": rss / 1024}))
"""


def _memory_probe(cache_dir, timeout=120):
    """Run info(), verify() and annotations() on ``cache_dir`` in a fresh process.

    Returns what it saw and its peak memory (tracemalloc peak and growth of the peak RSS).
    """
    import json

    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(cache_dir)],
                         capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
