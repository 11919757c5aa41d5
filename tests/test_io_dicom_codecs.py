"""Lossless JPEG (process 14, every predictor) and JPEG-LS (lossless, near-lossless) CT series decode to the
uncompressed voxels. Encoders: GDCM (python-gdcm), CharLS (pyjpegls) and the reference encoder in dicom_builders."""

from __future__ import annotations

import gdcm  # python-gdcm: a dependency (JPEG Lossless decoding), used here as an encoder too
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless

from meddiff_cli.errors import BadInputError
from meddiff_cli.io import Volume, read_volume, write_dicom_series
from meddiff_cli.io.dicom import isolated
from tests.dicom_builders import as_unsigned_12_bit_ct, encode_lossless_jpeg, to_lossless_jpeg


def ct_volume(seed: int) -> Volume:
    rng = np.random.default_rng(seed)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 30.0]
    return Volume(rng.integers(-1024, 3000, (20, 18, 3)).astype(np.float32), affine, "ct")


def gdcm_recompress(path, syntax: int) -> None:
    """Rewrite one file in place with GDCM's encoder for ``syntax`` (a gdcm.TransferSyntax constant)."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


@pytest.fixture()
def series(tmp_path):
    volume = ct_volume(0)
    return volume, write_dicom_series(volume, tmp_path / "ct", modality="ct")


@pytest.mark.parametrize("unsigned_12_bit", [False, True], ids=["int16", "uint12"])
@pytest.mark.parametrize(("syntax", "name"), [
    ("JPEGLosslessProcess14", "JPEG Lossless, Non-Hierarchical (Process 14)"),
    ("JPEGLosslessProcess14_1", JPEGLosslessSV1.name),
    ("JPEGLSLossless", JPEGLSLossless.name),
])
def test_gdcm_encoded_series_decode_exactly(series, syntax, name, unsigned_12_bit):
    volume, folder = series
    if unsigned_12_bit:
        as_unsigned_12_bit_ct(folder)
    for path in folder.iterdir():
        gdcm_recompress(path, getattr(gdcm.TransferSyntax, syntax))
    back = read_volume(folder)
    assert back.metadata["transfer_syntax"] == [name]
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-6)


@pytest.mark.parametrize("predictor", range(1, 8))
def test_lossless_jpeg_every_predictor_decodes_exactly(series, tmp_path, predictor):
    """Predictors 2-7 are the non-SV1 process 14 streams some PACS write; the encoder here is independent."""
    volume, folder = series
    as_unsigned_12_bit_ct(folder)
    for path in folder.iterdir():
        to_lossless_jpeg(path, predictor)
    assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.57"
    np.testing.assert_array_equal(read_volume(folder).array, volume.array)


@pytest.mark.parametrize("error", [0, 3])
def test_jpeg_ls_from_charls_is_lossless_or_within_its_bound(series, tmp_path, error):
    volume, folder = series
    syntax = JPEGLSLossless if error == 0 else JPEGLSNearLossless
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.compress(syntax, jls_error=error, encoding_plugin="pyjpegls")
        ds.save_as(path)
    back = read_volume(folder)
    assert back.metadata["transfer_syntax"] == [syntax.name]
    difference = np.abs(back.array - volume.array)
    assert difference.max() <= error  # near-lossless: every voxel within NEAR of the source (slope 1 HU)
    assert (difference.max() > 0) == (error > 0)



def corrupt_lossless_jpeg(folder, tmp_path):
    """One slice whose JPEG Lossless stream is cut inside its scan header and continued with random bytes
    (the kind of input on which GDCM 3.2 aborts the process it runs in)."""
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    stream = encode_lossless_jpeg(ds.pixel_array.astype(np.int64) & 0xFFFF, 16, 1)
    ds.PixelData = encapsulate([stream[:44] + bytes(np.random.default_rng(4).integers(0, 256, 300, dtype=np.uint8))])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.save_as(tmp_path / "corrupt.dcm")
    return tmp_path / "corrupt.dcm"


def test_corrupt_lossless_jpeg_is_a_clean_error_not_a_dead_process(series, tmp_path):
    path = corrupt_lossless_jpeg(series[1], tmp_path)
    with pytest.raises(BadInputError) as error:
        read_volume(path)  # reaching the next line at all is the point: GDCM runs in a child process
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    assert "GDCM decoder crashed" in message or "cannot decode pixel data" in message


def test_a_dying_decoder_process_names_the_file(series, tmp_path, monkeypatch):
    _, folder = series
    for path in folder.iterdir():
        to_lossless_jpeg(path, predictor=1)
    monkeypatch.setattr(isolated, "CHILD", "import os, sys; sys.stdin.readline(); os.abort()")
    first = sorted(folder.iterdir())[0]
    with pytest.raises(BadInputError, match=r"the GDCM decoder crashed on this file's pixel data \(corrupt JPEG "
                                             r"Lossless, Non-Hierarchical \(Process 14\) stream\?\)") as error:
        read_volume(folder)
    assert str(error.value).startswith(f"{first}: ")

