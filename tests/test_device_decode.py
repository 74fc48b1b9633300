"""Tests for featcache.engine.device_decode: batched JPEG decoding on the run device, and the
clear error of a device without a decoder (tested on the CPU; the CUDA run is marked gpu)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from featcache.engine import device_decode
from featcache.engine.device_decode import check_device_decoder, decode_jpegs
from featcache.exceptions import DecoderUnavailableError


def _jpeg(seed, size=(48, 40), **save) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "JPEG", **save)
    return buffer.getvalue()


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_batch_decodes_to_pillows_pixels_on_a_cpu_and_a_bad_input_gives_none():
    good = [_jpeg(0), _jpeg(1, (30, 50), progressive=True), _jpeg(2, subsampling=0)]
    truncated = good[0][: len(good[0]) // 2]
    out = decode_jpegs([_tensor(d) for d in [good[0], truncated, good[1], good[2]]],
                       torch.device("cpu"))
    assert out[1] is None  # the whole batch did not fail: only this input
    for data, image in zip(good, [out[0], out[2], out[3]]):
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        # libjpeg-turbo through torchvision and through Pillow: the same pixels
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), _pillow(data))
    assert decode_jpegs([], torch.device("cpu")) == []
    with pytest.raises(RuntimeError):
        decode_jpegs([_tensor(truncated)], torch.device("cpu"), isolate=False)


def test_a_torchvision_without_decode_jpeg_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(device_decode, "_torchvision_decoder", lambda: None)
    with pytest.raises(DecoderUnavailableError,
                       match=r"needs torchvision.io.decode_jpeg.*decoder='pillow'"):
        check_device_decoder(torch.device("cpu"))


def test_a_device_without_a_jpeg_decoder_is_a_clear_error(monkeypatch):
    check_device_decoder(torch.device("cpu"))  # torchvision decodes on the CPU
    with pytest.raises(DecoderUnavailableError, match=r"not on mps.*decoder='pillow'"):
        check_device_decoder(torch.device("mps"))

    def no_nvjpeg(datas, device, isolate=True):
        raise RuntimeError("Not compiled with GPU support")

    monkeypatch.setattr(device_decode, "decode_jpegs", no_nvjpeg)
    device_decode._check_cuda_decoder.cache_clear()
    try:
        with pytest.raises(DecoderUnavailableError,
                           match=r"cannot decode JPEGs on cuda:3 \(Not compiled with GPU "
                                 r"support\).*built with nvJPEG.*decoder='pillow'"):
            check_device_decoder(torch.device("cuda:3"))
    finally:
        device_decode._check_cuda_decoder.cache_clear()


@pytest.mark.gpu
def test_a_batch_decodes_on_the_gpu_close_to_pillow():
    device = torch.device("cuda")
    check_device_decoder(device)
    good = [_jpeg(0, (640, 427), quality=90), _jpeg(1, (427, 640), progressive=True)]
    out = decode_jpegs([_tensor(d) for d in [good[0], b"\xff\xd8\xff" + good[1][3:40],
                                             good[1]]], device)
    assert out[1] is None and out[0].device.type == "cuda"
    for data, image in zip(good, [out[0], out[2]]):
        diff = np.abs(image.permute(1, 2, 0).cpu().numpy().astype(int) - _pillow(data))
        assert diff.mean() < 1.0, diff.mean()  # nvJPEG's IDCT and upsampling are not libjpeg's
