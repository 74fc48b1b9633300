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
