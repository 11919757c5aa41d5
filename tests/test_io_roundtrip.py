"""Geometry round trips: NIfTI, ITK formats and DICOM series, checked against SimpleITK's own reading."""

from __future__ import annotations

import json
import shutil
import subprocess

import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy.spatial.transform import Rotation

from meddiff_cli.errors import OutputError
from meddiff_cli.io import (
    LPS_TO_RAS,
    Volume,
    read_volume,
    read_with_simpleitk,
    write_dicom_series,
    write_itk,
    write_nifti,
)

SHAPE = (16, 12, 10)
SPACING = (0.7, 1.3, 2.5)
TOLERANCE_MM = 0.01


def oblique_affine(flip_k: bool = False) -> np.ndarray:
    """Rotated about all three axes, anisotropic, off-origin: any axis/sign/order mix-up shows."""
    rotation = Rotation.from_euler("xyz", [20.0, -35.0, 50.0], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array(SPACING)
    if flip_k:
        affine[:3, 2] *= -1
    affine[:3, 3] = [10.5, -20.25, 33.0]
    return affine


def oblique_volume(modality: str = "ct", flip_k: bool = False, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 2000, SHAPE).astype(np.float32)  # every voxel different-ish: flips show
    return Volume(array, oblique_affine(flip_k), modality)


def assert_same_image(expected: Volume, actual: Volume, atol_value: float = 0.0) -> None:
    """Same voxels at the same world positions, even if the index axes are permuted or flipped."""
    to_expected = np.linalg.inv(expected.affine) @ actual.affine  # actual index -> expected index
    linear = to_expected[:3, :3]
    assert np.abs(linear - np.rint(linear)).max() < 1e-3, f"grids do not align:\n{to_expected}"
    assert np.abs(to_expected[:3, 3] - np.rint(to_expected[:3, 3])).max() < 1e-3
    index = np.indices(actual.shape).reshape(3, -1)
    mapped = np.rint(linear @ index + to_expected[:3, 3:4]).astype(int)
    assert sorted(actual.shape) == sorted(expected.shape)
    values = expected.array[tuple(mapped)]
    np.testing.assert_allclose(actual.array.reshape(-1), values, atol=atol_value, rtol=0)
    corners = expected.world_corners()
    for corner in actual.world_corners():
        assert np.linalg.norm(corners - corner, axis=1).min() <= TOLERANCE_MM


def assert_identical_geometry(expected: Volume, actual: Volume) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.array, expected.array)
    assert np.abs(actual.world_corners() - expected.world_corners()).max() <= TOLERANCE_MM


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_nifti_round_trip_oblique_matches_simpleitk(tmp_path, dtype):
    volume = oblique_volume()
    path = write_nifti(volume, tmp_path / "case.nii.gz", dtype=dtype)
    assert_identical_geometry(volume, read_volume(path))
    assert_identical_geometry(volume, read_with_simpleitk(path))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_round_trip_oblique_matches_simpleitk(tmp_path, suffix):
    volume = oblique_volume()
    path = write_itk(volume, tmp_path / f"case{suffix}")
    back = read_volume(path)
    assert_identical_geometry(volume, back)
    assert back.metadata["source_format"] == suffix.lstrip(".")
    assert_identical_geometry(volume, read_with_simpleitk(path))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".meddiff-tmp")]


def test_dicom_ct_round_trip_oblique_matches_simpleitk(tmp_path):
    volume = oblique_volume("ct")
    folder = write_dicom_series(volume, tmp_path / "series", modality="ct", model_name="tiny-test")
    assert len(list(folder.iterdir())) == SHAPE[2]
    back = read_volume(folder)
    assert_identical_geometry(volume, back)
    assert back.modality == "ct"
    assert back.metadata["slices"] == SHAPE[2] and back.metadata["warnings"] == []
    reference = read_with_simpleitk(folder)
    assert_identical_geometry(volume, reference)


def test_dicom_mri_float_values_survive_within_rescale_step(tmp_path):
    rng = np.random.default_rng(1)
    volume = Volume((rng.random(SHAPE) * 812.5 + 3.25).astype(np.float32), oblique_affine(), "mri")
    folder = write_dicom_series(volume, tmp_path / "mr", modality="mri")
    back = read_volume(folder)
    slope = back.metadata["rescale"]["slope"]
    assert back.modality == "mri"
    assert 0 < slope < 812.5 / 60000
    assert np.abs(back.array - volume.array).max() <= slope * 0.51 + 1e-4
    assert np.abs(back.world_corners() - volume.world_corners()).max() <= TOLERANCE_MM
    reference = read_with_simpleitk(folder)  # GDCM applies the same rescale
    np.testing.assert_allclose(reference.array, back.array, atol=1e-3)
    assert np.abs(reference.affine - back.affine).max() <= 1e-4


def test_dicom_integer_mri_is_lossless(tmp_path):
    rng = np.random.default_rng(2)
    volume = Volume(rng.integers(0, 4000, SHAPE).astype(np.float32), oblique_affine(), "mri")
    back = read_volume(write_dicom_series(volume, tmp_path / "mr", modality="mri"))
    assert_identical_geometry(volume, back)
    assert back.metadata["rescale"] == {"slope": 1.0, "intercept": 0.0}


@pytest.mark.parametrize(("modality", "dtype"), [("ct", "uint16"), ("ct", "int16"), ("mri", "int16"), ("mri", "uint16")])
def test_dicom_stored_dtype_keeps_values(tmp_path, modality, dtype):
    rng = np.random.default_rng(4)
    values = rng.integers(-1000, 3000, SHAPE) if modality == "ct" else rng.random(SHAPE) * 50 - 20
    volume = Volume(values.astype(np.float32), oblique_affine(), modality)
    folder = write_dicom_series(volume, tmp_path / "s", modality=modality, dtype=dtype)
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert ds.PixelRepresentation == (1 if dtype == "int16" else 0)
    back = read_volume(folder)
    step = back.metadata["rescale"]["slope"]
    assert np.abs(back.array - volume.array).max() <= (0 if modality == "ct" else step * 0.51 + 1e-5)
    np.testing.assert_allclose(read_with_simpleitk(folder).array, back.array, atol=1e-3)


def test_dicom_left_handed_affine_keeps_world_positions(tmp_path):
    """k running against the slice normal: the reader re-sorts slices, the image in the world is unchanged."""
    volume = oblique_volume(flip_k=True)
    folder = write_dicom_series(volume, tmp_path / "series", modality="ct")
    back = read_volume(folder)
    assert_same_image(volume, back)
    np.testing.assert_array_equal(back.array, volume.array[:, :, ::-1])
    assert_same_image(volume, read_with_simpleitk(folder))


def test_pixel_exact_orientation_from_handmade_dicom(tmp_path):
    """Independent of our writer: one bright pixel at row 2, column 5 of a hand-built slice pair."""
    row_spacing, column_spacing, origin = 0.5, 0.8, np.array([100.0, 50.0, -20.0])
    for k in range(2):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        pixels = np.zeros((6, 9), dtype=np.int16)  # Rows=6, Columns=9
        pixels[2, 5] = 1000 + k
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
        ds.PixelData = pixels.tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = 1, -24
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [row_spacing, column_spacing]
        ds.ImagePositionPatient = list(origin + [0, 0, 3.0 * k])
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(tmp_path / f"slice{k}.dcm")
    volume = read_volume(tmp_path)
    assert volume.shape == (9, 6, 2)  # i = column, j = row
    assert volume.array[5, 2, 1] == 1000 + 1 - 24
    assert volume.array[0, 0, 0] == -24
    lps = origin + np.array([5 * column_spacing, 2 * row_spacing, 3.0])
    expected_ras = (LPS_TO_RAS[:3, :3] @ lps)
    np.testing.assert_allclose(volume.affine @ [5, 2, 1, 1], [*expected_ras, 1], atol=1e-6)
    np.testing.assert_allclose(volume.spacing, (column_spacing, row_spacing, 3.0), atol=1e-6)
    reference = read_with_simpleitk(tmp_path)
    np.testing.assert_array_equal(reference.array, volume.array)
    np.testing.assert_allclose(reference.affine, volume.affine, atol=1e-6)


def test_written_dicom_is_marked_synthetic_and_free_of_input_identifiers(tmp_path):
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    volume = read_volume(get_testdata_file("CT_small.dcm"))
    folder = write_dicom_series(volume, tmp_path / "out", modality="ct", model_name="demo-model")
    files = sorted(folder.iterdir())
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:
        assert ds[0x0008, 0x001C].value == "YES"
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "SYNTHETIC" in ds.SeriesDescription.upper() and "demo-model" in ds.SeriesDescription
        assert "synthetic" in ds.ImageComments.lower() and "demo-model" in ds.ImageComments
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.StudyInstanceUID != source.StudyInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
    raw = b"".join(f.read_bytes() for f in files)
    for identifier in (str(source.PatientName), source.PatientID, source.StudyInstanceUID, source.SeriesInstanceUID,
                       source.FrameOfReferenceUID, source.SOPInstanceUID):
        assert identifier.encode() not in raw
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    again = pydicom.dcmread(sorted(write_dicom_series(volume, tmp_path / "again").iterdir())[0])
    assert again.SeriesInstanceUID != datasets[0].SeriesInstanceUID


def test_failed_dicom_write_leaves_previous_series_intact(tmp_path, monkeypatch):
    folder = write_dicom_series(oblique_volume(), tmp_path / "series")
    before = sorted(p.read_bytes() for p in folder.iterdir())
    calls = {"n": 0}
    original = pydicom.dataset.FileDataset.save_as

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    with pytest.raises(OutputError, match="exists"):  # an existing folder is refused unless replace=True
        write_dicom_series(oblique_volume(seed=5), tmp_path / "series")
    monkeypatch.setattr(pydicom.dataset.FileDataset, "save_as", failing_save)
    with pytest.raises(OSError):
        write_dicom_series(oblique_volume(seed=5), tmp_path / "series", replace=True)
    assert sorted(p.read_bytes() for p in folder.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["series"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")
@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_written_dicom_passes_dciodvfy(tmp_path, modality):
    rng = np.random.default_rng(3)
    array = rng.integers(-1000, 1500, SHAPE) if modality == "ct" else rng.random(SHAPE) * 300
    folder = write_dicom_series(Volume(array.astype(np.float32), oblique_affine(), modality), tmp_path / "s",
                                modality=modality, model_name="tiny")
    for path in sorted(folder.iterdir())[:2]:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        assert ("CTImage" if modality == "ct" else "MRImage") in report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        # dciodvfy's dictionary predates Synthetic Data (0008,001C): its complaint is the one allowed.
        assert [e for e in errors if "0x0008,0x001c" not in e] == [], report


# First two letters of Manufacturer that dcm2niix maps to a vendor (dcmStrManufacturer in its nii_dicom.cpp).
DCM2NIIX_VENDOR_PREFIXES = ("SI", "GE", "HI", "ME", "PH", "TO", "CA", "CP", "UI", "BR", "MR", "HY")


@pytest.mark.parametrize("synthetic", [True, False])
def test_dicom_tells_converters_the_truth(tmp_path, synthetic):
    """PatientPosition is set (HFS) and Manufacturer names meddiff without starting like a real vendor's name,
    which converters read as that vendor (dcm2niix turned "meddiff" into "Mediso")."""
    folder = write_dicom_series(Volume(np.zeros(SHAPE, np.float32), oblique_affine(), "ct"), tmp_path / "s",
                                model_name="tiny", synthetic=synthetic)
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert ds.PatientPosition == "HFS"
    assert "meddiff" in ds.Manufacturer and ds.Manufacturer[:2].upper() not in DCM2NIIX_VENDOR_PREFIXES
    assert ds.Manufacturer.startswith("SYNTHETIC" if synthetic else "DERIVED")
    assert ds.ManufacturerModelName == "meddiff tiny"
    if shutil.which("dcm2niix") is None:
        return
    done = subprocess.run(["dcm2niix", "-o", str(tmp_path), "-f", "converted", str(folder)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    sidecar = json.loads((tmp_path / "converted.json").read_text())
    assert sidecar.get("Manufacturer") in (None, "Unknown") and sidecar["PatientPosition"] == "HFS"
    assert "Patient Position" not in done.stdout + done.stderr


def test_synthetic_nifti_says_so_in_its_header(tiny_model, tmp_path, run_meddiff):
    """descrip / aux_file / intent_name mark sampled volumes and phantoms; real (preprocessed) data stays unmarked."""
    assert run_meddiff("sample", "--model", "tiny", "--modality", "ct", "--count", "1", "--steps", "2",
                       "--device", "cpu", "--out", tmp_path / "synth", "-q")[0] == 0
    assert run_meddiff("phantom", "--modality", "ct", "--count", "1", "--size", "16", "--out", tmp_path / "ph",
                       "-q")[0] == 0
    real = write_nifti(Volume(np.zeros(SHAPE, np.float32), oblique_affine(), "ct"), tmp_path / "real.nii.gz")
    for path, source in ((tmp_path / "synth" / "synth_ct_0000.nii.gz", "(model tiny)"),
                         (next((tmp_path / "ph" / "images").iterdir()), "(procedural phantom)")):
        header = nibabel.load(str(path)).header
        assert header["descrip"].item().decode() == f"meddiff synthetic {source}: not a real patient scan"
        assert header["aux_file"].item() == b"meddiff synthetic" and header["intent_name"].item() == b"synthetic"
    header = nibabel.load(str(real)).header
    assert header["descrip"].item() == header["aux_file"].item() == header["intent_name"].item() == b""
