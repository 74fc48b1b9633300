"""Tests for featcache.engine.batches: resizing, device and precision choice, the batch loop."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from featcache.backbones import load_backbone
from featcache.engine.batches import (
    resolve_device,
    resolve_num_workers,
    resolve_precision,
    run_batches,
    to_model_input,
    to_unit_float,
)
from featcache.exceptions import FeatcacheError, InputError


def test_resize_keeps_uint8_and_crops_the_centre_of_non_square_images():
    square = to_model_input(np.full((28, 28, 3), 200, np.uint8), 56)
    assert square.dtype == torch.uint8 and square.shape == (3, 56, 56)
    assert int(square.min()) == int(square.max()) == 200
    wide = np.zeros((20, 60, 3), np.float32)
    wide[:, 20:40] = 1.0  # the centre third is white
    out = to_model_input(wide, 20)
    assert out.dtype == torch.float32 and out.shape == (3, 20, 20)
    assert out.min() > 0.99, "the centre square of a wide image is its middle third"
    torch.testing.assert_close(to_unit_float(square), torch.full((3, 56, 56), 200 / 255))


def test_device_precision_and_workers_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FeatcacheError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(FeatcacheError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_num_workers(None, torch.device("cpu")) == 0
    assert resolve_num_workers(3, torch.device("cpu")) == 3


def test_decode_workers_are_sized_to_the_cores_the_process_may_use(monkeypatch, tmp_path):
    from featcache.engine import batches

    monkeypatch.setattr(os, "cpu_count", lambda: 128)  # the machine, not this process's share
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert batches.usable_cores() == 6
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_num_workers(None, cuda) == 6 and resolve_num_workers(2, cuda) == 2
    files = [tmp_path / f"{i}.png" for i in range(batches.CPU_WORKERS_MIN_FILES + 1)]
    everything = range(len(files))
    assert resolve_num_workers(None, cpu, files, everything) == 6  # a large job of files
    assert resolve_num_workers(None, cpu, files, range(10)) == 0  # a small one: no start cost
    arrays = [np.zeros((8, 8), np.uint8)] * len(files)
    assert resolve_num_workers(None, cpu, arrays, everything) == 0  # nothing to decode
    assert resolve_num_workers(0, cuda) == 0 and resolve_num_workers(1, cpu, files, everything) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert resolve_num_workers(None, cpu, files, everything) == 0  # one core runs the network
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    assert batches.usable_cores() == 128


def _items(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (28, 28), dtype=np.uint8) for _ in range(n)]


def test_batches_cover_the_requested_positions_and_do_not_depend_on_batch_size():
    loaded = load_backbone(image_size=32)
    items = _items(10)
    positions = np.array([9, 2, 4, 7, 0])

    def collect(batch_size):
        rows = {}
        for batch in run_batches(loaded.extractor, items, positions, image_size=32,
                                 batch_size=batch_size, progress=False):
            rows.update(zip(batch.positions.tolist(), batch.features["default"]))
        return rows

    one, three = collect(1), collect(3)
    assert list(one) == positions.tolist() and list(three) == positions.tolist()
    for pos in one:
        np.testing.assert_allclose(one[pos], three[pos], atol=1e-4)


def test_decode_failures_raise_or_are_reported():
    loaded = load_backbone(image_size=32)
    items = _items(3)
    items[1] = np.full((28, 28), np.nan, np.float32)
    with pytest.raises(InputError, match="input 1"):
        list(run_batches(loaded.extractor, items, [0, 1, 2], image_size=32, progress=False))
    batches = list(run_batches(loaded.extractor, items, [0, 1, 2], image_size=32,
                               on_error="skip", progress=False))
    assert [b.positions.tolist() for b in batches] == [[0, 2]]
    assert batches[0].failures[0][0] == 1 and "input 1" in batches[0].failures[0][1]


def test_decode_workers_split_a_batch_and_the_network_gets_it_whole():
    from featcache.engine.batches import decode_batch_size

    assert [decode_batch_size(256, w) for w in (0, 1, 2, 8, 300)] == [256, 256, 128, 32, 1]
    loaded = load_backbone(image_size=32)
    items = _items(11)
    items[5] = np.full((28, 28), np.nan, np.float32)  # undecodable: a failure, not a row
    items[8] = items[8].astype(np.uint16) * 257  # a 16-bit image joins 8-bit ones as float
    batches = list(run_batches(loaded.extractor, items, range(11), image_size=32, batch_size=4,
                               num_workers=2, on_error="skip", progress=False))
    assert [len(b.positions) + len(b.failures) for b in batches] == [4, 4, 3]
    assert [p for b in batches for p in b.positions.tolist()] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert [f[0] for b in batches for f in b.failures] == [5]
    alone = np.concatenate([b.features["default"] for b in run_batches(
        loaded.extractor, [items[i] for i in (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)], range(10),
        image_size=32, batch_size=4, progress=False)])
    np.testing.assert_allclose(np.concatenate([b.features["default"] for b in batches]), alone,
                               atol=1e-5)


def test_decode_workers_give_the_same_rows():
    loaded = load_backbone(image_size=32)
    items = _items(6)
    rows = [np.concatenate([b.features["default"] for b in run_batches(
        loaded.extractor, items, range(6), image_size=32, batch_size=4, num_workers=workers,
        progress=False)]) for workers in (0, 2)]
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-5)


def test_warm_up_runs_the_network_once_on_zeros_of_the_runs_shape_and_layout():
    from featcache.engine.batches import warm_up

    seen = []

    def extractor(x):
        seen.append((tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last),
                     torch.is_inference_mode_enabled(), torch.is_autocast_cpu_enabled(),
                     float(x.abs().max())))
        return {"default": x.mean((2, 3))}

    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    warm_up(extractor, torch.device("cpu"), 5, 32, autocast)
    assert seen == [((5, 3, 32, 32), torch.float32, True, True, True, 0.0)]
    warm_up(extractor, torch.device("cpu"), 0, 32, autocast)  # nothing to compute: no pass
    assert len(seen) == 1


@pytest.mark.gpu
def test_a_gpu_run_with_decode_workers_warms_the_network_up_before_the_first_batch(
        monkeypatch):
    from featcache.engine import batches

    calls = []
    real = batches.warm_up
    monkeypatch.setattr(batches, "warm_up",
                        lambda *args: calls.append(args[2:4]) or real(*args))
    loaded = load_backbone(image_size=64)
    loop = run_batches(loaded.extractor, _items(6), range(6), image_size=64, device="cuda",
                       batch_size=4, num_workers=2, progress=False)
    next(loop)
    assert calls == [(4, 64)]
    loop.close()


@pytest.mark.gpu
def test_gpu_loop_with_pinned_memory_and_bf16():
    loaded = load_backbone(image_size=64)
    items = _items(16)
    cpu = np.concatenate([b.features["default"] for b in run_batches(
        loaded.extractor, items, range(16), image_size=64, device="cpu", progress=False)])
    gpu = np.concatenate([b.features["default"] for b in run_batches(
        loaded.extractor, items, range(16), image_size=64, device="cuda", precision="bf16",
        progress=False)])
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cos.min() > 0.98


def test_cpu_chunks_are_cache_sized():
    from featcache.engine.batches import cpu_chunk_size

    assert cpu_chunk_size(224) == 8 and cpu_chunk_size(96) == 43 and cpu_chunk_size(4000) == 1


def test_denormal_flushing_is_on_during_a_cpu_run_and_restored_after():
    from featcache.engine.batches import _denormals_flushed

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    loaded = load_backbone(image_size=32)
    seen = []
    for caller_setting in (False, True):
        torch.set_flush_denormal(caller_setting)
        for _ in run_batches(loaded.extractor, _items(2), [0, 1], image_size=32, device="cpu",
                             progress=False):
            seen.append(_denormals_flushed())
        assert _denormals_flushed() == caller_setting, "the caller's setting is restored"
    torch.set_flush_denormal(False)
    assert seen == [True, True]


def test_decode_workers_fork_from_a_preloaded_forkserver_where_the_process_spawns():
    from featcache.engine.batches import decode_context

    assert decode_context(4, "fork") is None and decode_context(0, "spawn") is None
    context = decode_context(4, "spawn")
    assert context.get_start_method() == "forkserver"


def test_the_parent_imports_what_forked_decode_workers_need():
    # Else every forked worker imported torchvision's resize on its own, in every run.
    code = ("import sys; from featcache.engine.batches import decode_context; "
            "name = 'torchvision.transforms.v2.functional'; before = name in sys.modules; "
            "decode_context(2, 'fork'); print(before, name in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split() == ["False", "True"]


def test_decode_workers_in_a_spawning_process_give_the_same_rows(tmp_path):
    # A real process whose start method is spawn (a Dask worker's): decode workers fork from
    # the forkserver, twice (the second run reuses it), and give the in-process rows.
    script = tmp_path / "spawning.py"
    script.write_text(
        "import multiprocessing, numpy as np\n"
        "from featcache.backbones import load_backbone\n"
        "from featcache.engine.batches import run_batches\n"
        "from featcache.inputs import as_items\n"
        "def rows(workers):\n"
        "    loaded = load_backbone(image_size=32)\n"
        "    items = as_items(np.random.default_rng(0).integers(0, 255, (12, 40, 40, 3), np.uint8))\n"
        "    return np.concatenate([b.features['default'] for b in run_batches(\n"
        "        loaded.extractor, items, range(12), image_size=32, batch_size=4,\n"
        "        num_workers=workers, device='cpu', progress=False)])\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.set_start_method('spawn')\n"
        "    base = rows(0)\n"
        "    for _ in range(2):\n"
        "        np.testing.assert_allclose(rows(2), base, atol=1e-5)\n"
        "    print('same rows')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "same rows" in done.stdout, done.stderr[-2000:]


# ---------------------------------------------------------------- decoder="device"
def _mixed_files(folder):
    """Colour, progressive and grayscale JPEGs, a PNG, a truncated JPEG and a CMYK JPEG."""
    from PIL import Image

    rng = np.random.default_rng(3)
    smooth = [np.asarray(Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
                         .resize((w, h), Image.BICUBIC)) for h, w in [(96, 128), (120, 90)]]
    files = {"a.jpg": (smooth[0], {"quality": 90}), "b.jpg": (smooth[1], {"progressive": True}),
             "c.jpg": (smooth[0][..., 1], {}), "d.png": (smooth[1], {}),
             "f.jpg": (smooth[1], {"quality": 80}), "g.jpg": (smooth[0], {"quality": 95})}
    paths = []
    for name, (arr, save) in files.items():
        paths.append(folder / name)
        Image.fromarray(arr).save(paths[-1], **save)
    truncated = folder / "e.jpg"
    truncated.write_bytes(paths[0].read_bytes()[:2000])  # its headers whole, half its data
    cmyk = folder / "h.jpg"
    Image.fromarray(smooth[0]).convert("CMYK").save(cmyk)
    return paths[:4] + [truncated] + paths[4:] + [cmyk]


def _rows(loaded, items, policy, device="cpu", **kwargs):
    rows, failures = {}, {}
    for batch in run_batches(loaded.extractor, items, range(len(items)), image_size=32,
                             policy=policy, batch_size=4, on_error="skip", progress=False,
                             device=device, **kwargs):
        rows.update(zip(batch.positions.tolist(), batch.features["default"]))
        failures.update(batch.failures)
    return rows, failures


def test_the_device_decoder_decodes_jpegs_in_batches_and_falls_back_per_input(tmp_path,
                                                                               monkeypatch):
    from featcache.engine import batches
    from featcache.inputs import DecodePolicy

    items = _mixed_files(tmp_path)
    loaded = load_backbone(image_size=32)
    decoded_on_device = []
    real = batches.decode_jpegs

    def one_refused(datas, device):  # the device refuses f.jpg (Pillow then decodes it)
        decoded_on_device.extend(len(d) for d in datas)
        out = real(datas, device)
        return [None if len(d) == items[5].stat().st_size else image
                for d, image in zip(datas, out)]

    monkeypatch.setattr(batches, "decode_jpegs", one_refused)
    device, device_failures = _rows(loaded, items, DecodePolicy(decoder="device"))
    # Batches of 4 inputs: a, b, c go to the device (d.png to Pillow), then f, g; e is
    # truncated (no end-of-image marker: Pillow's, which fails it), h is CMYK (Pillow's).
    assert sorted(decoded_on_device) == sorted(items[i].stat().st_size for i in (0, 1, 2, 5, 6))
    assert list(device_failures) == [4] and "e.jpg" in device_failures[4]
    assert sorted(device) == [0, 1, 2, 3, 5, 6, 7]
    # Measured: on a CPU, decode_jpeg is libjpeg-turbo, as Pillow; these images are under 4x
    # the input size (no reduced decode): the rows equal Pillow's exactly.
    pillow, pillow_failures = _rows(loaded, items, DecodePolicy())
    assert list(pillow_failures) == [4]
    for pos in device:
        np.testing.assert_array_equal(device[pos], pillow[pos], err_msg=str(items[pos]))


def test_a_decode_batch_hands_its_jpegs_to_the_device_as_one_tensor(tmp_path):
    # One shared-memory tensor per decode batch, not one per file: per-file tensors bounded
    # the feed from the decode workers (benchmarks/device_feed.py).
    from featcache.engine.batches import _DecodeDataset, _collate, _unpacked
    from featcache.inputs import DecodePolicy

    items = _mixed_files(tmp_path)
    dataset = _DecodeDataset(items, np.arange(len(items)), DecodePolicy(decoder="device"), 32)
    positions, images, errors, packed = _collate([dataset[i] for i in range(len(items))])
    assert positions.tolist() == [3, 7]  # the PNG and the CMYK JPEG: decoded by Pillow
    assert images.shape == (2, 3, 32, 32) and [pos for pos, _ in errors] == [4]
    assert packed.positions.tolist() == [0, 1, 2, 5, 6]  # e.jpg, truncated: Pillow's
    assert packed.data.dtype == torch.uint8 and packed.data.ndim == 1
    pairs = _unpacked(packed)
    assert [pos for pos, _ in pairs] == [0, 1, 2, 5, 6]
    for pos, data in pairs:  # each file's bytes exactly, a view of the one tensor
        assert data.numpy().tobytes() == items[pos].read_bytes()
        assert data.untyped_storage().data_ptr() == packed.data.untyped_storage().data_ptr()
    assert _collate([dataset[3]])[3] is None and _unpacked(None) == []


def test_device_decoded_rows_are_the_same_with_and_without_decode_workers(tmp_path):
    from featcache.inputs import DecodePolicy

    items = _mixed_files(tmp_path) * 2
    loaded = load_backbone(image_size=32)
    alone, alone_failures = _rows(loaded, items, DecodePolicy(decoder="device"), num_workers=0)
    workers, workers_failures = _rows(loaded, items, DecodePolicy(decoder="device"),
                                      num_workers=2)
    assert sorted(workers) == sorted(alone) == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15]
    assert sorted(workers_failures) == sorted(alone_failures) == [4, 12]
    for pos in alone:
        np.testing.assert_array_equal(workers[pos], alone[pos], err_msg=str(items[pos]))


def test_a_jpeg_neither_the_device_nor_pillow_decodes_is_that_inputs_error(tmp_path,
                                                                           monkeypatch):
    from PIL import Image

    from featcache.engine import batches
    from featcache.inputs import DecodePolicy

    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8)).save(good)
    data = good.read_bytes()
    # Its quantisation tables removed: the frame (SOF0, 8-bit, 3 components, ends with EOI)
    # goes to the device, which cannot decode the scan; Pillow cannot either.
    start = data.index(b"\xff\xdb")
    end = data.index(b"\xff\xc0")
    broken = tmp_path / "no_tables.jpg"
    broken.write_bytes(data[:start] + data[end:])
    reached, real = [], batches.decode_jpegs

    def recorded(datas, device):
        out = real(datas, device)
        reached.extend((len(d), image is None) for d, image in zip(datas, out))
        return out

    monkeypatch.setattr(batches, "decode_jpegs", recorded)
    rows, failures = _rows(load_backbone(image_size=32), [good, broken],
                           DecodePolicy(decoder="device"))
    assert sorted(reached) == sorted([(len(data), False), (broken.stat().st_size, True)])
    assert list(rows) == [0] and list(failures) == [1] and "no_tables.jpg" in failures[1]


def test_device_decoded_batches_keep_the_planned_order_and_augment(tmp_path):
    from featcache.inputs import DecodePolicy
    from featcache.inputs.augment import DEFAULT_POLICY, AugmentView
    from featcache.inputs.keys import content_key

    items = _mixed_files(tmp_path)
    positions = [7, 3, 0, 6, 1, 2]
    loaded = load_backbone(image_size=32)
    keys = [content_key(item, i) for i, item in enumerate(items)]
    got = {}
    for decoder in ("pillow", "device"):
        batches = list(run_batches(loaded.extractor, items, positions, image_size=32,
                                   policy=DecodePolicy(decoder=decoder), batch_size=3,
                                   keys=keys, augment=AugmentView(DEFAULT_POLICY, 1),
                                   progress=False))
        assert [p for b in batches for p in b.positions.tolist()] == positions
        got[decoder] = np.concatenate([b.features["default"] for b in batches])
    np.testing.assert_allclose(got["device"], got["pillow"], atol=1e-5)


def test_the_device_decodes_the_next_batches_in_a_thread_while_the_network_runs(
        tmp_path, monkeypatch):
    import threading

    from featcache.engine import batches
    from featcache.inputs import DecodePolicy

    items = _mixed_files(tmp_path)
    loaded = load_backbone(image_size=32)
    decoding_threads, forward_threads = set(), set()
    real_decode, real_forward = batches.decode_jpegs, batches._forward

    def decode(datas, device):
        decoding_threads.add(threading.current_thread().name)
        return real_decode(datas, device)

    def forward(*args):
        forward_threads.add(threading.current_thread().name)
        return real_forward(*args)

    monkeypatch.setattr(batches, "decode_jpegs", decode)
    monkeypatch.setattr(batches, "_forward", forward)
    rows, failures = _rows(loaded, items, DecodePolicy(decoder="device"))
    assert decoding_threads == {"featcache-prefetch"}
    assert forward_threads == {threading.current_thread().name}
    assert sorted(rows) == [0, 1, 2, 3, 5, 6, 7] and list(failures) == [4]
    assert not [t for t in threading.enumerate() if t.name == "featcache-prefetch"]


def _decode_workers_left(earlier):
    """The decode workers (daemonic children not among the pids ``earlier``, which an earlier
    test may have left, e.g. joblib's) still alive once each had up to 60 s to end.

    The loop asks them to stop when it ends; each ends when it has seen the request (an
    event, waited on with a bound), not by a deadline the test assumes.
    """
    import multiprocessing

    workers = [p for p in multiprocessing.active_children()
               if p.daemon and p.pid not in earlier]
    for worker in workers:
        worker.join(timeout=60)
    return [p for p in workers if p.is_alive()]


def test_a_failure_of_the_device_decoder_reaches_the_caller_and_stops_the_workers(
        tmp_path, monkeypatch):
    import multiprocessing
    import threading

    from featcache.engine import batches
    from featcache.inputs import DecodePolicy

    items = _mixed_files(tmp_path)
    loaded = load_backbone(image_size=32)
    calls = []

    def out_of_memory(datas, device):  # the second device batch fails as a whole
        calls.append(len(datas))
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return batches.decode_jpegs.__wrapped__(datas, device)

    out_of_memory.__wrapped__ = batches.decode_jpegs
    monkeypatch.setattr(batches, "decode_jpegs", out_of_memory)
    earlier = {p.pid for p in multiprocessing.active_children()}
    loop = run_batches(loaded.extractor, items, range(len(items)), image_size=32,
                       policy=DecodePolicy(decoder="device"), batch_size=4, num_workers=2,
                       on_error="skip", progress=False, device="cpu")
    first = next(loop)
    assert first.positions.tolist() == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        next(loop)
    assert not [t for t in threading.enumerate() if t.name == "featcache-prefetch"]
    assert not _decode_workers_left(earlier)  # the decode workers were shut down


def test_leaving_a_device_decoded_loop_early_stops_the_thread_and_the_workers(tmp_path):
    import multiprocessing
    import threading

    from featcache.inputs import DecodePolicy

    items = _mixed_files(tmp_path) * 4
    loaded = load_backbone(image_size=32)
    earlier = {p.pid for p in multiprocessing.active_children()}
    loop = run_batches(loaded.extractor, items, range(len(items)), image_size=32,
                       policy=DecodePolicy(decoder="device"), batch_size=4, num_workers=2,
                       on_error="skip", progress=False, device="cpu")
    assert len(next(loop).positions) == 4
    loop.close()  # a caller's break, a deferred signal raised between batches
    assert not [t for t in threading.enumerate() if t.name == "featcache-prefetch"]
    assert not _decode_workers_left(earlier)


@pytest.mark.parametrize("decoder", ["pillow", "device"])
def test_a_loop_left_after_a_workers_error_stops_its_workers_where_tracebacks_pickle(
        tmp_path, decoder):
    # tblib's pickling support (installed by importing distributed or skops) makes an error
    # a decode worker sends carry its traceback, rebuilt here on frames that chain into the
    # loop: the loader's iterator then sat in a reference cycle and its workers outlived the
    # loop (both tests above failed in CI, where test modules import distributed).
    pytest.importorskip("tblib")
    paths = [str(p) for p in _mixed_files(tmp_path)] * 4
    script = tmp_path / "tracebacks.py"
    script.write_text(
        "import multiprocessing, sys\n"
        "from featcache.backbones import load_backbone\n"
        "from featcache.engine.batches import run_batches\n"
        "from featcache.inputs import DecodePolicy\n"
        "from tblib import pickling_support\n"
        "pickling_support.install()  # every exception class loaded by now\n"
        "paths = sys.argv[2:]\n"
        "loaded = load_backbone(image_size=32)\n"
        "loop = run_batches(loaded.extractor, paths, range(len(paths)), image_size=32,\n"
        "                   policy=DecodePolicy(decoder=sys.argv[1]), batch_size=4,\n"
        "                   num_workers=2, on_error='skip', progress=False, device='cpu')\n"
        "failures = []\n"
        "while not failures:  # until a worker's error has crossed over\n"
        "    failures = next(loop).failures\n"
        "loop.close()\n"
        "workers = [p for p in multiprocessing.active_children() if p.daemon]\n"
        "for worker in workers:\n"
        "    worker.join(timeout=60)\n"
        "print(failures)\n"
        "print('left:', sum(w.is_alive() for w in workers))\n")
    done = subprocess.run([sys.executable, str(script), decoder, *paths], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "e.jpg" in done.stdout and "truncated" in done.stdout, done.stdout
    assert done.stdout.strip().endswith("left: 0"), done.stdout


def test_a_device_without_a_jpeg_decoder_stops_before_decoding(tmp_path, monkeypatch):
    from featcache.engine import device_decode
    from featcache.exceptions import DecoderUnavailableError
    from featcache.inputs import DecodePolicy

    monkeypatch.setattr(device_decode, "_torchvision_decoder", lambda: None)
    loaded = load_backbone(image_size=32)
    with pytest.raises(DecoderUnavailableError, match="decoder='pillow'"):
        _rows(loaded, _mixed_files(tmp_path), DecodePolicy(decoder="device"))
    assert _rows(loaded, _items(2), DecodePolicy())[0]  # the default decoder needs none


@pytest.mark.gpu
def test_the_device_decoder_on_the_gpu_gives_rows_close_to_pillows(tmp_path, monkeypatch):
    from featcache.engine import batches
    from featcache.inputs import DecodePolicy

    items = _mixed_files(tmp_path)
    loaded = load_backbone(image_size=32)
    refused, real = [], batches.decode_jpegs

    def recorded(datas, device):  # which bytes nvJPEG refused (Pillow then decodes them)
        out = real(datas, device)
        refused.extend(len(d) for d, image in zip(datas, out) if image is None)
        return out

    monkeypatch.setattr(batches, "decode_jpegs", recorded)
    device, failures = _rows(loaded, items, DecodePolicy(decoder="device"), device="cuda",
                             precision="fp32", num_workers=2)
    # nvJPEG refused none (the truncated e.jpg never reaches it): the packed bytes' views
    # decode on the GPU.
    assert refused == []
    pillow, _ = _rows(loaded, items, DecodePolicy(), device="cuda", precision="fp32")
    assert list(failures) == [4] and sorted(device) == sorted(pillow) == [0, 1, 2, 3, 5, 6, 7]
    for pos in device:  # nvJPEG is not libjpeg-turbo: close, not equal (not measured yet)
        a, b = device[pos], pillow[pos]
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.995, items[pos]
