"""JPEG files -> rows on one GPU: featcache extract (Pillow or device decode) against its anchors.

Writes N distinct JPEG files of ImageNet size (640x427, circularly shifted copies of
scikit-learn's two sample photographs, quality 90), then measures, in one run, images/s of
each pipeline below for each model (EfficientNet-Lite0 with its packaged weights, ResNet-50
with random weights: the speed does not depend on them), bf16 autocast, channels-last,
224 px. Files are read by DataLoader workers (``--workers``) in every pipeline but DALI's,
which reads with its own threads; the anchors get each batch's bytes as one tensor, as
featcache does (so they differ from it in the decoder, not in how the bytes travel).

- model only: pre-decoded, pre-resized uint8 tensors already on the device;
- NVIDIA DALI: file reader -> ``fn.decoders.image(device="mixed")`` -> GPU resize (shorter
  side, antialiased) and centre crop -> the same network ("not installed" without
  ``nvidia-dali-cuda*``);
- nvImageCodec: batched nvJPEG decode of the file bytes -> the engine's batched resize on the
  GPU -> the network ("not installed" without ``nvidia-nvimgcodec-cu*``);
- torchvision: ``torchvision.io.decode_jpeg(list, device="cuda")`` -> the same resize -> the
  network;
- **featcache extract**, ``decoder="pillow"`` (CPU decode in workers) and ``decoder="device"``
  (JPEG bytes read in workers, decoded and resized in batches on the device), into a fresh
  cache each.

and, once, without a network: featcache's CPU decode + resize in workers; the
``decoder="device"`` feed alone (files read and checked in workers and handed over, nothing
decoded: ``benchmarks/device_feed.py``); and ``decode_jpeg`` on the device + resize. Every pipeline first runs two full batches (not timed: CUDA
context, nvJPEG, the kernels for the batch shape). A pipeline that fails prints its error
in its row, so one run always prints every row. The targets (issue 25 item 1) are checked at
the end: EfficientNet-Lite0 extract with the device decoder >= 5,000 images/s and >= 0.9x
DALI's rate; ResNet-50's >= 0.5x its model-only rate; and (item 2) a fresh process's first
``featcache extract`` (EfficientNet-Lite0, Pillow decode, no warm-up run before it) >= 0.9x its
second job's rate on as many other files.

    .venv/bin/python benchmarks/gpu_throughput.py [--n 4096] [--batch-size 256] [--workers 8]
    .venv/bin/python benchmarks/gpu_throughput.py --device cpu --n 64 --batch-size 16  # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from featcache.backbones import load_backbone
from featcache.engine.batches import (_DecodeDataset, _collate, _resized_by_size,
                                      decode_batch_size, to_unit_float)
from featcache import extract
from featcache.inputs import DecodePolicy, as_items
from featcache.inputs.keys import content_key
from featcache.inputs.sources import collect_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_feed import feed_rate  # noqa: E402  (before gpu_cluster, which drops this folder
from gpu_cluster import write_jpegs  # noqa: E402   from sys.path; the same files as it writes)

SIZE = 224
#: Model -> weights: EfficientNet-Lite0's ship with featcache (offline); ResNet-50 random.
MODELS = {"efficientnet_lite0": "DEFAULT", "resnet50": None}


def synced(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def network(model, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        extractor = load_backbone(model, weights=MODELS[model], image_size=SIZE).extractor
    return extractor.to(device=device, memory_format=torch.channels_last)


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def run_network(extractor, batch):
    extractor(to_unit_float(batch).contiguous(memory_format=torch.channels_last))


def model_only(model, device, n, batch_size) -> float:
    extractor = network(model, device)
    batch = torch.randint(0, 256, (batch_size, 3, SIZE, SIZE), dtype=torch.uint8, device=device)
    steps = max(1, n // batch_size)
    with torch.inference_mode(), autocast(device):
        run_network(extractor, batch)
        start = synced(device)
        for _ in range(steps):
            run_network(extractor, batch)
        seconds = synced(device) - start
    return steps * batch_size / seconds


def cpu_decode_only(paths, batch_size, workers) -> float:
    dataset = _DecodeDataset([Path(p) for p in paths], np.arange(len(paths)), DecodePolicy(), SIZE)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    start = time.perf_counter()
    count = sum(len(positions) for positions, _, _, _ in loader)
    return count / (time.perf_counter() - start)


def device_feed_only(paths, batch_size, workers) -> float:
    """Files/s the decode workers hand over for ``decoder="device"`` (read, key and frame
    checked, packed per decode batch), with nothing decoded: the feed's own bound."""
    items = as_items([str(p) for p in paths])
    keys = [content_key(item, i) for i, item in enumerate(items)]
    dataset = _DecodeDataset(items, np.arange(len(items)), DecodePolicy(decoder="device"), SIZE,
                             keys)
    return feed_rate(dataset, _collate, workers, decode_batch_size(batch_size, workers))


class _FileBytes(Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return Path(self.paths[i]).read_bytes()


def _packed_bytes(datas):
    """A batch of file bytes as one uint8 tensor and the sizes (one shared-memory segment per
    batch, as featcache hands them over: ``benchmarks/device_feed.py``)."""
    sizes = [len(d) for d in datas]
    return torch.frombuffer(bytearray(b"".join(datas)), dtype=torch.uint8), sizes


def _file_bytes(paths, batch_size, workers, device):
    """Batches of file bytes read in workers: lists of 1-D uint8 tensors (views of one)."""
    loader = DataLoader(_FileBytes(paths), batch_size=batch_size, num_workers=workers,
                        collate_fn=_packed_bytes, pin_memory=device.type == "cuda")
    for data, sizes in loader:
        yield list(torch.split(data, sizes))


def torchvision_batches(paths, device, batch_size, workers):
    """``decode_jpeg`` of each batch of file bytes on the device, resized as the engine does."""
    from torchvision.io import ImageReadMode, decode_jpeg

    for data in _file_bytes(paths, batch_size, workers, device):
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        yield torch.stack(_resized_by_size(images, SIZE))


def nvimgcodec_batches(paths, device, batch_size, workers):
    """nvImageCodec's batched decode (nvJPEG) of each batch of file bytes, then the engine's
    batched resize on the device."""
    from nvidia import nvimgcodec

    decoder = nvimgcodec.Decoder(device_id=device.index or 0)
    for data in _file_bytes(paths, batch_size, workers, torch.device("cpu")):
        images = decoder.decode([d.numpy().tobytes() for d in data])
        tensors = [torch.as_tensor(image, device=device).permute(2, 0, 1) for image in images]
        yield torch.stack(_resized_by_size(tensors, SIZE))


def dali_batches(paths, device, batch_size, workers):
    """DALI: file reader -> mixed (nvJPEG) decode -> shorter-side antialiased resize and centre
    crop on the GPU, as uint8 NCHW torch tensors."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    @pipeline_def(batch_size=batch_size, num_threads=workers, device_id=device.index or 0)
    def pipeline():
        jpegs, _ = fn.readers.file(files=[str(p) for p in paths], name="reader")
        images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)
        images = fn.resize(images, resize_shorter=SIZE, antialias=True,
                           interp_type=types.INTERP_LINEAR)
        return fn.crop_mirror_normalize(images, crop=(SIZE, SIZE), dtype=types.UINT8,
                                        output_layout="CHW")

    pipe = pipeline()
    pipe.build()
    for data in DALIGenericIterator([pipe], ["images"], reader_name="reader",
                                    last_batch_policy=LastBatchPolicy.PARTIAL):
        yield data[0]["images"]


DECODERS = {"NVIDIA DALI (mixed decode + GPU resize)": ("nvidia.dali", dali_batches),
            "nvImageCodec batched nvJPEG + engine resize": ("nvidia.nvimgcodec",
                                                           nvimgcodec_batches),
            "torchvision decode_jpeg on the device + engine resize": ("torchvision",
                                                                       torchvision_batches)}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def decode_only(batches, paths, device, batch_size, workers) -> float:
    start = synced(device)
    count = sum(len(b) for b in batches(paths, device, batch_size, workers))
    return count / (synced(device) - start)


def decode_and_model(batches, extractor, paths, device, batch_size, workers) -> float:
    start = synced(device)
    count = 0
    with torch.inference_mode(), autocast(device):
        for batch in batches(paths, device, batch_size, workers):
            run_network(extractor, batch)
            count += len(batch)
    return count / (synced(device) - start)


def featcache_extract(model, folder, cache, device, batch_size, workers, decoder) -> float:
    inputs = collect_inputs([folder])
    network(model, device)  # loading is not throughput
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        summary = extract(inputs, cache, model=model, weights=MODELS[model],
                          batch_size=batch_size, device=str(device), precision="bf16",
                          num_workers=workers, decoder=decoder, progress=False)
    assert summary.computed == len(inputs), summary.line()
    return len(inputs) / summary.seconds


def measured(what, rows, label, function, *args):
    """Append ``(label, images/s or why not)``; a failure is reported, never raised."""
    try:
        rows.append((label, function(*args)))
    except Exception as exc:  # one pipeline failing must not lose the others' rows
        traceback.print_exc()
        rows.append((label, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
    print(f"  {what}: {label}: {rows[-1][1]}", file=sys.stderr, flush=True)


def model_rows(model, paths, warm, folder, tmp, device, b, w) -> list:
    rows = []
    measured(model, rows, "model only, pre-decoded uint8 tensors on the device", model_only,
             model, device, len(paths), b)
    extractor = network(model, device)
    for label, (module, batches) in DECODERS.items():
        if device.type != "cuda":
            rows.append((label + " + model", "needs CUDA"))
        elif not installed(module):
            rows.append((label + " + model", f"not installed ({module})"))
        else:
            measured(model, rows, label + " + model", lambda: (
                decode_and_model(batches, extractor, warm, device, b, w),
                decode_and_model(batches, extractor, paths, device, b, w))[1])
    for decoder in ("pillow", "device"):
        where = "CPU decode in workers" if decoder == "pillow" else "JPEGs decoded on the device"
        measured(model, rows, f"**featcache extract, decoder={decoder!r}** ({where})", lambda: (
            featcache_extract(model, warm[0].parent, tmp / f"warm-{model}-{decoder}", device, b,
                              w, decoder),
            featcache_extract(model, folder, tmp / f"cache-{model}-{decoder}", device, b, w,
                              decoder))[1])
    return rows


def first_and_later_job(first, later, tmp, device, b, w) -> tuple:
    """images/s of a fresh process's first ``featcache extract`` (EfficientNet-Lite0,
    ``decoder="pillow"``, the folder ``first``) and of its second, on as many other files
    (``later``): each into a fresh cache, the network loaded before either is timed."""
    out = subprocess.run(
        [sys.executable, __file__, "--first-job-child", str(first), str(later), str(tmp),
         "--device", str(device), "--batch-size", str(b), "--workers", str(w)],
        capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the child process failed: {out.stderr.strip().splitlines()[-1:]}")
    first_rate, later_rate = (float(v) for v in out.stdout.split())
    return first_rate, later_rate


def _first_job_child(first, later, tmp, device, b, w) -> None:
    rates = [featcache_extract("efficientnet_lite0", Path(folder), Path(tmp) / f"cache-{i}",
                               device, b, w, "pillow") for i, folder in enumerate((first, later))]
    print(*rates)


def rate(rows, start) -> "float | None":
    for label, value in rows:
        if label.startswith(start) and isinstance(value, float):
            return value
    return None


def targets(model, rows) -> list:
    ours = rate(rows, "**featcache extract, decoder='device'")
    out = []
    if model == "efficientnet_lite0":
        out.append((">= 5,000 images/s end to end", ours, None if ours is None else ours >= 5000,
                    "images/s"))
        dali = rate(rows, "NVIDIA DALI")
        ratio = None if ours is None or dali is None else ours / dali
        out.append((">= 0.9x DALI's rate", ratio, None if ratio is None else ratio >= 0.9, "x"))
    if model == "resnet50":
        model_rate = rate(rows, "model only")
        ratio = None if ours is None or model_rate is None else ours / model_rate
        out.append((">= 0.5x the model-only rate", ratio, None if ratio is None else ratio >= 0.5,
                    "x"))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--first-job-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    models = args.models.split(",")
    b, w = args.batch_size, args.workers
    if args.first_job_child:
        return _first_job_child(*args.first_job_child, device, b, w)
    common, per_model = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_jpegs(tmp / "jpegs", 0, args.n)
        paths = sorted(folder.glob("*.jpg"))
        warm = sorted(write_jpegs(tmp / "warm", args.n, min(args.n, 2 * b)).glob("*.jpg"))
        measured("decode", common, f"featcache CPU decode + resize only ({w} workers)",
                 lambda: (cpu_decode_only(warm, b, w), cpu_decode_only(paths, b, w))[1])
        measured("decode", common, f"featcache decoder='device' feed only: files read and "
                 f"checked in {w} workers, no decode", device_feed_only, paths, b, w)
        if device.type == "cuda":
            measured("decode", common, "decode_jpeg on the device + batched resize only",
                     lambda: (decode_only(torchvision_batches, warm, device, b, w),
                              decode_only(torchvision_batches, paths, device, b, w))[1])
        first_job = []
        later = write_jpegs(tmp / "later", 2 * args.n, args.n)
        measured("first job", first_job, "first", lambda: first_and_later_job(
            folder, later, tmp / "first-job", device, b, w))
        for model in models:
            per_model[model] = model_rows(model, paths, warm, folder, tmp, device, b, w)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.n} JPEG files (640x427, quality 90) -> bf16 at {SIZE} px, batch {b}, "
          f"{w} workers, {name}\n")
    print("| model | pipeline | images/s |")
    print("|---|---|---:|")
    for label, value in common:
        print(f"| (none) | {label} | {_cell(value)} |")
    for model, rows in per_model.items():
        for label, value in rows:
            print(f"| {model} | {label} | {_cell(value)} |")
    pair = first_job[0][1] if first_job else "not run"
    if isinstance(pair, tuple):
        print(f"| efficientnet_lite0 | featcache extract, decoder='pillow': a fresh process's "
              f"first job, then its second | {pair[0]:.0f}, then {pair[1]:.0f} |")
    else:
        print(f"| efficientnet_lite0 | a fresh process's first job, then its second | {pair} |")
    print("\n| model | target | measured | met? |")
    print("|---|---|---:|---|")
    if isinstance(pair, tuple):
        ratio = pair[0] / pair[1]
        print(f"| efficientnet_lite0 | first job >= 0.9x the later ones (item 2) | "
              f"{ratio:.2f}x | {'yes' if ratio >= 0.9 else 'no'} |")
    for model, rows in per_model.items():
        for target, value, met, unit in targets(model, rows):
            shown = ("-" if value is None else f"{value:.2f}x" if unit == "x"
                     else f"{value:,.0f} {unit}" if value >= 10 else f"{value:.2f} {unit}")
            print(f"| {model} | {target} | {shown} | "
                  f"{'not measured' if met is None else 'yes' if met else 'no'} |")
    for model, rows in per_model.items():
        model_rate, ours = rate(rows, "model only"), rate(rows, "**featcache extract, decoder='pillow'")
        cpu = rate(common, "featcache CPU decode")
        if None not in (model_rate, ours, cpu):
            bound = "the CPU decode" if cpu < model_rate else "the model"
            print(f"\n{model}: featcache extract (decoder='pillow') runs at "
                  f"{ours / min(model_rate, cpu):.2f}x its bound, {bound} "
                  f"({min(model_rate, cpu):.0f} images/s).")


def _cell(value) -> str:
    return f"{value:.0f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
