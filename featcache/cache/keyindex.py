"""The key index of one namespace: content key -> (shard, row), as sorted arrays."""

from __future__ import annotations

import numpy as np


def v16(keys2d: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys2d).view("V16").ravel()


class KeyIndex:
    """key -> (shard, row) for one namespace, as sorted unique keys plus parallel arrays."""

    def __init__(self):
        self.listing: tuple = ()          # shard names accounted for (good and bad)
        self.shards: list = []            # good ShardInfo; position = shard id
        self.bad: dict = {}               # name -> message
        self.vanished: tuple = ()         # listed shards that vanished before they were loaded
        self.keys = np.empty(0, dtype="V16")
        self.sid = np.empty(0, dtype=np.int32)
        self.row = np.empty(0, dtype=np.int64)
        self.dim = None
        self._failures = None

    def copy(self) -> "KeyIndex":
        """A copy to extend (arrays are never modified in place, so they can be shared)."""
        new = KeyIndex()
        new.__dict__.update(self.__dict__)
        new.shards, new.bad = list(self.shards), dict(self.bad)
        return new

    def add(self, infos: list) -> None:
        """Merge new good shards (sorted by name); the first shard in name order wins a key."""
        infos = [i for i in infos if i.rows or len(i.fail_keys)]
        if not infos:
            return
        self._failures = None
        if self.dim is None:
            self.dim = next((i.dim for i in infos if i.rows), None)
        base = len(self.shards)
        self.shards.extend(infos)
        allk = v16(np.concatenate([i.keys for i in infos]))
        sids = np.repeat(np.arange(base, len(self.shards), dtype=np.int32), [i.rows for i in infos])
        rows = np.concatenate([np.arange(i.rows, dtype=np.int64) for i in infos])
        uk, first = np.unique(allk, return_index=True)
        ns, nr = sids[first], rows[first]
        if not len(self.keys):
            self.keys, self.sid, self.row = uk, ns, nr
            return
        pos = np.searchsorted(self.keys, uk)
        pc = np.minimum(pos, len(self.keys) - 1)
        found = self.keys[pc] == uk
        names = np.array([s.name for s in self.shards])
        f = np.flatnonzero(found)
        better = f[names[ns[f]] < names[self.sid[pc[f]]]]
        self.sid, self.row = self.sid.copy(), self.row.copy()
        self.sid[pc[better]], self.row[pc[better]] = ns[better], nr[better]
        ins = ~found
        self.keys = np.insert(self.keys, pos[ins], uk[ins])
        self.sid = np.insert(self.sid, pos[ins], ns[ins])
        self.row = np.insert(self.row, pos[ins], nr[ins])

    def locate(self, q: np.ndarray):
        """(hit mask, position in self.keys) for V16 query keys."""
        if not len(self.keys):
            return np.zeros(len(q), dtype=bool), np.zeros(len(q), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return self.keys[pos] == q, pos

    def failures(self) -> dict:
        """bytes key -> (source, reason) for failed keys that have no successful row."""
        if self._failures is None:
            out = {}
            for s in sorted(self.shards, key=lambda s: s.name):
                if not len(s.fail_keys):
                    continue
                hit = self.locate(v16(s.fail_keys))[0]
                for k, src, why, h in zip(s.fail_keys, s.fail_sources, s.fail_reasons, hit):
                    if not h:
                        out.setdefault(k.tobytes(), (src, why))
            self._failures = out
        return self._failures

    def owned(self):
        """[(ShardInfo, sorted rows)] of the rows the index serves, in shard name order."""
        order = np.lexsort((self.row, self.sid))
        sid, row = self.sid[order], self.row[order]
        cuts = np.flatnonzero(np.diff(sid)) + 1
        parts = [(self.shards[s[0]], r) for s, r in zip(np.split(sid, cuts), np.split(row, cuts))
                 if len(s)]
        return sorted(parts, key=lambda p: p[0].name)
