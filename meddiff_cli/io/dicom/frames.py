"""One parsed DICOM file -> its 2D frames with LPS geometry (single-frame, enhanced, classic multi-frame, mosaic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from meddiff_cli.io.dicom.headers import (
    PIXEL_TAGS,
    NotAnImage,
    float_list,
    group_item,
    hashable,
    positive_float,
    private_value,
    sop_class,
)
from meddiff_cli.io.dicom.mosaic import SIEMENS_MR_CREATOR, MosaicError, MosaicLayout, is_mosaic, mosaic_geometry
from meddiff_cli.io.limits import MAX_VOXELS_ENV, max_voxels

CLASSIC_VOLUME_TAGS = (
    "AcquisitionNumber", "TemporalPositionIdentifier", "EchoNumbers", "EchoTime", "DiffusionBValue",
    "DiffusionGradientOrientation", "TriggerTime", "ImageType",
)
SIEMENS_VOLUME_TAGS = {"B_value (0019,100C)": 0x0C, "DiffusionGradientDirection (0019,100E)": 0x0E}
ENHANCED_VOLUME_TAGS = (  # (functional group sequence, attribute)
    ("FrameContentSequence", "FrameAcquisitionNumber"),
    ("FrameContentSequence", "TemporalPositionIndex"),
    ("MREchoSequence", "EffectiveEchoTime"),
    ("MRDiffusionSequence", "DiffusionBValue"),
    ("MRImageFrameTypeSequence", "FrameType"),
    ("CTImageFrameTypeSequence", "FrameType"),
    ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
)


@dataclass
class DicomFrame:
    """One 2D image with its geometry: a single-frame file, one frame of a multi-frame file or one mosaic tile.

    ``problem`` marks a frame that exists but must not be read (e.g. a mosaic whose tiles cannot be
    established): its series becomes a case that fails with that reason instead of being skipped.
    ``volume_tags`` holds the header values that tell the volumes of a 4D series apart.
    """

    path: Path
    frame_index: int | None  # frame of a multi-frame file, or tile of a mosaic
    series_uid: str
    rows: int
    columns: int
    orientation: np.ndarray  # 6 direction cosines, LPS
    position: np.ndarray  # LPS mm of the centre of the first transmitted pixel
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slope: float
    intercept: float
    slice_thickness: float | None
    spacing_between_slices: float | None
    mosaic: MosaicLayout | None = None
    problem: str | None = None
    volume_tags: dict[str, Any] = field(default_factory=dict)


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        raise NotAnImage(f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from None


def _classic_volume_tags(ds: Dataset) -> dict[str, Any]:
    tags = {name: hashable(ds.get(name)) for name in CLASSIC_VOLUME_TAGS if name in ds}
    for name, element in SIEMENS_VOLUME_TAGS.items():
        value = private_value(ds, 0x0019, SIEMENS_MR_CREATOR, element)
        if value is not None and not isinstance(value, (bytes, bytearray)):
            tags[name] = hashable(value)
    return tags


def _enhanced_volume_tags(ds: Dataset, index: int) -> dict[str, Any]:
    tags = {}
    for sequence, name in ENHANCED_VOLUME_TAGS:
        item = group_item(ds, index, sequence)
        if item is not None and name in item:
            tags[name] = hashable(item.get(name))
    diffusion = group_item(ds, index, "MRDiffusionSequence")
    directions = diffusion.get("DiffusionGradientDirectionSequence") if diffusion is not None else None
    if directions:
        tags["DiffusionGradientOrientation"] = hashable(directions[0].get("DiffusionGradientOrientation"))
    return tags


def frames_of(ds: Dataset, path: Path) -> list[DicomFrame]:
    """All frames of one parsed file with their LPS geometry, or NotAnImage with the reason."""
    sop_name = UID(sop_class(ds)).name or "unknown SOP class"
    if not any(tag in ds for tag in PIXEL_TAGS):
        raise NotAnImage(f"no pixel data ({sop_name})")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise NotAnImage(f"colour image (SamplesPerPixel={ds.SamplesPerPixel}) is not a CT/MR volume")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise NotAnImage("missing Rows/Columns")
    count = _number_of_frames(ds)
    if rows * columns * count > max_voxels():  # refuse before building per-frame records or decoding
        raise NotAnImage(f"header claims {rows * columns * count:,} voxels, more than the limit {max_voxels():,} "
                         f"(set {MAX_VOXELS_ENV} to raise it)")
    series_uid = str(ds.get("SeriesInstanceUID", "")) or f"no-series-uid:{path.name}"
    top_spacing = float_list(ds.get("PixelSpacing"), 2)
    top_slope = float(ds.get("RescaleSlope", 1) or 1)
    top_intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return [_enhanced_frame(ds, path, index, series_uid, rows, columns, top_slope, top_intercept)
                for index in range(count)]
    position = float_list(ds.get("ImagePositionPatient"), 3)
    orientation = float_list(ds.get("ImageOrientationPatient"), 6)
    if position is None or orientation is None or top_spacing is None:
        raise NotAnImage(f"no patient geometry (ImagePositionPatient/ImageOrientationPatient/PixelSpacing) in {sop_name}")
    spacing = (float(top_spacing[0]), float(top_spacing[1]))
    thickness = positive_float(ds.get("SliceThickness"))
    between = positive_float(ds.get("SpacingBetweenSlices"))
    tags = _classic_volume_tags(ds)
    if count == 1 and is_mosaic(ds):
        try:
            mosaic = mosaic_geometry(ds, rows, columns, orientation, position, spacing)
        except MosaicError as error:
            return [DicomFrame(path, None, series_uid, rows, columns, orientation, position, spacing, top_slope,
                               top_intercept, thickness, between, problem=f"Siemens mosaic (ImageType MOSAIC): {error}")]
        layout = mosaic.layout
        return [
            DicomFrame(path, tile, series_uid, layout.rows, layout.columns, orientation,
                       mosaic.first_position + tile * mosaic.step * mosaic.normal, spacing, top_slope, top_intercept,
                       thickness, mosaic.step, mosaic=layout, volume_tags=tags)
            for tile in range(layout.count)
        ]
    if count == 1:
        return [DicomFrame(path, None, series_uid, rows, columns, orientation, position, spacing,
                           top_slope, top_intercept, thickness, between, volume_tags=tags)]
    # Classic multi-frame (e.g. RT Dose): frames stacked along the normal at GridFrameOffsetVector.
    offsets = float_list(ds.get("GridFrameOffsetVector"), count)
    if offsets is None:
        raise NotAnImage(f"multi-frame {sop_name} without per-frame geometry")
    if offsets[0] != 0:  # offsets relative to the first frame are the common, unambiguous form
        raise NotAnImage("GridFrameOffsetVector does not start at 0 (absolute offsets are not supported)")
    normal = np.cross(orientation[:3], orientation[3:])
    slope = float(ds.get("DoseGridScaling", top_slope) or top_slope)
    return [
        DicomFrame(path, index, series_uid, rows, columns, orientation, position + offset * normal,
                   spacing, slope, top_intercept, thickness, between)
        for index, offset in enumerate(offsets)
    ]


def _enhanced_frame(ds: Dataset, path: Path, index: int, series_uid: str, rows: int, columns: int,
                    top_slope: float, top_intercept: float) -> DicomFrame:
    """One frame of an enhanced multi-frame file from its functional groups (per-frame, then shared)."""
    plane = group_item(ds, index, "PlanePositionSequence")
    orient = group_item(ds, index, "PlaneOrientationSequence")
    measures = group_item(ds, index, "PixelMeasuresSequence")
    transform = group_item(ds, index, "PixelValueTransformationSequence")
    position = float_list(plane.get("ImagePositionPatient") if plane else None, 3)
    orientation = float_list(orient.get("ImageOrientationPatient") if orient else None, 6)
    spacing = float_list(measures.get("PixelSpacing") if measures else None, 2)
    if position is None or orientation is None or spacing is None or measures is None:
        raise NotAnImage(f"frame {index + 1} lacks plane position/orientation/pixel spacing")
    slope = float(transform.get("RescaleSlope", 1) or 1) if transform else top_slope
    intercept = float(transform.get("RescaleIntercept", 0) or 0) if transform else top_intercept
    return DicomFrame(
        path, index, series_uid, rows, columns, orientation, position, (float(spacing[0]), float(spacing[1])),
        slope, intercept, positive_float(measures.get("SliceThickness")),
        positive_float(measures.get("SpacingBetweenSlices")), volume_tags=_enhanced_volume_tags(ds, index),
    )
