"""JPEG bytes -> images decoded on the run device (``decoder="device"``).

With ``decoder="device"`` (:class:`~featcache.inputs.DecodePolicy`), the decode workers hand
the batch loop the bytes of each JPEG file the device decodes
(:data:`~featcache.inputs.decoding.DEVICE_JPEG_RULE`) instead of an image.
:func:`decode_jpegs` decodes a batch of them in one call of ``torchvision.io.decode_jpeg``
(nvJPEG's batched decode on a GPU, libjpeg-turbo on a CPU) and tells which inputs the device
could not decode; the batch loop (:mod:`featcache.engine.batches`) decodes those with Pillow.
:func:`check_device_decoder` refuses a device without a JPEG decoder before anything runs.
"""

from __future__ import annotations

import functools
import io

import torch
from PIL import Image

from ..exceptions import DecoderUnavailableError

__all__ = ["check_device_decoder", "decode_jpegs"]


def _torchvision_decoder():
    """``(decode_jpeg, ImageReadMode.RGB)``, or None when torchvision has no ``decode_jpeg``."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # torchvision: heavy, optional
    except ImportError:
        return None
    return decode_jpeg, ImageReadMode.RGB


def _torchvision_version() -> str:
    try:
        import torchvision
    except ImportError:
        return "not installed"
    return torchvision.__version__


def check_device_decoder(device: torch.device) -> None:
    """Refuse ``decoder="device"`` where ``device`` cannot decode JPEGs.

    The CPU needs torchvision's ``decode_jpeg``; a CUDA device also a torchvision built with
    nvJPEG, checked once per device by decoding a small JPEG there.

    Raises
    ------
    DecoderUnavailableError
        Naming the device, what is missing and the fix (``decoder="pillow"``, or the
        torchvision to install).
    """
    if _torchvision_decoder() is None:
        raise DecoderUnavailableError(
            f"decoder='device' needs torchvision.io.decode_jpeg, which torchvision "
            f"({_torchvision_version()}) does not provide (batched device decoding came in "
            "0.19; torchvision deprecates its image decoders from 0.29 on). Install a "
            "torchvision that has it, or use decoder='pillow'.")
    if device.type not in ("cpu", "cuda"):
        raise DecoderUnavailableError(
            f"decoder='device' decodes JPEGs on a CPU or a CUDA GPU, not on {device}: use "
            "decoder='pillow' there.")
    if device.type == "cuda":
        _check_cuda_decoder(str(device))


@functools.lru_cache(maxsize=None)
def _check_cuda_decoder(device: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(buffer, "JPEG")
    try:
        decode_jpegs([torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)],
                     torch.device(device), isolate=False)
    except RuntimeError as exc:
        raise DecoderUnavailableError(
            f"decoder='device': torchvision {_torchvision_version()} cannot decode JPEGs on "
            f"{device} ({exc}). Install a torchvision built with nvJPEG (the CUDA wheels of "
            "PyPI or download.pytorch.org), or use decoder='pillow'.") from exc


def decode_jpegs(datas: list, device: torch.device, *, isolate: bool = True) -> list:
    """Decode JPEG bytes to ``(3, H, W)`` uint8 RGB tensors on ``device``, in one batch.

    Parameters
    ----------
    datas : list of Tensor
        Each a 1-D uint8 tensor of one file's bytes (on the CPU, pinned or not).
    device : torch.device
    isolate : bool, default True
        When the batched call fails (one input the device cannot decode fails the whole
        call), decode each input alone and give None for those that fail, instead of raising.

    Returns
    -------
    list
        One tensor per input, on ``device``, or None where the device could not decode it.
    """
    decode_jpeg, rgb = _torchvision_decoder()
    if not datas:
        return []
    try:
        return list(decode_jpeg(list(datas), mode=rgb, device=device))
    except RuntimeError:
        if not isolate:
            raise
    out = []
    for data in datas:
        try:
            out.append(decode_jpeg(data, mode=rgb, device=device))
        except RuntimeError:
            out.append(None)
    return out
