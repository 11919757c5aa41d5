"""Synthetic label maps as DICOM SEG: segments, geometry round trip through the SEG's own positions,
references to the synthetic series, synthetic markers, refusals, and dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from meddiff_cli.io import LPS_TO_RAS, Volume, write_dicom_seg, write_dicom_series

highdicom = pytest.importorskip("highdicom")

SHAPE = (16, 12, 10)  # i, j, k: all different, so a swapped or transposed axis cannot fit
SPACING = (0.7, 1.3, 2.5)
CT_NAMES = {0: "background", 1: "lungs", 2: "heart", 3: "bone", 4: "nodules", 5: "great_vessels"}
MRI_NAMES = {1: "csf", 2: "gm", 3: "wm"}


def oblique_affine() -> np.ndarray:
    """Rotated about all three axes, anisotropic, off-origin: any axis/sign/order mix-up shows."""
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20.0, -35.0, 50.0], degrees=True).as_matrix() * np.array(SPACING)
    affine[:3, 3] = [10.5, -20.25, 33.0]
    return affine


def blobs(values: tuple[int, ...]) -> np.ndarray:
    """Asymmetric boxes, one per value, away from any symmetry of the grid; one voxel in a corner."""
    label = np.zeros(SHAPE, np.uint8)
    boxes = [(slice(1, 5), slice(0, 3), slice(0, 2)), (slice(9, 15), slice(5, 11), slice(4, 9)),
             (slice(6, 8), slice(2, 9), slice(1, 3)), (slice(0, 3), slice(8, 12), slice(6, 10))]
    for value, box in zip(values, boxes):
        label[box] = value
    label[15, 0, 9] = values[0]
    return label


def write_pair(tmp_path, modality: str, names: dict[int, str], values: tuple[int, ...], synthetic: bool = True):
    rng = np.random.default_rng(1)
    image = Volume(rng.random(SHAPE).astype(np.float32) * 300, oblique_affine(), modality)
    series = write_dicom_series(image, tmp_path / "series", modality=modality, model_name="tiny", synthetic=synthetic)
    label = Volume(blobs(values), oblique_affine(), modality)
    return series, label


def decode_by_geometry(seg, affine: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """Label voxels from the SEG's own geometry: every set pixel's patient position -> voxel (i, j, k)."""
    value_of = {name: value for value, name in names.items()}
    values = {item.SegmentNumber: value_of[item.SegmentLabel] for item in seg.SegmentSequence}
    shared = seg.SharedFunctionalGroupsSequence[0]
    row_dir, col_dir = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float).reshape(2, 3)
    between_rows, between_columns = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    to_voxel = np.linalg.inv(affine) @ LPS_TO_RAS
    out = np.zeros(SHAPE, np.uint8)
    pixels = seg.pixel_array
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        origin = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        rows, cols = np.nonzero(frame)
        world = origin + np.outer(cols * between_columns, row_dir) + np.outer(rows * between_rows, col_dir)
        ijk = (to_voxel @ np.c_[world, np.ones(len(world))].T)[:3]
        assert np.abs(ijk - np.rint(ijk)).max() < 1e-3
        i, j, k = np.rint(ijk).astype(int)
        assert not out[i, j, k].any(), "two segments claim one voxel"
        out[i, j, k] = values[number]
    return out


@pytest.mark.parametrize(("modality", "names", "values"),
                         [("ct", CT_NAMES, (1, 2, 4, 5)), ("mri", MRI_NAMES, (3, 1, 2, 3))])
def test_seg_round_trips_labels_geometry_references_and_markers(tmp_path, modality, names, values):
    series, label = write_pair(tmp_path, modality, names, values)
    out = write_dicom_seg(label, names, series, tmp_path / "labels.dcm", "tiny")
    assert out == tmp_path / "labels.dcm" and sorted(p.name for p in tmp_path.iterdir()) == ["labels.dcm", "series"]
    seg = highdicom.seg.segread(out)
    sources = sorted((pydicom.dcmread(p) for p in series.iterdir()), key=lambda ds: int(ds.InstanceNumber))

    named = {v: n for v, n in names.items() if v}
    assert [item.SegmentLabel for item in seg.SegmentSequence] == [named[v] for v in sorted(named)]  # absent too
    assert seg.SegmentationType == "BINARY"
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "meddiff tiny" and algorithm.AlgorithmFamilyCodeSequence[0].CodeValue
    types = {item.SegmentLabel: item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for item in seg.SegmentSequence}
    assert types == ({"lungs": "Lung", "heart": "Heart", "bone": "Bone", "nodules": "Nodule",
                      "great_vessels": "Blood Vessel"} if modality == "ct"
                     else {"csf": "Cerebrospinal Fluid", "gm": "Gray Matter", "wm": "White Matter"})

    # Geometry: the SEG's own positions put every voxel back where it was (fails for any transpose or flip).
    np.testing.assert_array_equal(decode_by_geometry(seg, label.affine, names), label.array)
    # Through the source images: frames for slice k (by SOP Instance UID), rows x columns = label[:, :, k].T.
    uids = [ds.SOPInstanceUID for ds in sources]
    by_source = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    segment_value = np.zeros(len(named) + 1, np.uint8)
    segment_value[1:] = sorted(named)
    np.testing.assert_array_equal(segment_value[np.transpose(by_source, (2, 1, 0))], label.array)
    for group in seg.PerFrameFunctionalGroupsSequence:
        source_uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = group.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == [float(v) for v in sources[uids.index(source_uid)].ImagePositionPatient]

    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence) == sorted(uids)
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID

    assert seg[0x0008001C].value == "YES"  # Synthetic Data
    assert seg.SeriesDescription.startswith("SYNTHETIC") and "tiny" in seg.SeriesDescription
    assert seg.Manufacturer == "SYNTHETIC (meddiff)" and "Synthetic" in seg.ImageComments
    assert seg.ContentLabel == "SYNTHETIC_LABELS" and seg.BurnedInAnnotation == "NO"
    for keyword in ("PatientName", "PatientID", "PatientIdentityRemoved", "StudyID", "AccessionNumber"):
        assert seg.data_element(keyword).value == sources[0].data_element(keyword).value, keyword
    assert str(seg.PatientName) == "ANONYMOUS^SYNTHETIC"


def test_empty_label_map_still_writes_every_segment(tmp_path):
    series, label = write_pair(tmp_path, "mri", MRI_NAMES, (1, 2, 3, 1))
    empty = Volume(np.zeros(SHAPE, np.uint8), label.affine, "mri")
    seg = highdicom.seg.segread(write_dicom_seg(empty, MRI_NAMES, series, tmp_path / "empty.dcm", "tiny"))
    assert seg.number_of_segments == 3 and not seg.pixel_array.any()


def test_refuses_other_grid_unnamed_values_and_non_synthetic_series(tmp_path):
    series, label = write_pair(tmp_path, "ct", CT_NAMES, (1, 2, 3, 4))
    flipped = oblique_affine()
    flipped[:3, 0] *= -1
    flipped[:3, 3] -= flipped[:3, 0] * (SHAPE[0] - 1)  # the same box of world space, i reversed
    cases = [
        (Volume(label.array[::-1].copy(), flipped), CT_NAMES, "orientation"),
        (Volume(label.array[:, :, :-1].copy(), label.affine), CT_NAMES, "grid"),
        (Volume(label.array, label.affine @ np.diag([1, 1, 1.01, 1])), CT_NAMES, "positions"),
        (label, {1: "lungs", 2: "heart"}, "without a name"),
        (Volume(label.array.astype(np.float32), label.affine), CT_NAMES, "integers"),
    ]
    for volume, names, message in cases:
        with pytest.raises(ValueError, match=message):
            write_dicom_seg(volume, names, series, tmp_path / "x.dcm", "tiny")
    derived, _ = write_pair(tmp_path / "derived", "ct", CT_NAMES, (1, 2, 3, 4), synthetic=False)
    with pytest.raises(ValueError, match="not a synthetic series"):
        write_dicom_seg(label, CT_NAMES, derived, tmp_path / "x.dcm", "tiny")
    assert not (tmp_path / "x.dcm").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_importing_io_does_not_import_highdicom():
    done = subprocess.run([sys.executable, "-c", "import sys, meddiff_cli.io; print('highdicom' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")
@pytest.mark.parametrize(("modality", "names"), [("ct", CT_NAMES), ("mri", MRI_NAMES)])
def test_seg_passes_dciodvfy(tmp_path, modality, names):
    series, label = write_pair(tmp_path, modality, names, (1, 2, 3, 1))
    out = write_dicom_seg(label, names, series, tmp_path / "labels.dcm", "tiny")
    result = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    print(report)
    assert "Segmentation" in report
    errors = [line for line in report.splitlines() if "Error" in line]
    # dciodvfy's dictionary (dicom3tools 2022) predates Synthetic Data (0008,001C): its complaint is the one allowed,
    # as for the image series (tests/test_io_roundtrip.py).
    assert [e for e in errors if "0x0008,0x001c" not in e] == [], report
