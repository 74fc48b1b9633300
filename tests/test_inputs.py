"""Tests for featcache.inputs: accepted X forms, content keys and the decoding policy."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from featcache import inputs
from featcache.inputs import decoding
from featcache.exceptions import FeatcacheError, InputChangedError, InputError
from featcache.inputs import DecodePolicy, as_items, content_key, decode, describe


@pytest.fixture(autouse=True)
def _fresh_memo():
    inputs.FILE_KEY_MEMO.clear()
    yield
    inputs.FILE_KEY_MEMO.clear()


def _png(path, arr_or_img, **save):
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **save)
    return path


def _rgb(h=4, w=6):
    return (np.arange(h * w * 3).reshape(h, w, 3) * 7 % 256).astype(np.uint8)


def _bad(item, index, match, policy=DecodePolicy(), image_size=None):
    """decode() must raise InputError matching ``match`` and naming the index (and path)."""
    with pytest.raises(InputError, match=match) as info:
        decode(item, index, policy, image_size=image_size)
    msg = str(info.value)
    assert f"input {index}" in msg
    if isinstance(item, (str, os.PathLike)):
        assert str(item) in msg
    return msg


# ---------------------------------------------------------------- accepted X
def test_paths_in_every_container(tmp_path):
    paths = [str(_png(tmp_path / f"{i}.png", _rgb())) for i in range(3)]
    pd = pytest.importorskip("pandas")
    forms = [paths, tuple(map(type(tmp_path), paths)), np.array(paths, dtype=object),
             np.array(paths, dtype=object).reshape(-1, 1), np.array(paths),
             pd.Series(paths), pd.DataFrame({"path": paths}), (p for p in paths),
             pd.Series(paths, dtype="string")]
    for X in forms:
        items = as_items(X)
        assert [str(p) for p in items] == paths
        assert all(isinstance(p, type(tmp_path)) for p in items)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "float16", "float32",
                                   "float64"])
@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 5, 7, 1), (2, 5, 7, 3), (2, 5, 7, 4)])
def test_stacked_arrays(dtype, shape):
    X = np.random.default_rng(0).integers(0, 100, shape).astype(dtype)
    if np.dtype(dtype).kind == "f":
        X /= 100
    items = as_items(X)
    assert len(items) == 2 and items[1].shape == shape[1:]
    out = decode(items[1], 1)
    assert out.shape == (5, 7, 3)
    assert out.dtype == (np.uint8 if dtype == "uint8" else np.float32)
    if out.dtype == np.float32:
        assert 0 <= out.min() and out.max() <= 1


def test_list_of_pil_images_any_size_and_mode():
    imgs = [Image.new("RGB", (5, 3), (1, 2, 3)), Image.new("L", (2, 9), 7),
            Image.new("RGBA", (4, 4)), Image.new("P", (3, 3))]
    items = as_items(imgs)
    assert items == imgs
    outs = [decode(it, i) for i, it in enumerate(items)]
    assert [o.shape for o in outs] == [(3, 5, 3), (9, 2, 3), (4, 4, 3), (3, 3, 3)]
    assert (outs[0] == [1, 2, 3]).all() and (outs[1] == 7).all()


def test_list_of_arrays():
    arrs = [np.full((3, 4), i, np.uint8) for i in range(3)]
    items = as_items(arrs)
    assert len(items) == 3 and (decode(items[2], 2) == 2).all()


def test_torch_tensor_nchw():
    torch = pytest.importorskip("torch")
    t = torch.rand(2, 3, 5, 6, requires_grad=True)
    items = as_items(t)
    assert len(items) == 2 and items[0].shape == (5, 6, 3)
    np.testing.assert_array_equal(items[1], t.detach().numpy()[1].transpose(1, 2, 0))
    assert content_key(items[1], 1) == content_key(t.detach().numpy().transpose(0, 2, 3, 1)[1], 1)
    assert as_items(torch.zeros(1, 1, 4, 4, dtype=torch.bfloat16))[0].dtype == np.float32
    with pytest.raises(InputError, match=r"\(n, C, H, W\).*unsqueeze"):
        as_items(torch.zeros(2, 5, 5))



# ---------------------------------------------------------------- torch and Hugging Face
def _torch_dataset(samples):
    torch = pytest.importorskip("torch")

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            return samples[i]

    return Samples()


def test_map_style_torch_dataset_of_images_or_image_label_pairs(tmp_path):
    torch = pytest.importorskip("torch")
    pils = [Image.fromarray(_rgb(4 + i, 6)) for i in range(3)]
    for samples in (pils, [(img, i % 2) for i, img in enumerate(pils)],
                    [[img, i, "extra"] for i, img in enumerate(pils)]):
        items = as_items(_torch_dataset(samples))
        assert [content_key(a, 0) for a in items] == [content_key(b, 0) for b in pils]
    tensors = [(torch.rand(3, 5, 7), 0), (torch.rand(3, 5, 7), 1)]  # e.g. after ToTensor()
    items = as_items(_torch_dataset(tensors))
    assert items[1].shape == (5, 7, 3) and items[1].dtype == np.float32
    np.testing.assert_array_equal(items[1], tensors[1][0].numpy().transpose(1, 2, 0))
    gray = as_items(_torch_dataset([torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)]))
    assert gray[0].shape == (4, 4, 1)
    paths = [str(_png(tmp_path / f"{i}.png", _rgb())) for i in range(2)]
    assert [str(p) for p in as_items(_torch_dataset([(p, 0) for p in paths]))] == paths


def test_torch_dataset_errors_name_the_sample_and_the_conversion():
    torch = pytest.importorskip("torch")

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ()

    with pytest.raises(InputError, match=r"IterableDataset.*X = \[sample\[0\] for sample in"):
        as_items(Stream())

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            if i == 1:
                raise OSError("disk gone")
            return np.zeros((2, 2), np.uint8)

    with pytest.raises(InputError, match=r"input 1 \(Broken\).*Broken\[1\].*disk gone"):
        as_items(Broken())
    with pytest.raises(InputError, match=r"input 0 .*tensor of shape \(5, 4, 4\)"):
        as_items(_torch_dataset([torch.zeros(5, 4, 4)]))


def test_rows_as_dicts_the_datasets_row_format(tmp_path):
    pils = [Image.fromarray(_rgb()) for _ in range(2)]
    rows = [{"image": img, "label": i} for i, img in enumerate(pils)]
    assert as_items(rows) == pils
    assert as_items([{"img": img, "label": 0} for img in pils]) == pils  # CIFAR's name
    other = [{"scan": img, "image": "ignored"} for img in pils]
    assert as_items(other, image_field="scan") == pils
    paths = [str(_png(tmp_path / f"{i}.png", _rgb())) for i in range(2)]
    assert [str(p) for p in as_items([{"path": p, "label": 1} for p in paths])] == paths
    assert as_items(_torch_dataset(rows)) == pils  # a Dataset returning dicts
    with pytest.raises(InputError, match=r"input 0 \(dict\).*keys \['label', 'x'\].*row\["):
        as_items([{"x": 1, "label": 0}])
    with pytest.raises(InputError, match=r"input 1 \(dict\).*no field 'image'.*row\['image'\]"):
        as_items([rows[0], {"label": 1}])
    with pytest.raises(InputError, match=r"input 1 \('a.png'\): is a str, not a dict"):
        as_items([rows[0], "a.png"])
    with pytest.raises(InputError, match=r"not accepted.*X\['image'\]"):
        as_items({"image": pils, "label": [0, 1]})  # a dict of columns
    with pytest.raises(InputError, match=r"input 0 \(tuple\).*for image, \*_ in pairs"):
        as_items([(pils[0], 0)])  # (image, label) pairs outside a Dataset


def test_inputs_that_are_not_torch_never_import_torch(tmp_path):
    import subprocess
    import sys

    path = _png(tmp_path / "a.png", _rgb())
    code = ("import sys, numpy as np\n"
            "from featcache.inputs import as_items\n"
            f"as_items([{{'image': {str(path)!r}}}]); as_items([np.zeros((2, 2))])\n"
            f"as_items([{str(path)!r}]); as_items(np.zeros((1, 2, 2)))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- rejected X
@pytest.mark.parametrize("X, match", [
    ("a.png", r"single path.*Wrap it in a list"),
    (b"a.png", r"single path.*Wrap it in a list"),
    (np.zeros((5, 10)), r"2-D numeric array.*feature matrix.*\(n, H, W\)"),
    (np.zeros((2, 4, 4), bool), r"dtype bool.*accepted dtypes"),
    (np.zeros((2, 4, 4), complex), r"dtype complex128.*accepted dtypes"),
    (np.array([["a", "b"], ["c", "d"]]), r"dtype <U1.*accepted dtypes"),
    (np.empty((2, 2), object), r"dtype object.*accepted dtypes"),
    ([], r"empty"), (np.zeros((0, 4, 4)), r"empty"),
    (np.zeros((2, 3, 8, 8)), r"channels-first.*transpose\(0, 2, 3, 1\)"),
    (np.zeros((2, 4, 4, 2)), r"\(n, H, W, C\) with C in 1, 3, 4"),
    (np.zeros(5), r"shape \(5,\)"), ({"a": 1}, r"not accepted"), (3, r"not accepted"),
])
def test_rejected_X(X, match):
    with pytest.raises(InputError, match=match):
        as_items(X)


def test_rejected_single_objects(tmp_path):
    with pytest.raises(InputError, match="single path.*Wrap"):
        as_items(tmp_path / "x.png")
    with pytest.raises(InputError, match="single PIL image.*wrap"):
        as_items(Image.new("RGB", (2, 2)))


def test_rejected_elements(tmp_path):
    p = str(tmp_path / "a.png")
    with pytest.raises(InputError, match=r"input 1 \(array .*is an array but input 0 is a path"):
        as_items([p, np.zeros((2, 2), np.uint8)])
    with pytest.raises(InputError, match=r"input 2 .*a PIL image but input 0 is an array"):
        as_items([np.zeros((2, 2))] * 2 + [Image.new("L", (2, 2))])
    with pytest.raises(InputError, match=r"input 2 .*shape \(3, 3\).*input 0 has shape \(2, 2\)"):
        as_items([np.zeros((2, 2))] * 2 + [np.zeros((3, 3))])
    with pytest.raises(InputError, match=r"input 1 .*dtype float32.*dtype float64"):
        as_items([np.zeros((2, 2)), np.zeros((2, 2), np.float32)])
    with pytest.raises(InputError, match=r"input 0 .*dtype bool"):
        as_items([np.zeros((2, 2), bool)])
    with pytest.raises(InputError, match=r"input 0 .*not an image"):
        as_items([np.zeros((2, 2, 2))])
    with pytest.raises(InputError, match=r"input 1 \(float\): is a missing value"):
        as_items([p, float("nan")])
    with pytest.raises(InputError, match=r"input 1 \(int\).*not an accepted input"):
        as_items([p, 3])
    with pytest.raises(InputError, match=r"input 1 is an empty string"):
        as_items([p, ""])


def test_rejected_dataframe_with_two_columns():
    pd = pytest.importorskip("pandas")
    with pytest.raises(InputError, match=r"2 columns.*X\[\['path'\]\]"):
        as_items(pd.DataFrame({"path": ["a"], "label": [1]}))


def test_input_error_is_value_error():
    assert issubclass(InputError, ValueError) and issubclass(InputError, FeatcacheError)


# ---------------------------------------------------------------- bad files
def test_missing_file(tmp_path):
    p = tmp_path / "nope.png"
    _bad(p, 4, "file not found")
    with pytest.raises(InputError, match=r"input 4 .*nope\.png.*file not found"):
        content_key(p, 4)


def test_directory(tmp_path):
    _bad(tmp_path, 0, "not a regular file")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    _bad(p, 2, r"empty file \(0 bytes\)")


def test_truncated_png(tmp_path):
    p = _png(tmp_path / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _bad(p, 1, "truncated or corrupt")


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    _bad(p, 0, "not an image Pillow can read")


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.jpg"
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    _bad(p, 7, "not an image Pillow can read")


def test_decompression_bomb(tmp_path, monkeypatch):
    p = _png(tmp_path / "big.png", _rgb(10, 10))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 100 > 2 * 40: DecompressionBombError
    msg = _bad(p, 3, r"100 pixels.*decompression-bomb.*MAX_IMAGE_PIXELS")
    assert "raise the limit" in msg
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # 60 < 100 < 120: the warning, as error
    _bad(p, 3, r"100 pixels.*decompression-bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    assert decode(p, 3).shape == (10, 10, 3)


# ---------------------------------------------------------------- content keys
def test_key_of_file_bytes_not_name(tmp_path):
    a = _png(tmp_path / "a.png", _rgb())
    b = tmp_path / "sub" / "b.png"
    b.parent.mkdir()
    shutil.copy(a, b)
    key = content_key(a, 0)
    assert isinstance(key, bytes) and len(key) == 16
    assert content_key(b, 1) == key
    import hashlib
    assert key == hashlib.blake2b(a.read_bytes(), digest_size=16).digest()
    moved = tmp_path / "moved.png"
    os.replace(a, moved)
    assert content_key(moved, 0) == key


def test_key_changes_on_edit_within_the_same_second(tmp_path):
    """An edit changes size or mtime_ns (and ctime_ns), so the stat memo misses and re-reads.

    Here the edit keeps the size and the mtime's second (only the nanoseconds differ).
    """
    p = tmp_path / "x.png"
    p.write_bytes(b"A" * 100)
    st = os.stat(p)
    base = st.st_mtime_ns - st.st_mtime_ns % 1_000_000_000
    os.utime(p, ns=(base, base + 1000))
    k1 = content_key(p, 0)
    assert content_key(p, 0) == k1 and len(inputs.FILE_KEY_MEMO) == 1
    p.write_bytes(b"B" * 100)
    os.utime(p, ns=(base, base + 2000))
    k2 = content_key(p, 0)
    assert k2 != k1
    p.write_bytes(b"B" * 101)  # different size, same mtime_ns
    os.utime(p, ns=(base, base + 2000))
    assert content_key(p, 0) not in (k1, k2)


def test_memo_avoids_rereading(tmp_path, monkeypatch):
    p = tmp_path / "x.bin"
    p.write_bytes(b"123")
    k = content_key(p, 0)
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail("file re-read"))
    assert content_key(p, 0) == k


def test_a_young_file_is_hashed_each_time_and_remembered_once_settled(tmp_path, monkeypatch):
    """git's racily-clean rule: an identity whose mtime or ctime is within the window of the
    moment it was keyed is not remembered (an edit in the same clock tick would keep it)."""
    p = tmp_path / "x.bin"
    p.write_bytes(b"123")
    old = os.stat(p).st_mtime_ns - 7200 * 10**9
    os.utime(p, ns=(old, old))  # an old mtime; the ctime is still young
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "600")
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    k = content_key(p, 0)
    assert content_key(p, 0) == k and len(reads) == 2 and not inputs.FILE_KEY_MEMO
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "0")  # old enough now
    assert content_key(p, 0) == k and len(reads) == 3 and len(inputs.FILE_KEY_MEMO) == 1
    assert content_key(p, 0) == k and len(reads) == 3


def test_verify_hash_reads_a_remembered_file_and_refreshes_the_memo(tmp_path):
    import hashlib

    from featcache.cache.identity import identity_of

    p = tmp_path / "x.bin"
    p.write_bytes(b"new bytes")
    identity = identity_of(p.resolve(), os.stat(p))
    inputs.FILE_KEY_MEMO[identity] = b"\x07" * 16  # left by a writer that moved no timestamp
    assert content_key(p, 0) == b"\x07" * 16
    real = hashlib.blake2b(b"new bytes", digest_size=16).digest()
    assert content_key(p, 0, verify="hash") == real
    assert inputs.FILE_KEY_MEMO[identity] == real and content_key(p, 0) == real


def test_forget_drops_a_file_from_the_memos(tmp_path):
    from featcache.cache.identity import identity_of
    from featcache.cache.keymemo import KeyMemo
    from featcache.inputs.keys import forget

    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    memo = KeyMemo(tmp_path / "c")
    key = content_key(p, 0, memo)
    memo.save()
    identity = identity_of(p.resolve(), os.stat(p))
    assert inputs.FILE_KEY_MEMO[identity] == key and KeyMemo(tmp_path / "c").get(identity) == key
    forget(p)
    assert identity not in inputs.FILE_KEY_MEMO and KeyMemo(tmp_path / "c").get(identity) is None
    forget(np.zeros(3))  # not a file: nothing to forget
    forget(tmp_path / "missing.bin")


def test_array_keys():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert content_key(a, 0) == content_key(a.copy(), 0)
    assert content_key(a, 0) != content_key(a.astype(np.uint16), 0)
    assert content_key(a, 0) != content_key(a.reshape(4, 3), 0)
    assert content_key(a, 0) != content_key(a.reshape(3, 4, 1), 0)
    assert content_key(np.asfortranarray(a), 0) == content_key(a, 0)
    for dtype in (">u2", "<f2", "float64", "int32"):
        assert len(content_key(a.astype(dtype), 0)) == 16
    assert content_key(a.astype(">u2"), 0) != content_key(a.astype("<u2"), 0)  # dtype string
    b = a.copy()
    b[0, 0] = 1
    assert content_key(b, 0) != content_key(a, 0)


def test_pil_keys():
    img = Image.fromarray(_rgb())
    assert content_key(img, 0) == content_key(img.copy(), 0)
    assert content_key(img, 0) != content_key(img.convert("L"), 0)
    p1, p2 = Image.new("P", (2, 2)), Image.new("P", (2, 2))
    p1.putpalette([0, 0, 0] * 256)
    p2.putpalette([9, 9, 9] * 256)
    assert content_key(p1, 0) != content_key(p2, 0)  # same indices, different colours


# ---------------------------------------------------------------- modes and policy
def test_rgba_composited_on_background(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = 200
    rgba[0, :, 3] = [0, 255, 128]
    p = _png(tmp_path / "a.png", rgba)
    pol = DecodePolicy(background=(10, 20, 30))
    for item in (p, Image.open(p), rgba):
        out = decode(item, 0, pol)
        assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
        np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
        np.testing.assert_array_equal(out[0, 1], [200, 200, 200])
        np.testing.assert_allclose(out[0, 2], [200 * a + b * (1 - a) for a in [128 / 255]
                                               for b in (10, 20, 30)], atol=1)
    assert (decode(p, 0)[0, 0] == 0).all()  # default background is black


def test_la_and_palette_transparency(tmp_path):
    la = Image.fromarray(np.array([[[100, 0], [100, 255]]], np.uint8), mode="LA")
    out = decode(la, 0, DecodePolicy(background=(255, 255, 255)))
    np.testing.assert_array_equal(out[0], [[255] * 3, [100] * 3])
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    p = tmp_path / "pal.png"
    pal.save(p, transparency=0)
    reopened = Image.open(p)
    assert reopened.mode == "P" and "transparency" in reopened.info
    out = decode(p, 0, DecodePolicy(background=(0, 0, 255)))
    np.testing.assert_array_equal(out[0], [[0, 0, 255], [0, 255, 0]])


def test_cmyk_grayscale_and_bilevel(tmp_path):
    p = tmp_path / "c.tif"
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(p)
    assert (decode(p, 0) == [255, 0, 0]).all()
    g = _png(tmp_path / "g.png", np.array([[0, 77, 255]], np.uint8))
    out = decode(g, 0)
    assert out.dtype == np.uint8 and out.tolist() == [[[0] * 3, [77] * 3, [255] * 3]]
    b = Image.new("1", (2, 1))
    b.putpixel((1, 0), 1)
    assert decode(b, 0).tolist() == [[[0] * 3, [255] * 3]]


def test_16bit_ramp_keeps_its_levels(tmp_path):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    p = _png(tmp_path / "ramp16.png", ramp)
    assert Image.open(p).mode.startswith("I;16")
    out = decode(p, 0)
    assert out.dtype == np.float32 and out.shape == (256, 256, 3)
    assert len(np.unique(out[..., 0])) > 60000  # never clipped or reduced to 8 bits
    assert out.min() == 0 and out.max() == 1
    assert (out[..., 0] == out[..., 2]).all()
    win = decode(p, 0, DecodePolicy(window=(1000, 1000)))
    assert win[0, 0, 0] == 0 and win[-1, -1, 0] == 1
    np.testing.assert_allclose(win.reshape(-1, 3)[1000, 0], 0.5)


def test_32bit_and_float_images():
    i32 = Image.fromarray(np.array([[-5, 0, 5]], np.int32))
    np.testing.assert_allclose(decode(i32, 0)[0, :, 0], [0, 0.5, 1])
    f = Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32))
    np.testing.assert_allclose(decode(f, 0)[0, :, 0], [0, 0.25, 1])
    nan = Image.fromarray(np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(InputError, match="input 5 .*NaN"):
        decode(nan, 5)


def _exif_stored(ref, orientation):
    """How a camera stores ``ref`` under each EXIF orientation (from the EXIF spec)."""
    t = ref.transpose(1, 0, 2)
    return {1: ref, 2: ref[:, ::-1], 3: ref[::-1, ::-1], 4: ref[::-1], 5: t,
            6: np.rot90(ref, 1), 7: t[::-1, ::-1], 8: np.rot90(ref, -1)}[orientation]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path, orientation):
    ref = _rgb(4, 6)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = _png(tmp_path / f"o{orientation}.png", np.ascontiguousarray(_exif_stored(ref, orientation)),
             exif=exif)
    np.testing.assert_array_equal(decode(p, 0), ref)
    np.testing.assert_array_equal(decode(Image.open(p), 0), ref)


def test_array_decoding():
    g = np.array([[0, 128]], np.uint8)
    assert decode(g, 0).tolist() == [[[0] * 3, [128] * 3]]
    assert decode(g[..., None], 0).tolist() == decode(g, 0).tolist()
    rgb = _rgb()
    out = decode(rgb, 0)
    assert out.dtype == np.uint8 and (out == rgb).all() and not np.shares_memory(out, rgb)
    u16 = np.array([[1000, 3000, 5000]], np.uint16)
    out = decode(u16, 0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0], [0, 0.5, 1])
    np.testing.assert_allclose(decode(u16, 0, DecodePolicy(window=(3000, 4000)))[0, :, 1],
                               [0, 0.5, 1])
    i16 = np.array([[-1000, 0, 1000]], np.int16)
    np.testing.assert_allclose(decode(i16, 0)[0, :, 0], [0, 0.5, 1])
    assert (decode(np.full((2, 2), 7, np.uint16), 0) == 0).all()  # constant -> zeros
    f = np.array([[0.1, 0.9]], np.float64)
    np.testing.assert_allclose(decode(f, 0)[0, :, 0], [0.1, 0.9], rtol=1e-6)
    np.testing.assert_allclose(decode(f * 10 - 3, 0)[0, :, 0], [0, 1])
    rgba = np.zeros((1, 1, 4), np.uint16)
    rgba[..., 3] = 65535
    rgba[..., 0] = 7
    assert decode(rgba, 0).shape == (1, 1, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_array_nan_inf(bad):
    a = np.zeros((2, 2), np.float32)
    a[1, 1] = bad
    _bad(a, 9, "NaN or inf")


def test_policy():
    pol = DecodePolicy(background=(1, 2, 3), window=(40, 400))
    d = pol.to_dict()
    assert json.loads(json.dumps(d)) == d and isinstance(d["decoder_version"], str)
    assert d["window"] == [40.0, 400.0] and d["background"] == [1, 2, 3]
    assert DecodePolicy().to_dict() != d and hash(pol) == hash(DecodePolicy((1, 2, 3), (40, 400)))
    with pytest.raises(ValueError, match="background"):
        DecodePolicy(background=(0, 0, 256))
    with pytest.raises(ValueError, match="window"):
        DecodePolicy(window=(0, 0))


def test_describe(tmp_path):
    assert describe(tmp_path / "x.png", 3) == f"input 3 ('{tmp_path / 'x.png'}')"
    assert describe(np.zeros((28, 28), np.uint8), 3) == "input 3 (array (28, 28) uint8)"
    assert "PIL image" in describe(Image.new("L", (2, 2)), 0)


def test_missing_values_in_a_pandas_column(tmp_path):
    pd = pytest.importorskip("pandas")
    for missing in (None, float("nan")):
        s = pd.Series([str(tmp_path / "a.png"), missing], dtype="string")
        with pytest.raises(InputError, match=r"input 1 .*missing value"):
            as_items(s)


def test_truncated_pil_image(tmp_path):
    p = _png(tmp_path / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    p.write_bytes(p.read_bytes()[:200])
    img = Image.open(p)  # lazy: the damage shows only when the pixels are read
    _bad(img, 6, "truncated or corrupt")
    with pytest.raises(InputError, match="input 6 .*truncated or corrupt"):
        content_key(img, 6)


# ---------------------------------------------------------------- trust: changes, limits, errors
def test_a_file_changed_after_keying_is_refused_on_the_bytes_decoded(tmp_path):
    path = _png(tmp_path / "a.png", _rgb())
    key = content_key(path, 0)
    assert decode(path, 0, key=key).shape == (4, 6, 3)  # unchanged: decodes
    _png(path, _rgb()[::-1])  # replaced by another image
    with pytest.raises(InputChangedError, match=r"input 0 .*a\.png.*changed while featcache"):
        decode(path, 0, key=key)


def test_arrays_and_pil_images_changed_after_keying_are_refused():
    arr = _rgb()
    key = content_key(arr, 0)
    arr[0, 0, 0] ^= 1  # mutated in place by someone else
    with pytest.raises(InputChangedError, match="input 0 .*changed while featcache"):
        decode(arr, 0, key=key)
    img = Image.fromarray(_rgb())
    key = content_key(img, 1)
    img.putpixel((0, 0), (1, 2, 3))
    with pytest.raises(InputChangedError, match="input 1 .*changed while featcache"):
        decode(img, 1, key=key)
    assert decode(img, 1, key=content_key(img, 1)).shape == (4, 6, 3)


def test_an_image_whose_resize_would_be_huge_is_refused_before_allocating(tmp_path, monkeypatch):
    import tracemalloc

    path = _png(tmp_path / "line.png", np.zeros((1, 100_000), np.uint8))
    assert path.stat().st_size < 1000  # a few hundred bytes, 15 GB once resized to 224 px
    tracemalloc.start()
    try:
        msg = _bad(path, 0, "would make a 5017600000-pixel image, over the limit", image_size=224)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20 and "FEATCACHE_MAX_RESIZED_PIXELS" in msg
    _bad(np.zeros((100_000, 1), np.uint16), 1, "over the limit", image_size=224)
    assert decode(path, 0, image_size=None).shape == (1, 100_000, 3)  # no resize, no limit
    monkeypatch.setenv("FEATCACHE_MAX_RESIZED_PIXELS", str(3 * 10**9))
    assert inputs.max_resized_pixels() == 3 * 10**9
    monkeypatch.setenv("FEATCACHE_MAX_RESIZED_PIXELS", "lots")
    with pytest.raises(InputError, match="FEATCACHE_MAX_RESIZED_PIXELS='lots'"):
        decode(path, 0, image_size=224)


def test_resized_pixels_matches_the_engine_resize():
    assert inputs.resized_pixels(28, 28, 224) == 224 * 224
    assert inputs.resized_pixels(100, 200, 50) == 50 * 100
    assert inputs.resized_pixels(1, 100_000, 224) == 224 * 22_400_000


def test_any_exception_while_decoding_becomes_the_inputs_error(tmp_path, monkeypatch):
    path = _png(tmp_path / "a.png", _rgb())

    def explode(*args, **kwargs):
        raise KeyError("a decoder bug")

    monkeypatch.setattr(decoding.ImageOps, "exif_transpose", explode)
    with pytest.raises(InputError, match=r"input 2 .*a\.png.*KeyError") as info:
        decode(path, 2)
    assert isinstance(info.value.__cause__, KeyError)


def test_tensors_without_readable_data_are_named():
    torch = pytest.importorskip("torch")
    with pytest.raises(InputError, match="device meta"):
        as_items(torch.empty(2, 3, 8, 8, device="meta"))
    with pytest.raises(InputError, match="complex"):
        as_items(torch.zeros(2, 3, 8, 8, dtype=torch.complex64))
    sparse = torch.zeros(2, 3, 8, 8).to_sparse()
    with pytest.raises(InputError, match="sparse"):
        as_items(sparse)


def test_an_error_handed_to_another_process_goes_without_its_tracebacks():
    # A decode worker's or hashing process's error: with tblib's pickling support installed
    # (by distributed or skops) a traceback would be rebuilt on the receiver's frames, a cycle
    # that kept a DataLoader's workers alive (tests/test_batches.py covers that end to end).
    from featcache.inputs.errors import without_tracebacks

    try:
        try:
            try:
                raise OSError("disk")
            except OSError:
                raise ValueError("decoding")  # noqa: B904 - its __context__ is the OSError
        except ValueError as exc:
            raise InputError("input 3 ('x.png'): cannot be read.") from exc
    except InputError as caught:
        error = caught
    chain = [error, error.__cause__, error.__cause__.__context__]
    assert all(e.__traceback__ is not None for e in chain)
    assert without_tracebacks(error) is error
    assert [e.__traceback__ for e in chain] == [None, None, None]
    assert str(error) == "input 3 ('x.png'): cannot be read." and str(chain[2]) == "disk"
    loop = ValueError("a cycle")
    loop.__context__ = InputError("b")
    loop.__context__.__context__ = loop  # chained errors may refer back: it still ends
    assert without_tracebacks(loop) is loop
