"""Decode less on the CPU: ``decode_scale="reduced"`` against ``"full"`` on the same large files.

Writes, in a temporary folder, N files of each kind (test images made from the data at hand,
see below), then, for each kind and in one run, measures with the default backbone
(EfficientNet-Lite0, 224 px, fp32, on the CPU, decoding in the main process):

- decode + resize only (``featcache.inputs.decode`` and the engine's resize-and-crop), images/s;
- extraction, images/s: decode, resize and the network (``run_batches``, batch 16, no cache);
- how far the rows are from the full decode: the smallest cosine similarity and the largest
  absolute difference between the two policies' rows, over the N files;
- the network alone, images/s: the same extraction (``run_batches``, batch 16) of the files'
  images already decoded and resized (224x224 arrays, so decoding costs nothing): the rate no
  decode policy can exceed on this machine, timed in the same passes.

Both policies run on the same files, alternately (full, reduced, full, reduced: ``--repeats``),
and the best time of each is kept, so that other jobs on the machine bias neither.

Kinds of files:

- ``jpeg``: 2048x1536 RGB JPEGs (quality 90): scikit-learn's two sample photographs (640x427)
  upsampled (bicubic), circularly shifted per file, plus Gaussian grain (sigma 3 levels), so
  that the full-size image has pixel-level detail as a camera's has;
- ``png16``: 2048x2048 16-bit greyscale PNGs: the bundled PneumoniaMNIST chest X-rays (28x28,
  CC BY 4.0, see data/README.md) upsampled to a 12-bit detector range, plus quantum-like noise
  (sigma 0.5% of the range);
- ``dicom-<syntax>``: the same X-ray arrays as 2048x2048 12-bit MONOCHROME2 DICOM, in each
  compressed transfer syntax pydicom can encode here (``dicom``: RLE Lossless, and JPEG-LS
  Lossless when pyjpegls is installed; ``j2k``: JPEG 2000 Lossless with pylibjpeg-openjpeg,
  about 1.7 s per image to decode, so not in the default kinds).

    .venv/bin/python benchmarks/cpu_decode.py [--n 16] [--repeats 2] [--threads T]
                                              [--kinds jpeg,png16,dicom,j2k]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featcache.backbones import load_backbone
from featcache.engine.batches import run_batches, to_model_input
from featcache.inputs import DecodePolicy, decode

SIZE = 224
ROOT = Path(__file__).resolve().parent.parent
POLICIES = {"full": DecodePolicy(decode_scale="full"), "reduced": DecodePolicy()}


def photos(n, rng):
    """n 2048x1536 RGB uint8 images: upsampled, shifted sample photographs with grain."""
    from sklearn.datasets import load_sample_images

    base = [np.asarray(Image.fromarray(im).resize((2048, 1536), Image.BICUBIC))
            for im in load_sample_images().images]
    out = []
    for i in range(n):
        im = np.roll(base[i % 2], shift=(97 * i, 151 * i), axis=(0, 1)).astype(np.float32)
        im += rng.normal(0, 3, im.shape).astype(np.float32)
        out.append(np.clip(np.rint(im), 0, 255).astype(np.uint8))
    return out


def xrays(n, rng):
    """n 2048x2048 uint16 X-rays in 0..4095: upsampled PneumoniaMNIST images with noise."""
    small = np.load(ROOT / "data" / "pneumoniamnist_trainval.npz")["val_images"][:n]
    out = []
    for im in small:
        big = np.asarray(Image.fromarray(im.astype(np.float32) * (4000 / 255), "F")
                         .resize((2048, 2048), Image.BICUBIC))
        big = big + rng.normal(0, 20, big.shape)
        out.append(np.clip(np.rint(big), 0, 4095).astype(np.uint16))
    return out


def write_dicom(path, pixels, syntax):
    """A 12-bit MONOCHROME2 DICOM of ``pixels`` compressed in ``syntax`` (None: skipped)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality, ds.PatientID = "DX", "0"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    try:
        ds.compress(syntax)
    except Exception as exc:  # no encoder for this syntax here
        return f"{type(exc).__name__}: {exc}"
    ds.save_as(path, enforce_file_format=True)
    return None


def make_files(folder, kinds, n, rng):
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    files = {}
    if "jpeg" in kinds:
        (folder / "jpeg").mkdir()
        for i, im in enumerate(photos(n, rng)):
            Image.fromarray(im).save(folder / "jpeg" / f"{i:03d}.jpg", quality=90)
        files["jpeg 2048x1536"] = sorted((folder / "jpeg").glob("*.jpg"))
    arrays = xrays(n, rng) if {"png16", "dicom", "j2k"} & set(kinds) else []
    if "png16" in kinds:
        (folder / "png16").mkdir()
        for i, im in enumerate(arrays):
            Image.fromarray(im).save(folder / "png16" / f"{i:03d}.png")
        files["png 16-bit 2048x2048"] = sorted((folder / "png16").glob("*.png"))
    syntaxes = ([RLELossless, JPEGLSLossless] if "dicom" in kinds else []) + (
        [JPEG2000Lossless] if "j2k" in kinds else [])
    if syntaxes:
        for syntax in syntaxes:
            sub = folder / f"dicom-{syntax.keyword}"
            sub.mkdir()
            for i, im in enumerate(arrays):
                why = write_dicom(sub / f"{i:03d}.dcm", im, syntax)
                if why:
                    print(f"(skipped {syntax.name}: {why})")
                    break
            else:
                files[f"dicom {syntax.name} 2048x2048"] = sorted(sub.glob("*.dcm"))
    return files


def decode_rate(paths, policy):
    start = time.perf_counter()
    for i, path in enumerate(paths):
        to_model_input(decode(path, i, policy, image_size=SIZE), SIZE)
    return len(paths) / (time.perf_counter() - start)


def extract(extractor, paths, policy):
    """(images/s, rows) of run_batches over ``paths``."""
    start = time.perf_counter()
    rows = [b.features for b in run_batches(extractor, paths, range(len(paths)), image_size=SIZE,
                                             policy=policy, batch_size=16, device="cpu",
                                             precision="fp32", num_workers=0, progress=False)]
    seconds = time.perf_counter() - start
    return len(paths) / seconds, np.concatenate([next(iter(r.values())) for r in rows])


def decoded(paths, policy):
    """The images of ``paths`` decoded and resized to SIZE, as (SIZE, SIZE, C) arrays."""
    return [to_model_input(decode(path, i, policy, image_size=SIZE), SIZE).permute(1, 2, 0)
            .numpy() for i, path in enumerate(paths)]


def agreement(a, b):
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()), float(np.abs(a - b).max()), float(np.abs(a).max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="files of each kind (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per policy")
    parser.add_argument("--kinds", default="jpeg,png16,dicom",
                        help="among jpeg, png16, dicom (RLE, JPEG-LS), j2k (JPEG 2000: slow)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = args.kinds.split(",")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        extractor = load_backbone("efficientnet_lite0", image_size=SIZE).extractor
    print(f"torch threads: {torch.get_num_threads()}; EfficientNet-Lite0 at {SIZE} px, fp32, "
          f"batch 16, decoding in the main process; {args.n} files per kind, best of "
          f"{args.repeats}\n")
    print("| files | decode+resize full | reduced | ratio | extraction full | reduced | ratio "
          "| network alone | network alone / extraction full | min cosine "
          "| max abs diff (max abs row) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), kinds, args.n, np.random.default_rng(0))
        for kind, paths in files.items():
            decode_rate(paths[:2], POLICIES["full"])  # warm the decoders
            best = {name: [0.0, 0.0, None] for name in POLICIES}
            arrays, alone = decoded(paths, POLICIES["full"]), 0.0
            for _ in range(args.repeats):
                for name, policy in POLICIES.items():
                    d = decode_rate(paths, policy)
                    e, features = extract(extractor, paths, policy)
                    best[name][0], best[name][1] = max(best[name][0], d), max(best[name][1], e)
                    best[name][2] = features
                alone = max(alone, extract(extractor, arrays, POLICIES["full"])[0])
            cos, diff, scale = agreement(best["full"][2], best["reduced"][2])
            (df, ef, _), (dr, er, _) = best["full"], best["reduced"]
            print(f"| {kind} | {df:.1f}/s | {dr:.1f}/s | {dr / df:.2f}x | {ef:.1f}/s | {er:.1f}/s "
                  f"| {er / ef:.2f}x | {alone:.1f}/s | {alone / ef:.2f}x | {cos:.5f} "
                  f"| {diff:.4f} ({scale:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
