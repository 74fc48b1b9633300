"""Extraction throughput from PNG files vs the bare model and vs a naive per-image loop.

Writes N PneumoniaMNIST images as PNG files, then measures, in one run:

- the bare model: the frozen extractor's forward on pre-decoded, pre-resized tensors, at the
  same batch size (channels-last, inference mode), once as one forward per batch and once
  the way featcache's engine runs a batch on a CPU (chunks of 8 images, freed memory
  reused): the second is the ceiling of the pipeline, so its ratio is the pipeline's cost;
- featcache: the whole ``extract`` job from the PNG files into a fresh cache (content hashing,
  decoding, resizing, forward, shard commits) — target: at least 0.9x the bare model;
- featcache with ``precision="bf16"`` (CPU autocast), where the CPU has bf16 instructions;
- a naive per-image loop (PIL decode, one image per forward, NCHW, no_grad), the way embetter
  and img2vec work — target: featcache at least 2x faster;
- resnet18 and resnet50 through featcache, with the achieved GFLOP/s next to a float32
  matrix multiply's GFLOP/s measured in the same run.

    .venv/bin/python benchmarks/extract_throughput.py [--n 2000] [--naive-n 200] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featcache.engine.allocator import reuse_freed_memory
from featcache.backbones import load_backbone
from featcache.engine.batches import _forward, to_model_input, to_unit_float
from featcache import extract
from featcache.inputs import decode
from featcache.inputs.sources import collect_inputs

DATA = Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist_trainval.npz"
SIZE = 224


def write_pngs(folder: Path, n: int) -> list:
    with np.load(DATA) as data:
        images = np.concatenate([data["train_images"], data["val_images"]])[:n]
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{i:05d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def bare_model(paths, batch_size, engine_chunks=False) -> float:
    """Images/s of the extractor alone on pre-decoded, pre-resized tensors.

    ``engine_chunks=False``: one forward per batch; True: each batch through the engine's
    own ``_forward`` (chunks of 8 at 224 px) with freed memory reused, as ``extract`` runs it.
    """
    loaded = load_backbone(image_size=SIZE)
    extractor = loaded.extractor.to(memory_format=torch.channels_last)
    tensors = [to_model_input(decode(p, i), SIZE) for i, p in enumerate(paths)]
    batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
    if not engine_chunks:
        batches = [to_unit_float(b).contiguous(memory_format=torch.channels_last) for b in batches]
    cpu = torch.device("cpu")
    forward = (lambda b: _forward(extractor, b, cpu)) if engine_chunks else extractor
    torch.set_flush_denormal(True)  # as featcache's engine does on a CPU
    with torch.inference_mode(), (reuse_freed_memory() if engine_chunks else contextlib.nullcontext()):
        forward(batches[0])
        start = time.perf_counter()
        for batch in batches:
            forward(batch)
        seconds = time.perf_counter() - start
    torch.set_flush_denormal(False)
    return len(paths) / seconds


def featcache_job(folder, cache, batch_size, model="efficientnet_lite0", weights="DEFAULT", n=None,
                  precision="auto"):
    """Images/s of `featcache extract` from PNG files into a fresh cache (model preloaded)."""
    inputs = collect_inputs([folder])
    if n is not None:
        inputs = inputs.subset(range(n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        load_backbone(model, weights=weights)  # loading the weights is not throughput
        summary = extract(inputs, cache, model=model, weights=weights, batch_size=batch_size,
                          precision=precision, progress=False)
    assert summary.computed == len(inputs), summary.line()
    return len(inputs) / summary.seconds


def naive_loop(paths) -> float:
    """Images/s of a per-image loop: PIL decode, resize, one forward per image, NCHW."""
    loaded = load_backbone(image_size=SIZE)
    network = plain_network()
    mean, std = loaded.extractor.mean, loaded.extractor.std
    start = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            img = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
            network.forward_features((x - mean) / std).mean(dim=(2, 3))
    return len(paths) / (time.perf_counter() - start)


def plain_network():
    """The pretrained network as a hand-written script loads it (featcache's own copy is tuned)."""
    from featcache.backbones import get_backbone
    from featcache.backbones.loading import build_network

    return build_network(get_backbone("efficientnet_lite0"), "DEFAULT")[0].eval()


def gflops_per_image(model, weights) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        extractor = load_backbone(model, weights=weights, image_size=SIZE).extractor
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        extractor(torch.rand(1, 3, SIZE, SIZE))
    return counter.get_total_flops() / 1e9


def matmul_gflops(n=2048, repeats=5) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--naive-n", type=int, default=200)
    parser.add_argument("--resnet-n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pngs"
        folder.mkdir()
        paths = write_pngs(folder, args.n)
        ours = featcache_job(folder, Path(tmp) / "c1", args.batch_size)
        bare = bare_model(paths, args.batch_size)
        bare_chunked = bare_model(paths, args.batch_size, engine_chunks=True)
        naive = naive_loop(paths[: args.naive_n])
        bf16 = None
        if cpu_has_bf16():
            bf16 = featcache_job(folder, Path(tmp) / "c-bf16", args.batch_size, precision="bf16")
        peak = matmul_gflops()
        resnets = []
        for model in ("resnet18", "resnet50"):
            if args.resnet_n:
                rate = featcache_job(folder, Path(tmp) / f"c-{model}", args.batch_size, model=model,
                                     weights=None, n=args.resnet_n)
                resnets.append((model, rate, rate * gflops_per_image(model, None)))
    lite = gflops_per_image("efficientnet_lite0", "DEFAULT")
    print(f"{args.n} PNG files (PneumoniaMNIST 28x28) at {SIZE} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| pipeline | images/s | ratio | GFLOP/s (share of matmul) |")
    print("|---|---:|---:|---:|")
    print(f"| bare model on pre-decoded tensors, one forward per batch | {bare:.1f} | "
          f"featcache {ours / bare:.2f}x (target >= 0.9) | {bare * lite:.0f} ({bare * lite / peak:.0%}) |")
    print(f"| bare model on pre-decoded tensors, engine chunks | {bare_chunked:.1f} | "
          f"featcache {ours / bare_chunked:.2f}x | {bare_chunked * lite:.0f} "
          f"({bare_chunked * lite / peak:.0%}) |")
    print(f"| **featcache extract from PNG files** | **{ours:.1f}** | | "
          f"{ours * lite:.0f} ({ours * lite / peak:.0%}) |")
    print(f"| naive per-image loop | {naive:.1f} | featcache {ours / naive:.2f}x (target >= 2) | |")
    if bf16 is not None:
        print(f"| featcache extract, precision bf16 | {bf16:.1f} | {bf16 / ours:.2f}x fp32 | |")
    for model, rate, gflops in resnets:
        print(f"| featcache extract ({model}) | {rate:.1f} | | {gflops:.0f} ({gflops / peak:.0%}) |")
    print(f"| float32 matrix multiply 2048x2048 | | | {peak:.0f} (100%) |")


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


if __name__ == "__main__":
    main()
