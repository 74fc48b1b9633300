"""ResNet-50 bf16 from JPEG files on a GPU: featcache extract, model only, and what bounds it.

Writes N distinct JPEG files of ImageNet size (640x427, circularly shifted copies of
scikit-learn's two sample photographs, quality 90), then measures, in one run, images/s of:

- model only: ResNet-50 (random weights; the speed does not depend on them) in bf16 autocast,
  channels-last, on pre-decoded, pre-resized uint8 tensors already on the device;
- CPU decode only: featcache's decoding and resizing in DataLoader workers, no network;
- GPU decode only: ``torchvision.io.decode_jpeg(..., device="cuda")`` on file bytes read in
  workers, then an antialiased bilinear resize on the GPU;
- featcache extract from the JPEG files (CPU decode in workers, pinned memory, bf16), into a
  fresh cache;
- GPU decode + model: the same files decoded on the GPU and fed to the same network, the
  ceiling of a pipeline that decoded on the device.

Every pipeline first runs two full batches (not timed). The slowest of model-only and
CPU-decode-only is what bounds ``featcache extract``; if GPU
decode + model beats extract by a wide margin, decoding on the device would pay.

    .venv/bin/python benchmarks/gpu_throughput.py [--n 4096] [--batch-size 256] [--workers 8]
    .venv/bin/python benchmarks/gpu_throughput.py --device cpu --n 64 --batch-size 16  # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from featcache.backbones import load_backbone
from featcache.engine.batches import _DecodeDataset, _collate, resize_and_crop, to_unit_float
from featcache import extract
from featcache.inputs import DecodePolicy
from featcache.inputs.sources import collect_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_cluster import write_jpegs  # noqa: E402  (the same files as gpu_cluster.py)

SIZE = 224
MODEL = "resnet50"


def synced(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def network(device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        extractor = load_backbone(MODEL, weights=None, image_size=SIZE).extractor
    return extractor.to(device=device, memory_format=torch.channels_last)


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def model_only(device, n, batch_size) -> float:
    extractor = network(device)
    batch = torch.randint(0, 256, (batch_size, 3, SIZE, SIZE), dtype=torch.uint8, device=device)
    steps = max(1, n // batch_size)
    with torch.inference_mode(), autocast(device):
        extractor(to_unit_float(batch).contiguous(memory_format=torch.channels_last))
        start = synced(device)
        for _ in range(steps):
            extractor(to_unit_float(batch).contiguous(memory_format=torch.channels_last))
        seconds = synced(device) - start
    return steps * batch_size / seconds


def cpu_decode_only(paths, batch_size, workers) -> float:
    dataset = _DecodeDataset([Path(p) for p in paths], np.arange(len(paths)), DecodePolicy(), SIZE)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    start = time.perf_counter()
    count = sum(len(positions) for positions, _, _ in loader)
    return count / (time.perf_counter() - start)


class _FileBytes(Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.frombuffer(bytearray(Path(self.paths[i]).read_bytes()), dtype=torch.uint8)


def _gpu_decoded_batches(paths, device, batch_size, workers):
    from torchvision.io import ImageReadMode, decode_jpeg

    loader = DataLoader(_FileBytes(paths), batch_size=batch_size, num_workers=workers,
                        collate_fn=list)
    for data in loader:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        yield torch.stack([resize_and_crop(img, SIZE) for img in images])  # as featcache does


def gpu_decode_only(paths, device, batch_size, workers) -> float:
    start = synced(device)
    count = sum(len(b) for b in _gpu_decoded_batches(paths, device, batch_size, workers))
    return count / (synced(device) - start)


def gpu_decode_and_model(paths, device, batch_size, workers) -> float:
    extractor = network(device)
    start = synced(device)
    with torch.inference_mode(), autocast(device):
        for batch in _gpu_decoded_batches(paths, device, batch_size, workers):
            extractor(to_unit_float(batch).contiguous(memory_format=torch.channels_last))
    return len(paths) / (synced(device) - start)


def featcache_extract(folder, cache, device, batch_size, workers) -> float:
    inputs = collect_inputs([folder])
    network(device)  # loading is not throughput
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        summary = extract(inputs, cache, model=MODEL, weights=None, batch_size=batch_size,
                          device=str(device), precision="bf16", num_workers=workers,
                          progress=False)
    assert summary.computed == len(inputs), summary.line()
    return len(inputs) / summary.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpegs(Path(tmp) / "jpegs", 0, args.n)
        paths = sorted(folder.glob("*.jpg"))
        b, w = args.batch_size, args.workers
        # Warm-up, two full batches through every pipeline (CUDA context, nvJPEG, the
        # kernels for the batch shape): a process's first full-size job ran at about 0.55x.
        warm = sorted(write_jpegs(Path(tmp) / "warm", args.n, min(args.n, 2 * b)).glob("*.jpg"))
        cpu_decode_only(warm, b, w)
        gpu_decode_and_model(warm, device, b, w)
        featcache_extract(Path(tmp) / "warm", Path(tmp) / "warm-cache", device, b, w)
        rows.append(("model only, pre-decoded uint8 tensors on the device",
                     model_only(device, args.n, b)))
        rows.append((f"CPU decode + resize only ({w} workers)", cpu_decode_only(paths, b, w)))
        rows.append(("decode_jpeg on the device + resize only", gpu_decode_only(paths, device, b, w)))
        rows.append((f"**featcache extract from JPEG files** (CPU decode, {w} workers)",
                     featcache_extract(folder, Path(tmp) / "cache", device, b, w)))
        rows.append(("decode_jpeg on the device + model", gpu_decode_and_model(paths, device, b, w)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.n} JPEG files (640x427, quality 90) -> {MODEL} bf16 at {SIZE} px, batch {b}, "
          f"{name}\n")
    print("| pipeline | images/s |")
    print("|---|---:|")
    for label, rate in rows:
        print(f"| {label} | {rate:.0f} |")
    model, cpu_decode, gpu_decode, ours, ceiling = (rate for _, rate in rows)
    bound = "the CPU decode" if cpu_decode < model else "the model"
    print(f"\nfeatcache extract runs at {ours / min(model, cpu_decode):.2f}x its bound, {bound} "
          f"({min(model, cpu_decode):.0f} images/s); decoding on the device would reach "
          f"{ceiling / ours:.2f}x today's extract.")


if __name__ == "__main__":
    main()
