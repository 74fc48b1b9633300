"""How far ``decoder="device"`` rows are from Pillow's, on real photos and X-rays.

Writes, in a temporary folder, N JPEG files of each kind, then computes the rows of the
default backbone (EfficientNet-Lite0, 224 px, fp32, the network on ``--device`` for every
policy, so that only the decoding differs) under three decode policies:

- ``decoder="device"``: each JPEG decoded by ``torchvision.io.decode_jpeg`` on ``--device``
  (libjpeg-turbo on a CPU, nvJPEG on a GPU) at full size, resized there;
- ``decoder="pillow"`` with ``decode_scale="full"``: Pillow (libjpeg-turbo) at full size;
- ``decoder="pillow"``, the default: Pillow, large JPEGs at a reduced DCT scale.

and prints, per kind, the smallest cosine similarity and the largest absolute difference
between the device rows and each Pillow policy's rows, over the N files.

Kinds of files (as in ``benchmarks/cpu_decode.py``):

- ``photo 640x427``: scikit-learn's two sample photographs (ImageNet size), circularly
  shifted per file, quality 90;
- ``photo 2048x1536``: the same upsampled (bicubic) with Gaussian grain, quality 90;
- ``x-ray 512x512`` and ``x-ray 2048x2048``: the bundled PneumoniaMNIST chest X-rays (28x28,
  CC BY 4.0) upsampled (bicubic) with noise, 8-bit greyscale JPEG, quality 95.

    .venv/bin/python benchmarks/decoder_rows.py [--n 8] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featcache.backbones import load_backbone
from featcache.engine.batches import run_batches
from featcache.inputs import DecodePolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_decode import photos, xrays  # noqa: E402  (the same images as cpu_decode.py)

SIZE = 224
POLICIES = {"device": DecodePolicy(decoder="device"),
            "pillow, full": DecodePolicy(decode_scale="full"),
            "pillow (default, reduced)": DecodePolicy()}


def small_photos(n):
    from sklearn.datasets import load_sample_images

    base = load_sample_images().images
    return [np.roll(base[i % 2], shift=(37 * i, 53 * i), axis=(0, 1)) for i in range(n)]


def make_files(folder: Path, n: int, rng) -> dict:
    kinds = {"photo 640x427": (small_photos(n), 90),
             "photo 2048x1536": (photos(n, rng), 90)}
    for side in (512, 2048):
        eight_bit = [np.clip(np.rint(x / 4095 * 255), 0, 255).astype(np.uint8)
                     for x in xrays(n, rng)]
        kinds[f"x-ray {side}x{side}"] = ([np.asarray(Image.fromarray(x).resize(
            (side, side), Image.BICUBIC)) for x in eight_bit], 95)
    files = {}
    for kind, (images, quality) in kinds.items():
        sub = folder / kind.replace(" ", "_")
        sub.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(sub / f"{i:03d}.jpg", quality=quality)
        files[kind] = sorted(sub.glob("*.jpg"))
    return files


def rows(extractor, paths, policy, device) -> np.ndarray:
    out = {}
    for batch in run_batches(extractor, paths, range(len(paths)), image_size=SIZE,
                             policy=policy, batch_size=16, device=device, precision="fp32",
                             num_workers=0, progress=False):
        out.update(zip(batch.positions.tolist(), batch.features["default"]))
    return np.stack([out[i] for i in range(len(paths))])


def compare(a: np.ndarray, b: np.ndarray) -> tuple:
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cosine.min()), float(np.abs(a - b).max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's image I/O
        extractor = load_backbone(image_size=SIZE).extractor
        with tempfile.TemporaryDirectory() as tmp:
            files = make_files(Path(tmp), args.n, np.random.default_rng(0))
            table = []
            for kind, paths in files.items():
                got = {name: rows(extractor, paths, policy, device)
                       for name, policy in POLICIES.items()}
                for name in list(POLICIES)[1:]:
                    table.append((kind, name, *compare(got["device"], got[name])))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"decoder='device' on {device} ({where}) against Pillow: EfficientNet-Lite0 rows "
          f"(1280-d, fp32, {SIZE} px), {args.n} files per kind\n")
    print('| files | decoder="device" against | min cosine | max abs |')
    print("|---|---|---:|---:|")
    for kind, name, cosine, diff in table:
        print(f"| {kind} | {name} | {cosine:.6f} | {diff:.4f} |")


if __name__ == "__main__":
    main()
