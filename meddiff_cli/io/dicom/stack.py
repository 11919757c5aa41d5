"""Slice stack geometry: sort frames along the slice normal, check the stack, build the LPS affine.

Slice order never comes from InstanceNumber, which scanners get wrong: only positions are trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meddiff_cli.errors import BadInputError
from meddiff_cli.io.dicom.frames import DicomFrame

DUPLICATE_TOLERANCE_MM = 1e-3
GAP_FACTOR = 1.5  # a step this many times the median spacing means slices are missing
SPACING_WARN_MM = 0.01  # position residuals above this are reported
SPACING_ERROR_FRACTION = 0.1  # residuals above this fraction of the step are refused
TILT_ERROR_FRACTION = 0.1  # sideways drift above this fraction of a pixel is refused


@dataclass(frozen=True)
class SliceAxes:
    """Unit vectors (LPS) of increasing column index, increasing row index and the slice normal."""

    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray


def slice_axes(frame: DicomFrame, case_id: str, label: Path) -> SliceAxes:
    """The in-plane axes of a series and its normal (row x column), refusing degenerate orientations."""
    norms = np.linalg.norm(frame.orientation.reshape(2, 3), axis=1)
    if not (norms > 1e-6).all():
        raise BadInputError(f"series {case_id}: ImageOrientationPatient has a zero-length vector", label)
    row_dir = frame.orientation[:3] / norms[0]
    col_dir = frame.orientation[3:] / norms[1]
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise BadInputError(f"series {case_id}: ImageOrientationPatient vectors are not orthogonal", label)
    normal = np.cross(row_dir, col_dir)
    return SliceAxes(row_dir, col_dir, normal / np.linalg.norm(normal))


def stack_geometry(
    frames: list[DicomFrame], axes: SliceAxes, case_id: str, label: Path
) -> tuple[list[DicomFrame], np.ndarray, list[str]]:
    """Sort frames along the normal, check the stack, return (frames, LPS affine, warnings)."""
    first = frames[0]
    spacings = np.array([f.pixel_spacing for f in frames])
    if np.abs(spacings - spacings[0]).max() > 1e-3:
        raise BadInputError(f"series {case_id}: pixel spacing differs between slices", label)
    row_spacing, col_spacing = (float(v) for v in spacings[0])
    positions = np.array([f.position for f in frames])
    along = positions @ axes.normal
    order = np.argsort(along, kind="stable")
    frames = [frames[i] for i in order]
    positions, along = positions[order], along[order]
    warnings_: list[str] = []
    count = len(frames)
    if count == 1:
        step = first.spacing_between_slices or first.slice_thickness
        if step is None:
            step = 1.0
            warnings_.append("single slice without SliceThickness: assumed 1 mm")
    else:
        diffs = np.diff(along)
        duplicates = int((diffs < DUPLICATE_TOLERANCE_MM).sum())
        if duplicates:  # 4D series are split before; what is left here is a real duplicate
            raise BadInputError(f"series {case_id}: {duplicates} duplicated slice position(s)", label)
        median = float(np.median(diffs))
        gaps = np.flatnonzero(diffs > GAP_FACTOR * median)
        if gaps.size:
            worst = int(gaps[np.argmax(diffs[gaps])])
            raise BadInputError(
                f"series {case_id}: missing slice(s): gap of {diffs[worst]:.3f} mm after slice {worst + 1} of "
                f"{count} (median spacing {median:.3f} mm)",
                label,
            )
        offsets = positions - positions[0]
        sideways = offsets - np.outer(offsets @ axes.normal, axes.normal)
        drift = float(np.linalg.norm(sideways, axis=1).max())
        if drift > max(TILT_ERROR_FRACTION * min(row_spacing, col_spacing), 0.01):
            tilt = float(np.degrees(np.arctan2(np.linalg.norm(sideways[-1]), along[-1] - along[0])))
            raise BadInputError(
                f"series {case_id}: gantry tilt / sheared stack of {tilt:.2f} degrees (slices drift "
                f"{drift:.2f} mm sideways); resample it to an orthogonal grid first",
                label,
            )
        step = float((along[-1] - along[0]) / (count - 1))
        residual = float(np.abs(along - (along[0] + step * np.arange(count))).max())
        if residual > SPACING_ERROR_FRACTION * step:
            raise BadInputError(
                f"series {case_id}: inconsistent slice spacing ({diffs.min():.3f} to {diffs.max():.3f} mm)", label
            )
        if residual > SPACING_WARN_MM:
            warnings_.append(
                f"slice spacing varies ({diffs.min():.3f} to {diffs.max():.3f} mm); using the mean {step:.4f} mm "
                f"(largest position error {residual:.3f} mm)"
            )
    affine = np.eye(4)
    affine[:3, 0] = axes.row_dir * col_spacing
    affine[:3, 1] = axes.col_dir * row_spacing
    affine[:3, 2] = axes.normal * step
    affine[:3, 3] = positions[0]
    return frames, affine, warnings_
