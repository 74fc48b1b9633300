"""Tests for featcache.cache.keymemo: a rerun over unchanged files reads none of their bytes."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featcache import FrozenBackbone, inputs
from featcache.cache import FeatureCache, keymemo


@pytest.fixture
def noisy_files(tmp_path):
    """20 PNG files of about 1 MB each (random noise does not compress)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "files"
    folder.mkdir()
    paths = []
    for i in range(20):
        path = folder / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (580, 580, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_a_new_process_over_unchanged_files_reads_almost_none_of_their_bytes(noisy_files, tmp_path):
    cache = tmp_path / "c"
    FrozenBackbone(image_size=32, cache=cache).fit_transform(noisy_files)
    total = sum(os.path.getsize(p) for p in noisy_files)
    code = f"""
import sys
from featcache import FrozenBackbone
paths = {noisy_files!r}
def rchar():
    return int(next(l for l in open('/proc/self/io') if l.startswith('rchar')).split()[1])
b = FrozenBackbone(image_size=32, cache={str(cache)!r}).fit(paths)
before = rchar()
b.transform(paths)
print(rchar() - before, b.transform_stats_['computed'])
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    read, computed = map(int, run.stdout.split())
    assert computed == 0 and read < 0.05 * total, (read, total)


def test_an_edited_file_is_read_again(noisy_files, tmp_path):
    cache = tmp_path / "c"
    FrozenBackbone(image_size=32, cache=cache).fit_transform(noisy_files[:3])
    inputs._KEY_MEMO.clear()  # as a new process
    target = noisy_files[0]
    st = os.stat(target)
    data = bytearray(open(target, "rb").read())
    Image.fromarray(np.zeros((580, 580, 3), np.uint8)).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored: ctime still moves
    backbone = FrozenBackbone(image_size=32, cache=cache)
    backbone.fit_transform(noisy_files[:3])
    assert backbone.transform_stats_["computed"] == 1
    assert bytes(data) != open(target, "rb").read()


def test_memo_files_are_merged_and_damaged_ones_ignored(tmp_path):
    FeatureCache(tmp_path / "c")
    memo = keymemo.KeyMemo(tmp_path / "c")
    for i in range(keymemo.MERGE_AT + 2):
        memo[(f"/x/{i}.png", i, 1, 2, 3, 4)] = i.to_bytes(16, "big")
        memo.save()
    folder = tmp_path / "c" / keymemo.KEYS_DIR
    assert len(list(folder.glob("*.h5"))) < keymemo.MERGE_AT
    fresh = keymemo.KeyMemo(tmp_path / "c")
    assert fresh.get(("/x/5.png", 5, 1, 2, 3, 4)) == (5).to_bytes(16, "big")
    for path in folder.glob("*.h5"):
        path.write_bytes(b"garbage")
    assert keymemo.KeyMemo(tmp_path / "c").get(("/x/5.png", 5, 1, 2, 3, 4)) is None
