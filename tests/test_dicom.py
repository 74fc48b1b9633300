"""Tests for featcache.dicom: DICOM decoding, its limits, and every pydicom test file."""

import glob
import os
import shutil
import sys
import tracemalloc

import numpy as np
import pytest

from featcache.exceptions import InputError
from featcache.inputs import DecodePolicy, decode

pydicom = pytest.importorskip("pydicom")


def _bad(item, index, match, policy=DecodePolicy()):
    """decode() must raise InputError matching ``match`` and naming the index and path."""
    with pytest.raises(InputError, match=match) as info:
        decode(item, index, policy)
    msg = str(info.value)
    assert f"input {index}" in msg and str(item) in msg
    return msg


def _dcm(name):
    pydicom_data = pytest.importorskip("pydicom.data")
    path = pydicom_data.get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return path


def test_dicom_ct_modality_lut_and_window(tmp_path):
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = _dcm("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds)
    assert (hu.min(), hu.max()) == (-896, 1167)
    out = decode(path, 0)  # no window in the file: min..max
    assert out.dtype == np.float32 and out.shape == hu.shape + (3,)
    np.testing.assert_allclose(out[..., 0], (hu + 896) / 2063, atol=1e-6)
    win = decode(path, 0, DecodePolicy(window=(40, 400)))
    np.testing.assert_allclose(win[..., 1], np.clip((hu + 160) / 400, 0, 1), atol=1e-6)
    renamed = tmp_path / "ct_no_extension"  # found by its "DICM" preamble
    shutil.copy(path, renamed)
    np.testing.assert_array_equal(decode(renamed, 0), out)


def test_dicom_file_window_and_monochrome1():
    import pydicom
    from pydicom.pixels import apply_modality_lut

    mr = _dcm("MR_small.dcm")
    ds = pydicom.dcmread(mr)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600, 1600)
    vals = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(decode(mr, 0)[..., 0], np.clip((vals + 200) / 1600, 0, 1),
                               atol=1e-6)
    cr = _dcm("6278")  # a MONOCHROME1 CR image (WindowCenter 1600, WindowWidth 2800)
    ds = pydicom.dcmread(cr)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    vals = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(decode(cr, 0)[..., 2], 1 - np.clip((vals - 200) / 2800, 0, 1),
                               atol=1e-6)


def test_dicom_rgb():
    out = decode(_dcm("SC_rgb_small_odd.dcm"), 0)
    assert out.dtype == np.uint8 and out.shape == (3, 3, 3)


def test_dicom_errors(tmp_path, monkeypatch):
    _bad(_dcm("rtdose.dcm"), 0, "multi-frame DICOM")
    jpegls = _dcm("MR_small_jpeg_ls_lossless.dcm")
    import pydicom
    try:
        pydicom.dcmread(jpegls).pixel_array
        pytest.skip("a JPEG-LS decoder is installed")
    except RuntimeError:
        pass
    msg = _bad(jpegls, 1, "JPEG-LS.*no decoder")
    assert "pylibjpeg" in msg and "gdcm" in msg
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    _bad(junk, 2, "DICOM")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    _bad(_dcm("CT_small.dcm"), 3, r"pip install featcache\[dicom\]")


def test_malformed_attributes_are_a_named_input_error():
    msg = _bad(_dcm("badVR.dcm"), 4, "malformed NumberOfFrames")
    assert "badVR.dcm" in msg


def _rle_bomb(tmp_path, side=14000):
    """A 3 MB RLE-compressed file whose pixels really decode to ``side`` x ``side`` bytes."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless, generate_uid

    full, rest = divmod(side, 128)  # runs of 128 zero bytes per row, then the remainder
    row = b"\x81\x00" * full + (bytes([257 - rest, 0]) if rest else b"")
    segment = row * side
    frame = np.array([1, 64] + [0] * 14, dtype="<u4").tobytes() + segment  # RLE header
    ds = pydicom.dcmread(_dcm("CT_small.dcm"))
    for name in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        ds.pop(name, None)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 7, 0, 1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPInstanceUID = RLELossless, generate_uid()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta = meta
    path = tmp_path / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_header_claiming_a_huge_image_is_refused_before_allocating(tmp_path):
    path = _rle_bomb(tmp_path)
    assert os.path.getsize(path) < 4_000_000
    tracemalloc.start()
    try:
        msg = _bad(path, 0, "declares 14000x14000 = 196000000 pixels, over the decode limit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "MAX_IMAGE_PIXELS" in msg
    assert peak < 50 * 2**20


def test_every_bundled_pydicom_file_gives_an_image_or_a_named_error():
    folder = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
    files = sorted(f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if os.path.isfile(f))
    assert len(files) > 100
    decoded = refused = 0
    for i, path in enumerate(files):
        try:
            out = decode(path, i, image_size=32)
        except InputError as exc:
            assert f"input {i}" in str(exc)
            refused += 1
        else:
            assert out.ndim == 3 and out.shape[2] == 3 and out.dtype in (np.uint8, np.float32)
            assert np.isfinite(out).all()
            decoded += 1
    assert decoded > 30 and refused > 30
