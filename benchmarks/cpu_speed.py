"""FrozenBackbone vs the same network run naively, on the CPU.

The naive baseline is what a hand-written extraction loop does: the model in its default NCHW
layout, ``torch.no_grad()``, a plain loop over batches. Both sides get the same PneumoniaMNIST
images, resized to 224 px by the same function, and the same batch size; the cache is off so
both compute every row. Prints a markdown table with images/s and the ratio (the issue's
target: at least 1.3x).

    .venv/bin/python benchmarks/cpu_speed.py [--n 256] [--batch-size 32] [--image-size 224]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from featcache import FrozenBackbone
from featcache.backbones import load_backbone
from featcache.engine.batches import to_model_input, to_unit_float
from featcache.inputs import decode

DATA = Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist_trainval.npz"


def naive(images, batch_size, size):
    """The hand-written loop: NCHW, no_grad, one batch after another."""
    from featcache.backbones import get_backbone
    from featcache.backbones.loading import build_network

    loaded = load_backbone(image_size=size)
    # the pretrained network as a hand-written script loads it (featcache's own copy is tuned)
    network = build_network(get_backbone("efficientnet_lite0"), "DEFAULT")[0].eval()
    mean, std = loaded.extractor.mean, loaded.extractor.std
    network.reset_classifier(0)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = to_unit_float(torch.stack([to_model_input(decode(img, i), size)
                                               for i, img in enumerate(images[start:start + batch_size])]))
            out.append(network((batch - mean) / std).numpy())
    return np.concatenate(out)


def ours(images, batch_size, size):
    backbone = FrozenBackbone(image_size=size, batch_size=batch_size, cache=False, progress=False)
    return backbone.fit_transform(images)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    images = np.load(DATA)["train_images"][: args.n]
    ours(images[: args.batch_size], args.batch_size, args.image_size)  # warm-up: load, first-call costs
    feats_ours, t_ours = timed(ours, images, args.batch_size, args.image_size)
    feats_naive, t_naive = timed(naive, images, args.batch_size, args.image_size)
    same = np.allclose(feats_ours, feats_naive, atol=1e-3, rtol=1e-3)
    print(f"efficientnet_lite0, {args.n} images at {args.image_size} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, same features: {same}\n")
    print("| pipeline | seconds | images/s |")
    print("|---|---:|---:|")
    print(f"| naive (NCHW, no_grad, batch loop) | {t_naive:.2f} | {args.n / t_naive:.1f} |")
    print(f"| FrozenBackbone (channels_last, inference_mode) | {t_ours:.2f} | {args.n / t_ours:.1f} |")
    print(f"\nspeed-up: {t_naive / t_ours:.2f}x (target >= 1.3x)")


if __name__ == "__main__":
    main()
