"""Writing a synthetic label map as a DICOM Segmentation (SEG) beside the synthetic image series it labels.

The SEG is BINARY, one segment per named non-background value: the LABELMAP type (Supplement 243, 2024) is
unknown to dicom3tools' validator and to most viewers. Every named value gets a segment, present in this volume
or not (an absent one has no frames), so segment *n* is the same structure in every SEG a model writes.

Frames mirror :func:`~meddiff_cli.io.dicom.writer.write_dicom_series` exactly: frame k is slice ``k`` of the
image series (InstanceNumber ``k + 1``) and holds ``label[:, :, k].T`` (rows = j, columns = i), so the label's
voxel grid must be the image's; :func:`write_dicom_seg` checks it against the written slices' positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from meddiff_cli import __version__
from meddiff_cli.fsutil import atomic_path
from meddiff_cli.io.volume import LPS_TO_RAS, Volume

SYNTHETIC_DATA = 0x0008001C
# Known label names -> (category, type). SNOMED CT codes from DICOM CIDs 7150/7151; names not listed fall back to
# the generic Tissue/Tissue that viewers use for unnamed structures (the name itself stays in SegmentLabel).
_ANATOMY = codes.cid7150.AnatomicalStructure
_TISSUE = codes.cid7150.Tissue
PROPERTY_CODES = {
    "lung": (_ANATOMY, codes.SCT.Lung),
    "lungs": (_ANATOMY, codes.SCT.Lung),
    "heart": (_ANATOMY, codes.SCT.Heart),
    "bone": (_TISSUE, codes.SCT.Bone),
    "nodule": (codes.cid7150.MorphologicallyAbnormalStructure, codes.SCT.Nodule),
    "nodules": (codes.cid7150.MorphologicallyAbnormalStructure, codes.SCT.Nodule),
    "great_vessels": (_ANATOMY, codes.SCT.BloodVessel),
    "vessels": (_ANATOMY, codes.SCT.BloodVessel),
    "csf": (_ANATOMY, codes.SCT.CerebrospinalFluid),
    "gm": (_ANATOMY, codes.SCT.GrayMatter),
    "gray_matter": (_ANATOMY, codes.SCT.GrayMatter),
    "grey_matter": (_ANATOMY, codes.SCT.GrayMatter),
    "wm": (_ANATOMY, codes.SCT.WhiteMatter),
    "white_matter": (_ANATOMY, codes.SCT.WhiteMatter),
}
FALLBACK_CODES = (_TISSUE, codes.SCT.Tissue)
POSITION_TOLERANCE_MM = 1e-3  # the image series stores positions with 10 significant digits
ORIENTATION_TOLERANCE = 1e-4


def property_codes(name: str) -> tuple[Code, Code]:
    """(SegmentedPropertyCategory, SegmentedPropertyType) for a label name; Tissue/Tissue when unknown."""
    return PROPERTY_CODES.get(name.strip().lower().replace(" ", "_").replace("-", "_"), FALLBACK_CODES)


def write_dicom_seg(label: Volume, names: dict[int, str], series_dir: str | Path, out_file: str | Path,
                    model_name: str) -> Path:
    """Write ``label`` (integer values, the image's grid) as a BINARY DICOM SEG of the series in ``series_dir``.

    ``names`` maps label values to names (0, background, is never a segment); a value in ``label`` without a
    name is a ValueError. The series must be one meddiff wrote as synthetic (Synthetic Data = YES): its
    patient and study modules (placeholders) are the only ones copied, and the SEG is marked synthetic the
    same way (Synthetic Data, Manufacturer, SeriesDescription and ImageComments saying so). Atomic.
    """
    import highdicom as hd  # heavy (and only needed here): not imported when the CLI starts

    sources = _read_series(Path(series_dir))
    first = sources[0]
    if SYNTHETIC_DATA not in first or str(first[SYNTHETIC_DATA].value).upper() != "YES":
        raise ValueError(f"{series_dir} is not a synthetic series (Synthetic Data is not YES); "
                         "meddiff writes label maps only beside its synthetic series")
    _check_grid(label, sources)
    values = sorted(value for value in names if value != 0)
    if not values or values[0] < 0 or values[-1] > 255:
        raise ValueError(f"label names need values 1..255 besides background, got {sorted(names)}")
    array = np.asarray(label.array)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"a label map holds integers, got {array.dtype}")
    unnamed = sorted(int(v) for v in np.unique(array) if v != 0 and int(v) not in names)
    if unnamed:
        raise ValueError(f"label map holds values without a name: {unnamed}")
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[values] = np.arange(1, len(values) + 1)
    frames = np.ascontiguousarray(np.transpose(lookup[array], (2, 1, 0)))  # (k, j, i): frame k = slice k, .T
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"meddiff {model_name}"[:64], family=codes.cid7162.ArtificialIntelligence, version=__version__,
        source="meddiff",
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=names[value][:64],
            segmented_property_category=property_codes(names[value])[0],
            segmented_property_type=property_codes(names[value])[1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        )
        for number, value in enumerate(values, start=1)
    ]
    modality = "MR" if first.Modality == "MR" else "CT"
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(),
        series_number=int(first.get("SeriesNumber", 1) or 1) + 1, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=first.Manufacturer, manufacturer_model_name=first.ManufacturerModelName,
        software_versions=f"meddiff {__version__}", device_serial_number="SYNTHETIC",
        content_label="SYNTHETIC_LABELS",
        content_description=f"Synthetic label map generated by model {model_name} by meddiff"[:64],
    )
    seg.add_new(SYNTHETIC_DATA, "CS", "YES")
    seg.SeriesDescription = f"SYNTHETIC labels {modality} by model {model_name} (meddiff)"[:64]
    seg.ImageComments = f"Synthetic label map generated by model {model_name} by meddiff; not a real segmentation"
    seg.BurnedInAnnotation = "NO"
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "StudyDescription"):
        if keyword in first:
            setattr(seg, keyword, first.data_element(keyword).value)
    with atomic_path(out_file) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(out_file)


def _read_series(series_dir: Path) -> list[pydicom.Dataset]:
    """The series' slices without pixel data, in InstanceNumber order (the writer's slice order k)."""
    files = sorted(path for path in series_dir.iterdir() if path.is_file() and not path.name.startswith("."))
    if not files:
        raise ValueError(f"{series_dir} holds no DICOM files")
    sources = sorted((pydicom.dcmread(path, stop_before_pixels=True) for path in files),
                     key=lambda ds: int(ds.InstanceNumber))
    if len({ds.SeriesInstanceUID for ds in sources}) != 1:
        raise ValueError(f"{series_dir} holds more than one series")
    return sources


def _check_grid(label: Volume, sources: list[pydicom.Dataset]) -> None:
    """Refuse a label whose voxel grid is not the written series' grid (shape, orientation, slice positions)."""
    columns, rows, depth = label.shape
    first = sources[0]
    if (len(sources), int(first.Rows), int(first.Columns)) != (depth, rows, columns):
        raise ValueError(f"label grid {label.shape} does not match the series "
                         f"({int(first.Columns)} x {int(first.Rows)} x {len(sources)} slices)")
    affine = LPS_TO_RAS @ label.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    units = affine[:3, :3] / spacing
    if not np.allclose([float(v) for v in first.PixelSpacing], [spacing[1], spacing[0]], rtol=1e-6, atol=1e-6):
        raise ValueError("label voxel spacing does not match the series' PixelSpacing")
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    if np.abs(orientation - np.concatenate([units[:, 0], units[:, 1]])).max() > ORIENTATION_TOLERANCE:
        raise ValueError("label orientation does not match the series' ImageOrientationPatient")
    expected = (affine @ np.stack([np.zeros(depth), np.zeros(depth), np.arange(depth), np.ones(depth)]))[:3].T
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
    if np.abs(positions - expected).max() > POSITION_TOLERANCE_MM:
        raise ValueError("label slice positions do not match the series' ImagePositionPatient")
