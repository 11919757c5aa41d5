"""Bad inputs give one-line BadInputError/InputNotFoundError naming the file, never another exception."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from meddiff_cli.errors import BadInputError, ExitCode, InputNotFoundError, MeddiffError
from meddiff_cli.io import (
    CaseSource,
    Volume,
    discover_cases,
    read_case,
    read_volume,
    write_dicom_series,
    write_itk,
    write_nifti,
)


def small_volume(fill: float | None = None) -> Volume:
    array = np.arange(16 * 12 * 10, dtype=np.float32).reshape(16, 12, 10)
    if fill is not None:
        array[3, 4, 5] = fill
    return Volume(array, np.diag([0.8, 0.9, 2.0, 1.0]), "ct")


def assert_one_line(error: MeddiffError, path) -> None:
    text = str(error)
    assert str(path) in text and "\n" not in text and "Traceback" not in text


@pytest.mark.parametrize("name", ["empty.nii.gz", "empty.nii", "empty.dcm", "empty", "empty.mha", "empty.nrrd"])
def test_zero_byte_files(tmp_path, name):
    path = tmp_path / name
    path.touch()
    with pytest.raises(BadInputError) as error:
        read_volume(path)
    assert_one_line(error.value, path)


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"])
def test_truncated_nifti(tmp_path, name):
    path = write_nifti(small_volume(), tmp_path / name)
    raw = path.read_bytes() if name.endswith(".nii") else gzip.decompress(path.read_bytes())
    cut = raw[: len(raw) // 2]
    path.write_bytes(cut if name.endswith(".nii") else gzip.compress(cut))
    with pytest.raises(BadInputError, match="truncated|unreadable") as error:
        read_volume(path)
    assert_one_line(error.value, path)


def test_random_bytes_named_dcm(tmp_path):
    rng = np.random.default_rng(0)
    plain, with_magic = tmp_path / "noise.dcm", tmp_path / "magic.dcm"
    plain.write_bytes(rng.bytes(4096))
    with_magic.write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(4096))
    for path in (plain, with_magic):
        with pytest.raises(BadInputError) as error:
            read_volume(path)
        assert_one_line(error.value, path)


def test_truncated_dicom_slice(tmp_path):
    folder = write_dicom_series(small_volume(), tmp_path / "series")
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(BadInputError) as error:
        read_volume(folder)
    assert_one_line(error.value, victim)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_non_finite_voxels(tmp_path, value, suffix):
    volume = small_volume(value)
    path = tmp_path / f"bad{suffix}"
    write_nifti(volume, path) if suffix == ".nii.gz" else write_itk(volume, path)
    with pytest.raises(BadInputError, match="1 voxel.* NaN or infinite") as error:
        read_volume(path)
    assert_one_line(error.value, path)


def test_size_limit_applies_to_every_format(tmp_path, monkeypatch):
    volume = small_volume()
    paths = [write_nifti(volume, tmp_path / "a.nii.gz"), write_itk(volume, tmp_path / "a.mha"),
             write_dicom_series(volume, tmp_path / "dicom")]
    for path in paths:
        read_volume(path)
    monkeypatch.setenv("MEDDIFF_MAX_VOXELS", str(16 * 12 * 10 - 1))
    for path in paths:
        with pytest.raises(BadInputError, match="1,920 voxels, more than the limit 1,919") as error:
            read_volume(path)
        assert error.value.exit_code == ExitCode.BAD_INPUT


def test_huge_header_refused_before_allocation(tmp_path):
    """A 200-byte file claiming 2**33 voxels must not reach an allocation (MemoryError / OOM)."""
    image = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.float32), np.eye(4))
    image.header.set_data_shape((2048, 2048, 2048))
    path = tmp_path / "huge.nii"
    header = image.header.binaryblock + b"\0" * 4
    path.write_bytes(header + b"\0" * 64)
    with pytest.raises(BadInputError, match="8,589,934,592 voxels"):
        read_volume(path)


def test_not_a_volume_named_explicitly(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(BadInputError, match="not a supported volume") as alone:  # alone: refused at once
        discover_cases([path])
    assert_one_line(alone.value, path)
    other = tmp_path / "other.txt"
    other.write_text("world")
    cases = discover_cases([path, other])  # with other inputs: a case that fails with its reason when read
    assert cases[0] == CaseSource("notes", path, "unknown")
    with pytest.raises(BadInputError, match="not a supported volume") as error:
        read_case(cases[0])
    assert_one_line(error.value, path)


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputNotFoundError):
        read_volume(tmp_path / "nope.nii.gz")
    with pytest.raises(InputNotFoundError):
        discover_cases([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("nothing here")
    (tmp_path / "empty" / "meta.json").write_text("{}")
    with pytest.raises(InputNotFoundError, match="no volumes found"):
        discover_cases([tmp_path / "empty"])
    with pytest.raises(InputNotFoundError, match="no DICOM image series found"):
        read_volume(tmp_path / "empty")


def test_discovery_mixed_formats_recursive_with_symlink_loop(tmp_path):
    volume = small_volume()
    root = tmp_path / "inputs"
    write_nifti(volume, root / "a" / "case1.nii.gz")
    write_itk(volume, root / "b" / "case2.nrrd")
    write_itk(volume, root / "b" / "case3.mhd")
    write_dicom_series(volume, root / "c" / "deep" / "series")
    (root / "c" / "README.txt").write_text("readme")
    os.symlink(root, root / "a" / "loop")  # would recurse forever without loop detection
    cases = discover_cases([root])
    formats = {case.case_id: case.format for case in cases}
    dicom_ids = [case_id for case_id in formats if case_id.startswith("series-")]
    assert len(dicom_ids) == 1
    assert formats == {"case1": "nifti", "case2": "nrrd", "case3": "mhd", dicom_ids[0]: "dicom"}
    for case in cases:
        np.testing.assert_array_equal(read_case(case).array, volume.array)


def test_phantom_layout_only_images_are_cases(tmp_path):
    volume = small_volume()
    write_nifti(volume, tmp_path / "phantom" / "images" / "ct_000.nii.gz")
    write_nifti(volume, tmp_path / "phantom" / "labels" / "ct_000.nii.gz", dtype="uint8")
    cases = discover_cases([tmp_path / "phantom"])
    assert [(c.case_id, c.path.parent.name) for c in cases] == [("ct_000", "images")]


def test_duplicate_case_ids_are_refused(tmp_path):
    volume = small_volume()
    write_nifti(volume, tmp_path / "x" / "scan.nii.gz")
    write_nifti(volume, tmp_path / "y" / "scan.nii")
    with pytest.raises(BadInputError, match="same case id 'scan'"):
        discover_cases([tmp_path / "x", tmp_path / "y"])


def test_non_volume_nifti_shape(tmp_path):
    path = tmp_path / "timeseries.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), dtype=np.float32), np.eye(4)), str(path))
    with pytest.raises(BadInputError, match="expected a 3D volume") as error:
        read_volume(path)
    assert_one_line(error.value, path)


def test_dicom_frame_count_bomb_is_refused_from_the_header(tmp_path):
    import pydicom

    folder = write_dicom_series(small_volume(), tmp_path / "series")
    path = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 10**9  # 192 billion voxels claimed, 384 bytes present
    ds.GridFrameOffsetVector = [0.0, 1.0]
    ds.save_as(path)
    with pytest.raises(BadInputError, match="more than the limit") as error:
        read_volume(path)
    assert_one_line(error.value, path)
