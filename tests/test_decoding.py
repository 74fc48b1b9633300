"""Tests for featcache.inputs.decoding: the decode scale (``DecodePolicy.decode_scale``).

Large images are made at test time from small smooth ones (nothing big is committed).
"""

import io
import json

import numpy as np
import pytest
from PIL import Image

from featcache.exceptions import InputError
from featcache.inputs import DecodePolicy, decode, decoding
from featcache.inputs.pixels import box_reduce

FULL, REDUCED = DecodePolicy(decode_scale="full"), DecodePolicy()


def _smooth(h, w, seed=0):
    """An (h, w) float image in [0, 1] with structure at every scale down to ~h/40 pixels."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.random((40, 40), dtype=np.float32), "F")
    base = np.asarray(small.resize((w, h), Image.BICUBIC))
    base = base + 0.02 * rng.standard_normal((h, w))  # pixel-level grain
    return np.clip((base - base.min()) / (base.max() - base.min()), 0, 1)


def _photo(h, w, seed=0):
    return np.stack([_smooth(h, w, seed + c) for c in range(3)], axis=2)


def _file(tmp_path, name, arr, **save):
    path = tmp_path / name
    Image.fromarray(arr).save(path, **save)
    return path


def _resized(image, size=224):
    """The engine's resize-and-crop of a decoded image, as float in [0, 1]."""
    from featcache.engine.batches import to_model_input, to_unit_float

    return to_unit_float(to_model_input(image, size)).numpy()


def _close(a, b):
    """(cosine, max abs difference) of two network inputs."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b), np.abs(a - b).max()


def test_the_decode_scale_is_in_the_fingerprint():
    full, reduced = FULL.to_dict(), REDUCED.to_dict()
    assert REDUCED.decode_scale == "reduced"  # the default
    assert reduced["decode_scale"] == decoding.REDUCTION_RULE and json.loads(json.dumps(reduced))
    assert "decode_scale" not in full  # full decoding keeps the namespace it always had
    assert {k: v for k, v in reduced.items() if k != "decode_scale"} == full
    with pytest.raises(ValueError, match="decode_scale"):
        DecodePolicy(decode_scale="fast")


def test_a_different_namespace_for_each_decode_scale():
    from featcache.backbones.fingerprint import fingerprint

    config = {"model": "m", "decode": REDUCED.to_dict()}
    assert fingerprint(config) != fingerprint({**config, "decode": FULL.to_dict()})


def test_a_large_jpeg_is_decoded_at_a_reduced_dct_scale_within_tolerance(tmp_path, monkeypatch):
    photo = (_photo(1536, 2048) * 255).astype(np.uint8)
    path = _file(tmp_path, "photo.jpg", photo, quality=90)
    from PIL import JpegImagePlugin

    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def draft(img, mode, size):
        drafts.append(size)
        return real_draft(img, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    full = decode(path, 0, FULL, image_size=224)
    assert full.shape == (1536, 2048, 3) and not drafts
    reduced = decode(path, 0, REDUCED, image_size=224)
    assert drafts and reduced.dtype == np.uint8
    assert reduced.shape == (768, 1024, 3)  # DCT scale 1/2: 1/4 would leave 384 < 2 x 224
    cosine, diff = _close(_resized(full), _resized(reduced))
    assert _resized(reduced).shape == (3, 224, 224)
    assert cosine > 0.999 and diff < 0.1, (cosine, diff)
    assert decode(path, 0, REDUCED).shape == (1536, 2048, 3)  # no image_size: nothing reduced


def test_a_large_16_bit_png_is_box_reduced_within_tolerance(tmp_path):
    xray = (_smooth(2048, 2048) * 4000 + 50).astype(np.uint16)
    xray[5, 5] = 65535  # one hot pixel: the range stays the full image's
    path = _file(tmp_path, "xray.png", xray)
    assert Image.open(path).mode == "I;16"
    full = decode(path, 0, FULL, image_size=224)
    reduced = decode(path, 0, REDUCED, image_size=224)
    assert full.shape == (2048, 2048, 3) and reduced.shape == (512, 512, 3)
    assert reduced.dtype == np.float32
    np.testing.assert_allclose(reduced.mean(), full.mean(), atol=1e-4)  # contrast kept
    cosine, diff = _close(_resized(full), _resized(reduced))
    assert cosine > 0.9999 and diff < 0.02, (cosine, diff)
    window = DecodePolicy(window=(2000, 3000))
    cosine, _ = _close(_resized(decode(path, 0, DecodePolicy(window=(2000, 3000),
                                                             decode_scale="full"), image_size=224)),
                       _resized(decode(path, 0, window, image_size=224)))
    assert cosine > 0.9999


@pytest.mark.parametrize("size", [224, 100, 8])
def test_never_reduced_below_twice_the_input_size(size):
    for h, w in [(2048, 1536), (449, 10_000), (447, 447), (2 * 2 * size, 3 * size), (900, 901)]:
        arr = np.zeros((h, w), np.uint8)
        out = decode(arr, 0, REDUCED, image_size=size)
        assert min(out.shape[:2]) >= min(h, w, decoding.REDUCE_KEEP * size)
        assert REDUCED.reduction(h, w, size) == max(1, min(h, w) // (2 * size))
        assert FULL.reduction(h, w, size) == 1 and REDUCED.reduction(h, w, None) == 1


def test_rgb_png_alpha_and_arrays_are_reduced(tmp_path):
    photo = (_photo(1000, 1200) * 255).astype(np.uint8)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    for item in [_file(tmp_path, "p.png", photo), _file(tmp_path, "a.png", rgba), photo, rgba,
                 photo[..., 0].astype(np.float32) / 255, Image.fromarray(photo)]:
        full, reduced = decode(item, 0, FULL, image_size=100), decode(item, 0, REDUCED,
                                                                      image_size=100)
        assert full.shape[:2] == (1000, 1200) and reduced.shape[:2] == (200, 240)
        assert reduced.dtype == full.dtype
        cosine, diff = _close(_resized(full, 100), _resized(reduced, 100))
        assert cosine > 0.9999 and diff < 0.05, (type(item), cosine, diff)


def test_box_reduce():
    a = np.arange(16, dtype=np.uint16).reshape(4, 4)
    np.testing.assert_array_equal(box_reduce(a, 2), [[3, 5], [11, 13]])  # means, rounded
    assert box_reduce(a, 1) is a
    f = np.arange(25, dtype=np.float64).reshape(5, 5)
    out = box_reduce(f, 2)  # the last block averages what remains
    assert out.dtype == np.float32 and out.shape == (3, 3) and out[2, 2] == 24
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[..., 1] = 90
    assert box_reduce(rgb, 3).shape == (2, 2, 3) and (box_reduce(rgb, 3)[..., 1] == 90).all()


def test_a_strip_and_a_lying_header_still_give_named_errors(tmp_path):
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((1, 100_000), np.uint8)).save(strip)
    with pytest.raises(InputError, match=r"input 0 .*strip\.png.*over the limit"):
        decode(strip, 0, REDUCED, image_size=224)
    # A JPEG whose header says 3000x3000 but whose data ends after a few bytes: the reduced
    # decode (a DCT draft) fails as the full one does, naming the input.
    buf = io.BytesIO()
    Image.fromarray((_photo(3000, 3000)[:, :, :] * 255).astype(np.uint8)).save(buf, "JPEG")
    lying = tmp_path / "lying.jpg"
    lying.write_bytes(buf.getvalue()[:2000])
    for policy in (REDUCED, FULL):
        with pytest.raises(InputError, match=r"input 3 .*lying\.jpg"):
            decode(lying, 3, policy, image_size=224)


# ---------------------------------------------------------------- decoder="device"
DEVICE = DecodePolicy(decoder="device")


def test_the_device_decoder_enters_the_fingerprint_only_when_chosen():
    assert DecodePolicy().decoder == "pillow"  # the default: every cache keeps its namespace
    assert "decoder" not in REDUCED.to_dict() and "decoder" not in FULL.to_dict()
    device = DEVICE.to_dict()
    assert device["decoder"] == decoding.DEVICE_JPEG_RULE and json.loads(json.dumps(device))
    assert {k: v for k, v in device.items() if k != "decoder"} == REDUCED.to_dict()
    assert "decode_scale" not in DecodePolicy(decoder="device", decode_scale="full").to_dict()
    with pytest.raises(ValueError, match="decoder must be one of"):
        DecodePolicy(decoder="nvjpeg")


def _jpeg_bytes(arr, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def test_which_jpeg_frames_the_device_decodes():
    photo = (_photo(40, 56) * 255).astype(np.uint8)
    for save in ({}, {"progressive": True}, {"subsampling": 0}, {"quality": 30}):
        assert decoding.device_jpeg_frame(_jpeg_bytes(photo, **save)), save
    assert decoding.device_jpeg_frame(_jpeg_bytes(photo[..., 0]))  # grayscale
    cmyk = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(cmyk, "JPEG")
    assert not decoding.device_jpeg_frame(cmyk.getvalue())  # 4 components
    png = io.BytesIO()
    Image.fromarray(photo).save(png, "PNG")
    assert not decoding.device_jpeg_frame(png.getvalue())
    data = _jpeg_bytes(photo)
    sof = data.index(b"\xff\xc0")
    assert not decoding.device_jpeg_frame(data[:sof])  # no frame header before the end
    for marker in (b"\xff\xc3", b"\xff\xc9"):  # lossless; arithmetic coding: left to Pillow
        assert not decoding.device_jpeg_frame(data[:sof] + marker + data[sof + 2:])
    twelve_bit = bytearray(data)
    twelve_bit[sof + 4] = 12
    assert not decoding.device_jpeg_frame(bytes(twelve_bit))
    # Not ending with the end-of-image marker: truncated (Pillow refuses it), or data after
    # the image (Pillow decodes it). A GPU decoder is not trusted to refuse a truncated file.
    assert data.endswith(b"\xff\xd9")
    for cut in (data[:-1], data[:-2], data[:len(data) // 2], data + b"\x00", data + b"trailer"):
        assert not decoding.device_jpeg_frame(cut)


def test_jpeg_bytes_hands_over_only_the_jpegs_the_device_decodes(tmp_path):
    from featcache.exceptions import InputChangedError
    from featcache.inputs.keys import bytes_key

    photo = (_photo(60, 80) * 255).astype(np.uint8)
    jpeg = _file(tmp_path, "a.jpg", photo, quality=90)
    data = jpeg.read_bytes()
    assert decode(jpeg, 0, DEVICE, jpeg_bytes=True, key=bytes_key(data)) == data
    assert isinstance(decode(jpeg, 0, DEVICE), np.ndarray)  # without jpeg_bytes: Pillow
    assert isinstance(decode(jpeg, 0, REDUCED, jpeg_bytes=True), np.ndarray)  # decoder="pillow"
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the device decoder would not apply it
    Image.fromarray(photo).save(rotated, exif=exif)
    assert decode(rotated, 0, DEVICE, jpeg_bytes=True).shape == (80, 60, 3)
    for other in (_file(tmp_path, "p.png", photo), photo):
        assert isinstance(decode(other, 0, DEVICE, jpeg_bytes=True), np.ndarray)
    with pytest.raises(InputChangedError, match="changed while featcache was reading it"):
        decode(jpeg, 0, DEVICE, jpeg_bytes=True, key=b"\x00" * 16)
    strip = _file(tmp_path, "strip.jpg", np.zeros((8, 30_000), np.uint8))
    with pytest.raises(InputError, match=r"strip\.jpg.*over the limit"):
        decode(strip, 0, DEVICE, jpeg_bytes=True, image_size=2000)


def test_jpegs_not_ending_with_the_end_marker_are_decoded_by_pillow_or_refused(tmp_path):
    # decoder="device" leaves them to Pillow (DEVICE_JPEG_RULE): data after the image, or a
    # complete scan without its end marker, still gives the image (Pillow's pixels); a
    # truncated scan is refused, as decoder="pillow" refuses it.
    photo = (_photo(60, 80) * 255).astype(np.uint8)
    data = _file(tmp_path, "a.jpg", photo, quality=90).read_bytes()
    expected = decode(tmp_path / "a.jpg", 0, DEVICE)
    for name, variant in (("trailer.jpg", data + b"\x00" * 64 + b"trailer"),
                          ("no_eoi.jpg", data[:-2])):
        (tmp_path / name).write_bytes(variant)
        got = decode(tmp_path / name, 0, DEVICE, jpeg_bytes=True)
        assert isinstance(got, np.ndarray) and np.array_equal(got, expected), name
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.jpg.*truncated"):
        decode(tmp_path / "cut.jpg", 0, DEVICE, jpeg_bytes=True)
