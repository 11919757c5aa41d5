"""Siemens mosaics: tiles unpacked, position corrected from the CSA slice normal, nothing read as a flat slice."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from meddiff_cli.errors import BadInputError
from meddiff_cli.io import LPS_TO_RAS, discover_cases, read_case, read_volume, write_dicom_series
from meddiff_cli.io.dicom.csa import CSAError, parse_csa
from tests.dicom_builders import csa_bytes, oblique_volume, write_mosaic


def unpacked(volume, folder):
    """The reference: the same volume written as an ordinary one-file-per-slice series and read back."""
    return read_volume(write_dicom_series(volume, folder, modality="mri"))


def assert_same(expected, actual):
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.array, expected.array)
    assert np.abs(actual.world_corners() - expected.world_corners()).max() <= 1e-3


@pytest.mark.parametrize("flip_k", [False, True], ids=["normal-along-row-x-col", "normal-against"])
@pytest.mark.parametrize("counts", ["both", "private-only", "csa-only"])
def test_mosaic_reads_as_the_unpacked_volume(tmp_path, flip_k, counts):
    volume = oblique_volume(1, shape=(12, 10, 7), flip_k=flip_k)  # 7 tiles on a 3x3 grid: two empty tiles
    mosaic = write_mosaic(volume, tmp_path / "mosaic.dcm", generate_uid(),
                          private_count=counts != "csa-only", csa_count=counts != "private-only")
    back = read_volume(mosaic)
    assert_same(unpacked(volume, tmp_path / "ref"), back)
    assert back.metadata["mosaic"] == {"images": 7, "grid": 3} and back.modality == "mri"


@pytest.mark.parametrize("flip_k", [False, True])
def test_mosaic_geometry_agrees_with_nibabel(tmp_path, flip_k):
    """nibabel.nicom's MosaicWrapper (an independent implementation) gives the same voxels at the same places."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel.nicom announces itself as experimental
        from nibabel.nicom.dicomwrappers import MosaicWrapper
    path = write_mosaic(oblique_volume(2, shape=(8, 6, 10), flip_k=flip_k), tmp_path / "m.dcm", generate_uid())
    wrapper = MosaicWrapper(pydicom.dcmread(path))
    ours = read_volume(path)
    theirs = wrapper.get_data()  # (row, column, tile), affine in LPS
    reverse = float((LPS_TO_RAS @ ours.affine)[:3, 2] @ wrapper.affine[:3, 2]) < 0
    np.testing.assert_array_equal(ours.array[:, :, ::-1] if reverse else ours.array, theirs.transpose(1, 0, 2))
    n = theirs.shape[2]
    for r, c, s in [(0, 0, 0), (5, 0, 0), (0, 7, 0), (0, 0, n - 1), (5, 7, n - 1)]:
        world_theirs = (LPS_TO_RAS @ wrapper.affine @ [r, c, s, 1])[:3]
        world_ours = (ours.affine @ [c, r, n - 1 - s if reverse else s, 1])[:3]
        np.testing.assert_allclose(world_ours, world_theirs, atol=1e-4)


def test_several_mosaics_are_a_4d_series_and_one_volume_can_be_picked(tmp_path):
    series_uid, folder = generate_uid(), tmp_path / "fmri"
    folder.mkdir()
    volumes = [oblique_volume(10 + t, shape=(8, 8, 5)) for t in range(3)]
    for t, volume in enumerate(volumes):
        write_mosaic(volume, folder / f"{t:03d}.dcm", series_uid, acquisition=t + 1)
    with pytest.raises(BadInputError, match=r"is 4D, not one volume: time series \(fMRI-like\): 5 positions x 3 "
                                             r"volumes, told apart by AcquisitionNumber; choose one with "
                                             r"--volume-index K .*K = 0\.\.2") as error:
        read_volume(folder)
    assert "\n" not in str(error.value)
    back = read_volume(folder, volume_index=1)
    assert_same(unpacked(volumes[1], tmp_path / "ref1"), back)
    assert back.metadata["selected_volume"]["index"] == 1 and back.metadata["selected_volume"]["value"] == [2.0]
    [case] = discover_cases([folder])
    assert_same(unpacked(volumes[2], tmp_path / "ref2"), read_case(case, volume_index=2))
    with pytest.raises(BadInputError, match=r"volume index 3 is out of range, the series has 3 volumes"):
        read_case(case, volume_index=3)


def test_mosaic_without_a_count_is_refused_never_read_flat(tmp_path):
    path = write_mosaic(oblique_volume(3), tmp_path / "scans/nocount.dcm", generate_uid(),
                        private_count=False, csa_count=False)
    message = r"Siemens mosaic \(ImageType MOSAIC\): no NumberOfImagesInMosaic .* cannot be unpacked"
    with pytest.raises(BadInputError, match=message):
        read_volume(path)
    [case] = discover_cases([tmp_path / "scans"])  # a case that fails loudly, not a silently skipped file
    with pytest.raises(BadInputError, match=message) as error:
        read_case(case)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(("options", "message"), [
    ({"csa_normal": False}, r"no CSA SliceNormalVector: the direction in which the tiles follow each other is unknown"),
    ({"count": 10, "csa_count": False}, r"30x36 frame does not split into a 4x4 grid of tiles \(10 images\)"),
    ({"count": 4, "csa_count": False, "csa_normal": False},
     r"no CSA SliceNormalVector"),  # a count alone does not say which way the tiles run
])
def test_mosaic_whose_tiles_or_positions_are_unknown_is_refused(tmp_path, options, message):
    path = write_mosaic(oblique_volume(4, shape=(12, 10, 9)), tmp_path / "m.dcm", generate_uid(), **options)
    with pytest.raises(BadInputError, match=message):
        read_volume(path)


def test_mosaic_counts_that_disagree_are_refused(tmp_path):
    path = write_mosaic(oblique_volume(4, shape=(12, 10, 9)), tmp_path / "m.dcm", generate_uid())
    ds = pydicom.dcmread(path)
    ds.private_block(0x0019, "SIEMENS MR HEADER")[0x0A].value = 4
    ds.save_as(path)
    with pytest.raises(BadInputError, match=r"number of images disagrees: \(0019,100A\) says 4, "
                                             r"CSA NumberOfImagesInMosaic says 9"):
        read_volume(path)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless], ids=["rle", "jpeg2000", "jpeg-ls"])
def test_compressed_mosaics_unpack_like_uncompressed(tmp_path, syntax):
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder for {syntax.name}")
    volume = oblique_volume(5, shape=(16, 16, 4))  # 32x32 frame: enough for OpenJPEG's default levels
    path = write_mosaic(volume, tmp_path / "m.dcm", generate_uid())
    reference = read_volume(path)
    ds = pydicom.dcmread(path)
    ds.compress(syntax)
    ds.save_as(tmp_path / "c.dcm")
    back = read_volume(tmp_path / "c.dcm")
    assert_same(reference, back)
    assert back.metadata["transfer_syntax"] == [syntax.name]


def test_csa_parser_agrees_with_nibabel_and_refuses_garbage():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader
    tags = {"NumberOfImagesInMosaic": ["36"], "SliceNormalVector": ["0.1", "-0.2", "0.97467943"], "Empty": []}
    raw = csa_bytes(tags)
    theirs = csareader.read(raw)["tags"]  # our builder's bytes are what nibabel reads ...
    assert {name: theirs[name]["items"] for name in tags} == {
        "NumberOfImagesInMosaic": [36], "SliceNormalVector": [0.1, -0.2, 0.97467943], "Empty": []}
    assert parse_csa(raw) == tags  # ... and what we read
    for bad in (raw[:40], raw[:-3], b"SV10" + b"\xff" * 20, b"not a csa header"):
        with pytest.raises(CSAError):
            parse_csa(bad)


def test_mosaic_with_a_corrupt_csa_header_is_refused(tmp_path):
    path = write_mosaic(oblique_volume(6), tmp_path / "m.dcm", generate_uid())
    ds = pydicom.dcmread(path)
    ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value = b"SV10" + b"\x00" * 30
    ds.save_as(path)
    with pytest.raises(BadInputError, match=r"unreadable CSA image header \(implausible tag count 0\)"):
        read_volume(path)
