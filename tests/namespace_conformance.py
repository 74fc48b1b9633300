"""The namespace contract's conformance suite (featcache.cache.contract), run by every backend.

A backend's test module subclasses :class:`NamespaceConformance` (as a ``Test...`` class) and
provides ``make_namespace``; every test here then runs against that backend::

    class TestDiskNamespace(NamespaceConformance):
        def make_namespace(self, tmp_path, dim=3, *, storage="float32", row_shape=None):
            ...

The suite checks only what the contract promises: what a backend does beyond it (shards,
commit timing, other processes) is tested in the backend's own module.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from featcache.cache import NamespaceContract, NamespaceWriter
from featcache.exceptions import CacheError, CacheMissError, CacheValueError


def key(i: int) -> bytes:
    return int(i).to_bytes(16, "big")


def keys(idx) -> list:
    return [key(i) for i in idx]


def rows_of(idx, dim=3) -> np.ndarray:
    """Distinct, deterministic float32 rows (exact in float16 too) for items ``idx``."""
    return np.array([[i + j / 4 for j in range(dim)] for i in idx], dtype=np.float32)


class NamespaceConformance:
    """Tests every namespace backend passes. Subclasses define :meth:`make_namespace`."""

    def make_namespace(self, tmp_path, dim: "int | None" = 3, *, storage: str = "float32",
                       row_shape: "tuple | None" = None):
        """A new, empty namespace of fingerprint "fp0" (``dim`` None: width not known yet)."""
        raise NotImplementedError

    def filled(self, tmp_path, idx=range(6), **kwargs):
        ns = self.make_namespace(tmp_path, **kwargs)
        with ns.writer() as w:
            w.add(keys(idx), rows_of(idx), [f"item-{i}" for i in idx])
        return ns

    # ------------------------------------------------------------------ the contract
    def test_it_satisfies_the_contract(self, tmp_path):
        ns = self.make_namespace(tmp_path)
        assert isinstance(ns, NamespaceContract)
        with ns.writer() as w:
            assert isinstance(w, NamespaceWriter)
        assert ns.fingerprint == "fp0" and isinstance(ns.config, dict)
        assert ns.dim == 3 and ns.storage == "float32" and ns.row_shape is None

    def test_rows_read_in_the_order_asked_for(self, tmp_path):
        ns = self.filled(tmp_path, range(6))
        order = [4, 0, 5, 2, 2, 1, 4]  # duplicates get their row again
        got = ns.read(keys(order))
        assert got.dtype == np.float32 and got.shape == (7, 3)
        np.testing.assert_array_equal(got, rows_of(order))
        as_array = np.frombuffer(b"".join(keys(order)), np.uint8).reshape(-1, 16)
        np.testing.assert_array_equal(ns.read(as_array), got)
        assert ns.lookup(keys([5, 9, 0])).tolist() == [True, False, True]
        assert ns.rows() == 6 and ns.dim == 3

    def test_the_first_row_of_a_key_wins(self, tmp_path):
        ns = self.make_namespace(tmp_path)
        with ns.writer() as w:
            w.add(keys([0, 1, 0]), rows_of([0, 1, 7]), ["a", "b", "c"])  # within one add
            w.add(keys([1]), rows_of([8]), ["d"])  # a later add of the same commit
        with ns.writer() as w:
            w.add(keys([0, 2]), rows_of([9, 2]), ["e", "f"])  # a later commit
        np.testing.assert_array_equal(ns.read(keys([0, 1, 2])), rows_of([0, 1, 2]))
        assert ns.rows() == 3
        got_keys, feats = ns.to_numpy()
        assert sorted(bytes(k) for k in got_keys) == keys([0, 1, 2])
        order = np.argsort([bytes(k) for k in got_keys])
        np.testing.assert_array_equal(feats[order], rows_of([0, 1, 2]))

    def test_failures_read_as_nan_and_count_as_known(self, tmp_path):
        ns = self.make_namespace(tmp_path)
        with ns.writer() as w:
            w.add(keys([0, 1]), rows_of([0, 1]), ["a", "b"])
            w.add_failure(key(7), "bad.png", "not an image")
            w.add_failure(key(7), "bad-again.png", "a second reason")  # the first one wins
            w.add_failure(key(1), "flaky.png", "failed once")  # has a row: not a failure
        assert ns.lookup(keys([0, 7, 9])).tolist() == [True, False, False]
        assert ns.failures(keys([7, 1, 9])) == {key(7): ("bad.png", "not an image")}
        assert ns.failures() == {key(7): ("bad.png", "not an image")}
        out = ns.read(keys([1, 7, 0]))  # a failed key is known: no CacheMissError
        np.testing.assert_array_equal(out[[0, 2]], rows_of([1, 0]))
        assert np.isnan(out[1]).all() and ns.rows() == 2

    def test_a_row_committed_after_a_failure_replaces_it(self, tmp_path):
        ns = self.make_namespace(tmp_path)
        with ns.writer() as w:
            w.add_failure(key(3), "x.png", "timeout")
        assert set(ns.failures()) == {key(3)} and np.isnan(ns.read(keys([3]))).all()
        with ns.writer() as w:
            w.add(keys([3]), rows_of([3]), ["x.png"])
        assert ns.failures() == {} and ns.lookup(keys([3])).all()
        np.testing.assert_array_equal(ns.read(keys([3])), rows_of([3]))

    def test_keys_never_seen_raise_or_read_as_nan(self, tmp_path):
        ns = self.filled(tmp_path, range(2))
        with pytest.raises(CacheMissError, match="missing='nan'") as e:
            ns.read(keys([0, 9, 8]))
        assert isinstance(e.value, KeyError) and "2 of 3 keys" in str(e.value)
        out = ns.read(keys([0, 9]), missing="nan")
        np.testing.assert_array_equal(out[0], rows_of([0])[0])
        assert np.isnan(out[1]).all()
        with pytest.raises(CacheValueError, match="missing='maybe'"):
            ns.read(keys([0]), missing="maybe")
        with pytest.raises(CacheValueError, match="16 bytes"):
            ns.lookup([b"short"])
        with pytest.raises(CacheValueError, match="single"):
            ns.read(key(0))

    def test_empty_reads_and_an_unknown_width(self, tmp_path):
        ns = self.make_namespace(tmp_path, dim=None)
        assert ns.dim is None and ns.rows() == 0 and ns.failures() == {}
        assert ns.read([]).shape == (0, 0) and ns.lookup([]).shape == (0,)
        with ns.writer() as w:
            w.add_failure(key(1), "a", "broken")
            w.add([], np.zeros((0, 4)), [])  # an empty add sets no width
        assert ns.dim is None
        with pytest.raises(CacheError, match="width"):
            ns.read(keys([1]))
        with ns.writer() as w:
            w.add(keys([0]), rows_of([0], dim=4), ["a"])
        assert ns.dim == 4 and ns.read([]).shape == (0, 4)
        assert np.isnan(ns.read(keys([1]))).all()
        k, f = ns.to_numpy()
        assert k.shape == (1, 16) and k.dtype == np.uint8 and f.shape == (1, 4)

    def test_an_empty_namespace_with_a_known_width(self, tmp_path):
        ns = self.make_namespace(tmp_path, dim=5)
        assert ns.dim == 5 and ns.read([]).shape == (0, 5)
        assert np.isnan(ns.read(keys([1]), missing="nan")).all()
        k, f = ns.to_numpy()
        assert k.shape == (0, 16) and f.shape[0] == 0 and f.dtype == np.float32

    def test_the_writer_refuses_rows_that_do_not_fit(self, tmp_path):
        ns = self.filled(tmp_path, range(2))
        with ns.writer() as w:
            with pytest.raises(CacheValueError, match="4 columns but namespace fp0 holds 3-dim"):
                w.add(keys([5]), np.zeros((1, 4)), ["x"])
            with pytest.raises(CacheValueError, match="n sources"):
                w.add(keys([5, 6]), np.zeros((2, 3)), ["x"])
            with pytest.raises(CacheValueError, match="n keys"):
                w.add(keys([5]), np.zeros(3), ["x"])
            with pytest.raises(CacheValueError, match="numeric"):
                w.add(keys([5]), np.array([["a", "b", "c"]]), ["x"])
            with pytest.raises(CacheValueError, match="16 bytes"):
                w.add([b"short"], np.zeros((1, 3)), ["x"])
        assert ns.rows() == 2 and not ns.lookup(keys([5, 6])).any()
        for bad in ({"dtype": "int8"}, {"commit_rows": 0}, {"commit_seconds": 0}):
            with pytest.raises(CacheValueError):
                ns.writer(**bad)

    def test_a_closed_writer_refuses_more(self, tmp_path):
        ns = self.make_namespace(tmp_path)
        w = ns.writer()
        w.add(keys([0]), rows_of([0]), ["a"])
        w.close()
        assert ns.lookup(keys([0])).all() and w.commit() is None
        with pytest.raises(CacheError, match="closed"):
            w.add(keys([1]), rows_of([1]), ["b"])
        with pytest.raises(CacheError, match="closed"):
            w.add_failure(key(1), "b", "why")

    def test_leaving_the_writer_on_an_exception_keeps_what_was_added(self, tmp_path):
        ns = self.make_namespace(tmp_path)
        with pytest.raises(KeyboardInterrupt):
            with ns.writer(commit_rows=10_000) as w:
                w.add(keys([0, 1]), rows_of([0, 1]), ["a", "b"])
                w.add_failure(key(2), "c", "broken")
                raise KeyboardInterrupt
        np.testing.assert_array_equal(ns.read(keys([0, 1])), rows_of([0, 1]))
        assert set(ns.failures()) == {key(2)}

    def test_commit_makes_rows_visible_before_close(self, tmp_path):
        ns = self.make_namespace(tmp_path)
        w = ns.writer(commit_rows=10_000, commit_seconds=3600)
        w.add(keys([0]), rows_of([0]), ["a"])
        w.commit()
        assert ns.lookup(keys([0])).all() and not w.commit()  # nothing pending now
        w.close()

    def test_float16_storage_rounds_and_refuses_overflow(self, tmp_path):
        ns = self.make_namespace(tmp_path, dim=12, storage="float16", row_shape=(3, 2, 2))
        assert ns.storage == "float16" and ns.row_shape == (3, 2, 2) and ns.dim == 12
        rows = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
        with ns.writer() as w:
            w.add(keys(range(4)), rows, ["s"] * 4)
            with pytest.raises(CacheValueError, match="float16 range"):
                w.add(keys([9]), np.full((1, 12), 1e6), ["s"])
        np.testing.assert_array_equal(ns.read(keys(range(4))),
                                      rows.astype(np.float16).astype(np.float32))
        assert not ns.lookup(keys([9])).any()

    def test_a_writer_dtype_overrides_the_storage(self, tmp_path):
        ns = self.make_namespace(tmp_path, dim=4)
        rows = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
        with ns.writer(dtype="float16") as w:
            w.add(keys(range(3)), rows, ["s"] * 3)
        with ns.writer(dtype=np.float32) as w:
            w.add(keys([5]), rows[:1], ["s"])
        np.testing.assert_array_equal(ns.read(keys(range(3))),
                                      rows.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(ns.read(keys([5])), rows[:1])

    def test_rows_of_another_row_shape_are_refused(self, tmp_path):
        ns = self.make_namespace(tmp_path, dim=12, row_shape=(3, 2, 2))
        with ns.writer() as w:
            w.add(keys([0]), np.zeros((1, 12)), ["s"])
            with pytest.raises(CacheValueError, match="12-dim rows|row shape"):
                w.add(keys([1]), np.zeros((1, 8)), ["s"])

    def test_text_that_is_not_utf8_is_recorded_escaped(self, tmp_path):
        ns = self.make_namespace(tmp_path)
        odd = os.fsdecode(b"/data/caf\xe9.png")  # a Latin-1 file name: legal on Linux
        with ns.writer() as w:
            w.add(keys([0]), rows_of([0]), [odd])
            w.add_failure(key(1), odd, f"cannot decode {odd}: bad\x00byte")
        escaped = "/data/caf\\udce9.png"
        assert ns.failures() == {key(1): (escaped, f"cannot decode {escaped}: bad\\x00byte")}

    def test_streamed_reads_in_chunks_equal_one_read(self, tmp_path):
        ns = self.make_namespace(tmp_path)
        idx = list(range(40))
        with ns.writer(commit_rows=7) as w:  # several commits
            for lo in range(0, 40, 5):
                w.add(keys(idx[lo:lo + 5]), rows_of(idx[lo:lo + 5]), ["s"] * 5)
        order = np.random.default_rng(3).permutation(40)
        whole = ns.read(keys(order))
        chunks = np.concatenate([ns.read(keys(order[lo:lo + 9])) for lo in range(0, 40, 9)])
        np.testing.assert_array_equal(chunks, whole)
        np.testing.assert_array_equal(whole, rows_of(order))
