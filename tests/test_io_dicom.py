"""DICOM series reading: grouping, sorting, stack checks, multi-frame, compression, pydicom's real files."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid
from scipy.spatial.transform import Rotation

from meddiff_cli.errors import BadInputError
from meddiff_cli.io import (
    LPS_TO_RAS,
    Volume,
    discover_cases,
    read_case,
    read_volume,
    read_with_simpleitk,
    write_dicom_series,
)

SHAPE = (16, 12, 10)


def make_volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE, angles=(15.0, -25.0, 40.0)) -> Volume:
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() * np.array([0.8, 1.1, 2.5])
    affine[:3, 3] = [-30.0, 12.5, 80.0]
    return Volume(rng.integers(-1000, 1500, shape).astype(np.float32), affine, "ct")


def edit(path: Path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for name, value in changes.items():
        setattr(ds, name, value)
    ds.save_as(path)


def scatter(source: Path, target: Path, rng: np.random.Generator) -> None:
    """Copy files under random names (no extension) into nested folders, in random order."""
    for index, path in enumerate(rng.permutation(sorted(source.iterdir()))):
        folder = target / f"sub{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / f"{rng.integers(1 << 30):08x}")


def assert_same(expected: Volume, actual: Volume) -> None:
    np.testing.assert_array_equal(actual.array, expected.array)
    assert np.abs(actual.world_corners() - expected.world_corners()).max() <= 0.01


@pytest.fixture()
def series(tmp_path) -> tuple[Volume, Path]:
    volume = make_volume()
    return volume, write_dicom_series(volume, tmp_path / "written", modality="ct")


def test_shuffled_files_and_instance_numbers_sort_by_position(series, tmp_path):
    volume, folder = series
    rng = np.random.default_rng(7)
    numbers = rng.permutation(SHAPE[2]) + 1
    for path, number in zip(sorted(folder.iterdir()), numbers):
        edit(path, InstanceNumber=int(number), SliceLocation=0)  # both lie: only positions may be trusted
    scatter(folder, tmp_path / "shuffled", rng)
    assert_same(volume, read_volume(tmp_path / "shuffled"))


def test_two_interleaved_series_are_separated(tmp_path):
    first, second = make_volume(1), make_volume(2, shape=(16, 12, 6), angles=(0.0, 0.0, 90.0))
    mixed = tmp_path / "mixed"
    rng = np.random.default_rng(3)
    scatter(write_dicom_series(first, tmp_path / "a"), mixed, rng)
    scatter(write_dicom_series(second, tmp_path / "b"), mixed, rng)
    (mixed / "README.txt").write_text("not dicom")
    with pytest.raises(BadInputError, match=r"2 DICOM series found, expected one: series-[0-9a-f]{12}"):
        read_volume(mixed)
    cases = discover_cases([mixed])
    assert len(cases) == 2 and all(re.fullmatch(r"series-[0-9a-f]{12}", c.case_id) for c in cases)
    assert [c.case_id for c in discover_cases([mixed])] == [c.case_id for c in cases]  # stable
    volumes = sorted((read_case(c) for c in cases), key=lambda v: v.shape[2])
    assert_same(second, volumes[0])
    assert_same(first, volumes[1])
    uids = {str(pydicom.dcmread(p).SeriesInstanceUID) for p in mixed.rglob("*") if p.is_file() and p.name != "README.txt"}
    assert not any(uid in c.case_id or uid in str(c.series_key) for c in cases for uid in uids)


def test_missing_slice_is_reported(series):
    _, folder = series
    sorted(folder.iterdir())[4].unlink()
    with pytest.raises(BadInputError, match="missing slice") as error:
        read_volume(folder)
    assert str(folder) in str(error.value) and "\n" not in str(error.value)


def test_gantry_tilt_is_reported(series):
    volume, folder = series
    lps = LPS_TO_RAS @ volume.affine
    shift = lps[:3, 1] / np.linalg.norm(lps[:3, 1]) * 0.6  # each slice slides 0.6 mm along the column axis
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        k = int(ds.InstanceNumber) - 1
        edit(path, ImagePositionPatient=[f"{v:.6f}" for v in np.array(ds.ImagePositionPatient, float) + k * shift])
    with pytest.raises(BadInputError, match=r"gantry tilt .* of 13\.\d+ degrees"):
        read_volume(folder)


def test_duplicated_slice_is_reported(series):
    _, folder = series
    duplicate = folder / "copy.dcm"
    shutil.copy(sorted(folder.iterdir())[3], duplicate)
    edit(duplicate, SOPInstanceUID=generate_uid())
    with pytest.raises(BadInputError, match="1 duplicated slice position"):
        read_volume(folder)


def test_slightly_uneven_spacing_is_a_warning_strongly_uneven_an_error(series):
    volume, folder = series
    lps = LPS_TO_RAS @ volume.affine
    normal = lps[:3, 2] / np.linalg.norm(lps[:3, 2])
    paths = sorted(folder.iterdir())
    for k, path in enumerate(paths):
        jitter = 0.05 if k % 2 else -0.05
        edit(path, ImagePositionPatient=[f"{v:.6f}" for v in lps[:3, :] @ [0, 0, k, 1] + jitter * normal])
    back = read_volume(folder)
    assert any("slice spacing varies" in w for w in back.metadata["warnings"])
    np.testing.assert_array_equal(back.array, volume.array)
    for k, path in enumerate(paths):
        edit(path, ImagePositionPatient=[f"{v:.6f}" for v in lps[:3, :] @ [0, 0, k + (0.4 if k >= 5 else 0), 1]])
    with pytest.raises(BadInputError, match="inconsistent slice spacing"):
        read_volume(folder)


def test_mixed_orientations_in_one_series_become_separate_groups(series):
    _, folder = series
    for path in sorted(folder.iterdir())[:4]:
        edit(path, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(BadInputError, match="2 DICOM series found"):
        read_volume(folder)
    assert len(discover_cases([folder])) == 2


def test_non_image_dicom_files_are_skipped_with_reason(series):
    volume, folder = series
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "rt")
    shutil.copy(get_testdata_file("test-SR.dcm"), folder / "sr.dcm")
    (folder / "notes.json").write_text("{}")
    back = read_volume(folder)
    assert_same(volume, back)
    assert back.metadata["skipped_files"] == {
        "no pixel data (RT Structure Set Storage)": 1,
        "no pixel data (Comprehensive SR Storage)": 1,
    }


def write_enhanced_ct(path: Path, volume: Volume, order: np.ndarray) -> None:
    """An Enhanced CT multi-frame file with per-frame positions/rescale, frames stored in ``order``."""
    lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "CT", generate_uid()
    columns, rows, depth = volume.shape
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, depth
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [float(v) for v in (*(lps[:3, 0] / spacing[0]), *(lps[:3, 1] / spacing[1]))]
    measures.PixelSpacing = [float(spacing[1]), float(spacing[0])]
    measures.SliceThickness = float(spacing[2])
    shared = Dataset()
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame, frames = [], []
    for k in order:
        slope, intercept = (2.0, -1024.0) if k % 2 else (1.0, 0.0)  # rescale differs frame to frame
        position, transform, group = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in lps[:3, :] @ [0, 0, k, 1]]
        transform.RescaleSlope, transform.RescaleIntercept = slope, intercept
        group.PlanePositionSequence = [position]
        group.PixelValueTransformationSequence = [transform]
        per_frame.append(group)
        frames.append(((volume.array[:, :, k].T - intercept) / slope).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_ct_is_read_frame_by_frame(tmp_path):
    volume = make_volume(4)
    volume = volume.with_array(np.rint(volume.array / 2) * 2)  # even values survive slope 2
    order = np.random.default_rng(0).permutation(SHAPE[2])
    write_enhanced_ct(tmp_path / "enhanced.dcm", volume, order)
    back = read_volume(tmp_path / "enhanced.dcm")
    assert_same(volume, back)
    assert back.modality == "ct" and back.metadata["rescale"] == {"per_slice": True}


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_series_decode_identically(tmp_path, syntax):
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder for {syntax.name}")
    volume = make_volume(5, shape=(40, 36, 3))  # OpenJPEG needs >= 32 px per side for its default levels
    folder = write_dicom_series(volume, tmp_path / "series")
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
    back = read_volume(folder)
    assert_same(volume, back)
    assert back.metadata["transfer_syntax"] == [syntax.name]


def test_unsupported_transfer_syntax_is_named(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # video: no image decoder exists for it
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(BadInputError, match=r"unsupported transfer syntax MPEG2 .*1\.2\.840\.10008\.1\.2\.4\.100"):
        read_volume(tmp_path / "video.dcm")


PYDICOM_FILES = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_padded.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_truncated.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000.dcm", "JPGExtended.dcm",
    "JPEG-lossy.dcm", "SC_rgb_jpeg.dcm", "SC_rgb_rle.dcm", "examples_overlay.dcm", "image_dfl.dcm",
    "liver_1frame.dcm", "rtdose.dcm", "rtdose_rle.dcm", "rtstruct.dcm", "rtplan.dcm", "test-SR.dcm",
    "reportsi.dcm", "waveform_ecg.dcm", "badVR.dcm", "no_meta.dcm", "meta_missing_tsyntax.dcm",
    "UN_sequence.dcm", "DICOMDIR",
]


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_pydicom_files_read_or_refuse_cleanly(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not shipped with this pydicom")
    try:
        volume = read_volume(path)
    except BadInputError as error:
        assert str(path) in str(error) and "\n" not in str(error)
        return
    assert volume.array.dtype == np.float32 and np.isfinite(volume.array).all()
    assert volume.array.ndim == 3 and min(volume.spacing) > 0


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_padded.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_pydicom_mr_variants_match_uncompressed(name):
    reference = read_volume(get_testdata_file("MR_small.dcm"))
    assert_same(reference, read_volume(get_testdata_file(name)))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "693_J2KI.dcm", "rtdose.dcm"])
def test_pydicom_files_agree_with_simpleitk(name):
    ours = read_volume(get_testdata_file(name))
    reference = read_with_simpleitk(get_testdata_file(name))
    np.testing.assert_allclose(ours.affine[:3, :2], reference.affine[:3, :2], atol=1e-4)  # in-plane axes
    np.testing.assert_allclose(ours.affine[:3, 3], reference.affine[:3, 3], atol=1e-4)
    if name == "rtdose.dcm":  # GDCM ignores DoseGridScaling; compare up to that factor and the k axis too
        scaling = float(pydicom.dcmread(get_testdata_file(name)).DoseGridScaling)
        np.testing.assert_allclose(ours.array, reference.array * scaling, rtol=1e-5)
        np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-4)
    else:
        np.testing.assert_array_equal(ours.array, reference.array)
    assert ours.modality == {"CT_small.dcm": "ct", "693_J2KI.dcm": "ct", "MR_small.dcm": "mri"}.get(name, "unknown")


def test_pydicom_dicomdir_tree_every_series_reads_or_refuses():
    """Real GE/Philips study folders: the scouts (CT "Scout" with ImageType LOCALIZER, MR "FAST LOCALIZER",
    the 3-plane "T/S/C RF FAST PILOT") are set aside with notes; every remaining series reads or is refused."""
    root = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
    notes: list[str] = []
    cases = discover_cases([root], notes)
    assert len(cases) == 2
    for case in cases:
        try:
            volume = read_case(case)
            assert volume.shape[2] > 1
        except BadInputError as error:
            assert case.case_id in str(error)
    assert any("CT2N: localizer (ImageType LOCALIZER, 1 slice(s))" in note for note in notes)
    assert any("MR1: localizer (scout-like series description" in note for note in notes)
    assert any("MR2: localizer-like (3 planes of at most 5 slices in one series)" in note for note in notes)
    assert all("\n" not in note and note.startswith("skipped ") for note in notes)


def test_series_128_cubed_reads_fast(tmp_path):
    rng = np.random.default_rng(0)
    volume = Volume(rng.integers(-1000, 1500, (128, 128, 128)).astype(np.float32), np.diag([0.9, 0.9, 1.5, 1.0]))
    folder = write_dicom_series(volume, tmp_path / "big")
    start = time.perf_counter()
    back = read_volume(folder)
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(back.array, volume.array)
    assert elapsed < 2.0, f"reading 128 slices of 128x128 took {elapsed:.2f} s"


def test_jpeg_baseline_slices_decode_with_pillow(tmp_path):
    """8-bit JPEG Baseline (Pillow) series: lossy, so values match within a few grey levels."""
    from io import BytesIO

    from PIL import Image
    from pydicom.encaps import encapsulate

    rng = np.random.default_rng(6)
    smooth = np.clip(np.cumsum(rng.normal(0, 3, (3, 24, 32)), axis=2) + 128, 0, 255).astype(np.uint8)
    for k, plane in enumerate(smooth):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        buffer = BytesIO()
        Image.fromarray(plane).save(buffer, format="JPEG", quality=100)
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
        ds.ImagePositionPatient = [0, 0, 2.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / f"{k}.dcm")
    back = read_volume(tmp_path)
    assert back.metadata["transfer_syntax"] == ["JPEG Baseline (Process 1)"]
    assert np.abs(back.array - smooth.transpose(2, 1, 0)).max() <= 4
