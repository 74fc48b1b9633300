"""Tests for featcache.inputs.dicom: DICOM decoding, its limits, and every pydicom test file."""

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


def _linear(x, center, width):
    """DICOM's LINEAR window (PS3.3 C.11.2.1.2.1) onto 0..1."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def _variant(tmp_path, name, **attributes):
    """A bundled pydicom file with some attributes changed, saved under tmp_path."""
    ds = pydicom.dcmread(_dcm(name))
    for key, value in attributes.items():
        if value is None:
            ds.pop(key, None)
        else:
            setattr(ds, key, value)
    path = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.dcm"
    ds.save_as(path)
    return path


def _modality(path):
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float64)


def test_dicom_file_window_is_pydicoms_linear_voi_and_monochrome1_inverts():
    mr = _dcm("MR_small.dcm")
    ds = pydicom.dcmread(mr)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600, 1600)
    assert "VOILUTFunction" not in ds  # LINEAR by default
    np.testing.assert_allclose(decode(mr, 0)[..., 0], _linear(_modality(mr), 600, 1600),
                               atol=1e-6)
    cr = _dcm("6278")  # a MONOCHROME1 CR image (WindowCenter 1600, WindowWidth 2800), rescaled
    ds = pydicom.dcmread(cr)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and float(ds.RescaleSlope) != 1
    np.testing.assert_allclose(decode(cr, 0)[..., 2], 1 - _linear(_modality(cr), 1600, 2800),
                               atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_dicom_voi_lut_functions_match_pydicom(function, tmp_path):
    from pydicom.pixels import apply_voi_lut

    path = _variant(tmp_path, "MR_small.dcm", VOILUTFunction=function)
    x = _modality(path)
    expected = (np.clip((x - 600) / 1600 + 0.5, 0, 1) if function == "LINEAR_EXACT"
                else 1 / (1 + np.exp(-4 * (x - 600) / 1600)))
    out = decode(path, 0)[..., 0]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    ds = pydicom.dcmread(path)  # pydicom's own VOI, on its signed 16-bit output range
    reference = (apply_voi_lut(x, ds) + 2**15) / (2**16 - 1)
    np.testing.assert_allclose(out, reference, atol=1e-6)
    if function == "SIGMOID":  # the former hand-written rule was linear: far from this
        assert np.abs(expected - _linear(x, 600, 1600)).max() > 0.05


def test_dicom_several_windows_use_the_first_as_pydicom_does(tmp_path):
    path = _variant(tmp_path, "MR_small.dcm", WindowCenter=[600, 100], WindowWidth=[1600, 50])
    np.testing.assert_allclose(decode(path, 0)[..., 0], _linear(_modality(path), 600, 1600),
                               atol=1e-6)
    overlay = _dcm("examples_overlay.dcm")  # a bundled file with two windows
    ds = pydicom.dcmread(overlay)
    assert len(ds.WindowCenter) == 2
    np.testing.assert_allclose(decode(overlay, 1)[..., 0],
                               _linear(_modality(overlay), *map(float, (ds.WindowCenter[0],
                                                                        ds.WindowWidth[0]))),
                               atol=1e-6)


def _with_voi_lut(tmp_path, keep_window):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(_dcm("MR_small.dcm"))
    item = Dataset()
    item.add_new(0x00283002, "US", [2048, 0, 12])  # LUTDescriptor: entries, first value, bits
    lut = [int(i * 4095 / 2047) for i in range(2048)][::-1]  # an inverting 12-bit LUT
    item.add_new(0x00283006, "US", lut)  # LUTData
    ds.VOILUTSequence = Sequence([item])
    if not keep_window:
        del ds.WindowCenter, ds.WindowWidth
    path = tmp_path / f"voi_lut_{keep_window}.dcm"
    ds.save_as(path)
    return path, np.asarray(lut)


@pytest.mark.parametrize("keep_window", [False, True])
def test_dicom_voi_lut_sequence_is_applied_on_its_output_range(keep_window, tmp_path):
    path, lut = _with_voi_lut(tmp_path, keep_window)  # with a window too: the LUT is preferred
    x = _modality(path).astype(np.int64)
    expected = lut[np.clip(x, 0, len(lut) - 1)] / (2**12 - 1)
    np.testing.assert_allclose(decode(path, 0)[..., 0], expected, atol=1e-6)


def test_dicom_user_window_overrides_the_files_voi(tmp_path):
    path, _ = _with_voi_lut(tmp_path, True)
    x = _modality(path)
    out = decode(path, 0, DecodePolicy(window=(1000, 500)))[..., 0]
    np.testing.assert_allclose(out, np.clip((x - 750) / 500, 0, 1), atol=1e-6)


@pytest.mark.parametrize("attributes, match", [
    ({"WindowWidth": 0}, "Window Width"), ({"VOILUTFunction": "CUBIC"}, "CUBIC"),
])
def test_a_voi_pydicom_refuses_is_a_named_input_error(attributes, match, tmp_path):
    path = _variant(tmp_path, "MR_small.dcm", **attributes)
    msg = _bad(path, 7, match)
    assert "VOI" in msg and "window=(center, width)" in msg
    assert decode(path, 7, DecodePolicy(window=(600, 1600))).shape == (64, 64, 3)


def test_the_voi_rule_is_in_the_fingerprint():
    from featcache.inputs.dicom import DICOM_VOI_RULE

    policy = DecodePolicy().to_dict()
    assert policy["dicom_voi"] == DICOM_VOI_RULE and "apply_voi_lut" in DICOM_VOI_RULE
    assert policy["dicom_voi"] != "linear"  # the rule of caches written before it changed


def test_dicom_rgb():
    out = decode(_dcm("SC_rgb_small_odd.dcm"), 0)
    assert out.dtype == np.uint8 and out.shape == (3, 3, 3)


def test_dicom_errors(tmp_path, monkeypatch):
    _bad(_dcm("rtdose.dcm"), 0, "multi-frame DICOM")
    jpegls = _dcm("MR_small_jpeg_ls_lossless.dcm")
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    # As without the dicom extra's decoders: every JPEG-LS plugin unavailable.
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_available", {})
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_unavailable",
                        {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
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


#: One bundled pydicom file per compressed transfer syntax, and the uncompressed file it must
#: decode to exactly (lossless syntaxes) where pydicom ships one.
COMPRESSED = {
    "1.2.840.10008.1.2.4.50": ("SC_jpeg_no_color_transform.dcm", None),  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": ("JPGExtended.dcm", None),  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.70": ("SC_rgb_jpeg_gdcm.dcm", None),  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS
    "1.2.840.10008.1.2.4.81": ("JPEGLSNearLossless_16.dcm", None),  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": ("693_J2KI.dcm", None),  # JPEG 2000
    "1.2.840.10008.1.2.5": ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE Lossless
}


@pytest.mark.parametrize("syntax", sorted(COMPRESSED))
def test_every_compressed_transfer_syntax_decodes(syntax):
    """With the dicom extra's decoders (pylibjpeg, -libjpeg, -openjpeg, -rle) installed."""
    name, reference = COMPRESSED[syntax]
    path = _dcm(name)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    out = decode(path, 0)
    assert out.ndim == 3 and out.shape[2] == 3 and np.isfinite(out).all()
    assert out.dtype == np.uint8 or (out.min() >= 0 and out.max() <= 1 and out.max() > out.min())
    if reference:
        np.testing.assert_array_equal(out, decode(_dcm(reference), 0))


def test_a_large_compressed_dicom_is_box_reduced_after_its_voi(tmp_path):
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(_dcm("MR_small.dcm"))
    big = np.kron(ds.pixel_array, np.ones((16, 16), ds.pixel_array.dtype))  # 1024 x 1024
    ds.Rows, ds.Columns = big.shape
    ds.PixelData = big.tobytes()
    ds.compress(RLELossless)
    path = tmp_path / "big_rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    full = decode(path, 0, DecodePolicy(decode_scale="full"), image_size=64)
    reduced = decode(path, 0, DecodePolicy(), image_size=64)
    assert full.shape == (1024, 1024, 3) and reduced.shape == (128, 128, 3)  # 8x: 128 = 2 x 64
    np.testing.assert_allclose(reduced[::2, ::2], full[::16, ::16], atol=1e-6)  # constant blocks
    assert decode(path, 0, DecodePolicy(), image_size=None).shape == (1024, 1024, 3)
