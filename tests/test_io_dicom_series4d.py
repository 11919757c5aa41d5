"""4D series (named, one volume selectable) and localizers (set aside with a note) in DICOM folders."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from meddiff_cli.errors import BadInputError
from meddiff_cli.io import discover_cases, read_case, read_volume, write_dicom_series
from tests.dicom_builders import oblique_volume, write_4d_series, write_localizer


def assert_same(expected, actual):
    np.testing.assert_array_equal(actual.array, expected.array)
    assert np.abs(actual.world_corners() - expected.world_corners()).max() <= 1e-3


@pytest.fixture()
def volumes():
    return [oblique_volume(20 + v, shape=(8, 6, 4)) for v in range(3)]


def test_time_series_is_named_and_each_volume_reads_exactly(tmp_path, volumes):
    folder = write_4d_series(volumes, tmp_path / "fmri")
    with pytest.raises(BadInputError, match=r"is 4D, not one volume: time series \(fMRI-like\): 4 positions x 3 volumes, "
                                             r"told apart by AcquisitionNumber; choose one with --volume-index K "
                                             r"\(volume_index=K in Python\), K = 0\.\.2 in ascending AcquisitionNumber"):
        read_volume(folder)
    for v, volume in enumerate(volumes):
        back = read_volume(folder, volume_index=v)
        assert_same(volume, back)
        assert back.metadata["selected_volume"] == {
            "index": v, "volumes": 3, "positions": 4, "kind": "time series (fMRI-like)",
            "told_apart_by": ["AcquisitionNumber"], "value": [float(v + 1)]}


def test_multi_echo_names_the_echo_tags(tmp_path, volumes):
    folder = write_4d_series(volumes[:2], tmp_path / "me", tag="EchoNumbers")
    for path in folder.iterdir():  # TE follows the echo number, as scanners write it
        ds = pydicom.dcmread(path)
        ds.EchoTime = 10.0 * int(ds.EchoNumbers)
        ds.save_as(path)
    with pytest.raises(BadInputError, match=r"multi-echo series: 4 positions x 2 volumes, told apart by EchoNumbers "
                                             r"\(also varying: EchoTime\)"):
        read_volume(folder)
    assert_same(volumes[1], read_volume(folder, volume_index=1))


def test_volume_index_is_ignored_by_a_3d_series(tmp_path, volumes):
    folder = write_dicom_series(volumes[0], tmp_path / "plain", modality="mri")
    back = read_volume(folder, volume_index=2)
    assert_same(volumes[0], back)
    assert "selected_volume" not in back.metadata


def test_incomplete_volume_is_refused(tmp_path, volumes):
    folder = write_4d_series(volumes, tmp_path / "fmri")
    last = [p for p in folder.iterdir() if int(pydicom.dcmread(p).AcquisitionNumber) == 3]
    last[0].unlink()
    assert_same(volumes[0], read_volume(folder, volume_index=0))
    with pytest.raises(BadInputError, match=r"volume 2 is incomplete \(3 of 4 slice positions"):
        read_volume(folder, volume_index=2)


def test_duplicates_no_tag_explains_are_refused(tmp_path, volumes):
    folder = write_dicom_series(volumes[0], tmp_path / "dup", modality="mri")
    copy = folder / "copy.dcm"
    shutil.copy(sorted(folder.iterdir())[1], copy)
    ds = pydicom.dcmread(copy)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(copy)
    with pytest.raises(BadInputError, match=r"1 duplicated slice position\(s\) .* no header tag tells volumes apart"):
        read_volume(folder, volume_index=0)


def test_localizer_beside_a_series_is_skipped_with_a_note(tmp_path, volumes):
    study = tmp_path / "study"
    write_dicom_series(volumes[0], study / "t1", modality="mri")
    write_localizer(study / "loc")
    back = read_volume(study)  # used to fail with "4 DICOM series found"
    assert_same(volumes[0], back)
    assert back.metadata["skipped_files"] == {"localizer (ImageType LOCALIZER, 1 slice(s))": 3}
    notes: list[str] = []
    assert len(discover_cases([study], notes)) == 1
    assert notes == [f"skipped 3 DICOM file(s) in {study / 'loc'}: localizer (ImageType LOCALIZER, 1 slice(s))"]
    with pytest.raises(BadInputError, match=r"localizer \(ImageType LOCALIZER"):
        read_volume(study / "loc" / "loc0")  # asked for by name: refused with the reason


@pytest.mark.parametrize(("description", "slices", "skipped"), [
    ("localizer", 3, True), ("AAHead_Scout", 2, True), ("t1_localizer_like_but_large", 12, False), ("t2_tse", 3, False),
])
def test_scout_descriptions_only_skip_tiny_series(tmp_path, description, slices, skipped):
    folder = write_dicom_series(oblique_volume(5, shape=(6, 6, slices)), tmp_path / "s", modality="mri")
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        ds.save_as(path)
    write_dicom_series(oblique_volume(6, shape=(6, 6, 2)), tmp_path / "other", modality="mri")  # 2 slices, kept
    notes: list[str] = []
    cases = discover_cases([tmp_path], notes)
    assert (len(cases), len(notes)) == ((1, 1) if skipped else (2, 0))
    if skipped:
        assert notes[0].endswith(f"localizer (scout-like series description, {slices} slice(s))")
    assert sorted(read_case(case).shape[2] for case in cases) == ([2] if skipped else sorted([2, slices]))


def test_enhanced_multiframe_4d_by_temporal_position_index(tmp_path):
    """One Enhanced CT file holding two phases (FrameContentSequence.TemporalPositionIndex 1, 2), frames shuffled."""
    from pydicom.dataset import Dataset

    from meddiff_cli.io import Volume
    from tests.test_io_dicom import write_enhanced_ct

    phases = [oblique_volume(40 + p, shape=(6, 5, 4)) for p in range(2)]
    phases = [Volume(np.rint(v.array / 2) * 2, v.affine, "ct") for v in phases]  # survive write_enhanced_ct's slope 2
    order = np.arange(4)
    files = []
    for p, phase in enumerate(phases):
        write_enhanced_ct(tmp_path / f"p{p}.dcm", phase, order)
        files.append(pydicom.dcmread(tmp_path / f"p{p}.dcm"))
    merged = files[0]
    frames = []
    for p, ds in enumerate(files):
        for group in ds.PerFrameFunctionalGroupsSequence:
            content = Dataset()
            content.TemporalPositionIndex = p + 1
            group.FrameContentSequence = [content]
            frames.append(group)
    shuffle = np.random.default_rng(0).permutation(8)
    pixels = np.concatenate([ds.pixel_array for ds in files])[shuffle]
    merged.PerFrameFunctionalGroupsSequence = [frames[i] for i in shuffle]
    merged.NumberOfFrames, merged.PixelData = 8, pixels.tobytes()
    merged.save_as(tmp_path / "cardiac.dcm")
    with pytest.raises(BadInputError, match=r"time series \(fMRI-like\): 4 positions x 2 volumes, told apart by "
                                             r"TemporalPositionIndex"):
        read_volume(tmp_path / "cardiac.dcm")
    for p, phase in enumerate(phases):
        assert_same(phase, read_volume(tmp_path / "cardiac.dcm", volume_index=p))
