"""DICOM series reading (recursive, content-sniffed) and synthetic DICOM series writing.

Geometry: DICOM patient coordinates are LPS+. ``ImageOrientationPatient`` holds two unit vectors:
the first is the direction of increasing *column* index (along a row), the second the direction of
increasing *row* index. ``PixelSpacing`` is ``[spacing between rows, spacing between columns]``.
A series read here becomes ``array[i, j, k]`` with i = column, j = row, k = slice sorted along the
slice normal (row direction x column direction), and an affine converted to RAS+ with
:data:`LPS_TO_RAS`. Slice order never comes from InstanceNumber, which scanners get wrong.
"""

from __future__ import annotations

import datetime
import hashlib
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from meddiff_cli.errors import BadInputError, InputNotFoundError
from meddiff_cli.fsutil import atomic_dir
from meddiff_cli.io.limits import MAX_VOXELS_ENV, check_affine, check_finite, check_voxel_count, max_voxels
from meddiff_cli.io.volume import LPS_TO_RAS, Volume
from meddiff_cli.io.walk import walk_files

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
ORIENTATION_TOLERANCE = 1e-3  # direction cosine difference still counted as "same orientation"
DUPLICATE_TOLERANCE_MM = 1e-3
GAP_FACTOR = 1.5  # a step this many times the median spacing means slices are missing
SPACING_WARN_MM = 0.01  # position residuals above this are reported
SPACING_ERROR_FRACTION = 0.1  # residuals above this fraction of the step are refused
TILT_ERROR_FRACTION = 0.1  # sideways drift above this fraction of a pixel is refused
MODALITY_NAMES = {"CT": "ct", "MR": "mri"}


# ----------------------------------------------------------------------------------------------
# Identification and header scanning
# ----------------------------------------------------------------------------------------------


def sniff_dicom(path: Path) -> bool:
    """Cheap content test: the ``DICM`` magic after the preamble, or a bare dataset starting with a
    group 0002/0008 tag (old files without preamble). The header parse confirms it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08")


def _read_dataset(path: Path, header_only: bool) -> Dataset:
    """Parse a file; pixel data is deferred (read from disk only when decoded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(str(path), force=True, defer_size="256 KB" if header_only else None)


def _sop_class(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))


def _looks_like_dicom(ds: Dataset) -> bool:
    """Force-parsing accepts almost any bytes: demand at least one attribute real DICOM always has."""
    return bool(_sop_class(ds)) or "Modality" in ds or any(tag in ds for tag in PIXEL_TAGS)


@dataclass
class DicomFrame:
    """One 2D image with its geometry: a single-frame file or one frame of a multi-frame file."""

    path: Path
    frame_index: int | None
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


@dataclass
class DicomSeries:
    """Frames sharing SeriesInstanceUID, orientation and size: one volume candidate."""

    case_id: str
    frames: list[DicomFrame]
    modality: str
    model_name: str
    transfer_syntaxes: set[str] = field(default_factory=set)
    datasets: dict[Path, Dataset] = field(default_factory=dict, repr=False)

    @property
    def files(self) -> list[Path]:
        return sorted({frame.path for frame in self.frames})

    def describe(self) -> str:
        frame = self.frames[0]
        return f"{self.case_id} ({self.modality or '?'}, {len(self.frames)} slices of {frame.columns}x{frame.rows})"


class NotAnImage(Exception):
    """A DICOM file that holds no cross-sectional image (reason in the message)."""


def _float_list(value: Any, count: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.isfinite(numbers).all() else None


def _optional_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _group_item(ds: Dataset, frame: int | None, sequence: str) -> Dataset | None:
    """Functional-group lookup for enhanced multi-frame: per-frame item first, then shared."""
    sources = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds and frame < len(ds.PerFrameFunctionalGroupsSequence):
        sources.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        sources.append(ds.SharedFunctionalGroupsSequence[0])
    for groups in sources:
        if sequence in groups and len(groups[sequence].value):
            return groups[sequence].value[0]
    return None


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        raise NotAnImage(f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from None


def _frames_of(ds: Dataset, path: Path) -> list[DicomFrame]:
    """All frames of one parsed file with their LPS geometry, or NotAnImage with the reason."""
    sop_name = UID(_sop_class(ds)).name or "unknown SOP class"
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
    top_spacing = _float_list(ds.get("PixelSpacing"), 2)
    top_slope = float(ds.get("RescaleSlope", 1) or 1)
    top_intercept = float(ds.get("RescaleIntercept", 0) or 0)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    frames: list[DicomFrame] = []
    if enhanced:
        for index in range(count):
            plane = _group_item(ds, index, "PlanePositionSequence")
            orient = _group_item(ds, index, "PlaneOrientationSequence")
            measures = _group_item(ds, index, "PixelMeasuresSequence")
            transform = _group_item(ds, index, "PixelValueTransformationSequence")
            position = _float_list(plane.get("ImagePositionPatient") if plane else None, 3)
            orientation = _float_list(orient.get("ImageOrientationPatient") if orient else None, 6)
            spacing = _float_list(measures.get("PixelSpacing") if measures else None, 2)
            if position is None or orientation is None or spacing is None:
                raise NotAnImage(f"frame {index + 1} lacks plane position/orientation/pixel spacing")
            slope = float(transform.get("RescaleSlope", 1) or 1) if transform else top_slope
            intercept = float(transform.get("RescaleIntercept", 0) or 0) if transform else top_intercept
            frames.append(
                DicomFrame(
                    path, index, series_uid, rows, columns, orientation, position, (spacing[0], spacing[1]),
                    slope, intercept,
                    _optional_float(measures.get("SliceThickness")), _optional_float(measures.get("SpacingBetweenSlices")),
                )
            )
        return frames
    position = _float_list(ds.get("ImagePositionPatient"), 3)
    orientation = _float_list(ds.get("ImageOrientationPatient"), 6)
    if position is None or orientation is None or top_spacing is None:
        raise NotAnImage(f"no patient geometry (ImagePositionPatient/ImageOrientationPatient/PixelSpacing) in {sop_name}")
    thickness = _optional_float(ds.get("SliceThickness"))
    between = _optional_float(ds.get("SpacingBetweenSlices"))
    if count == 1:
        return [DicomFrame(path, None, series_uid, rows, columns, orientation, position, (top_spacing[0], top_spacing[1]),
                           top_slope, top_intercept, thickness, between)]
    # Classic multi-frame (e.g. RT Dose): frames stacked along the normal at GridFrameOffsetVector.
    offsets = _float_list(ds.get("GridFrameOffsetVector"), count)
    if offsets is None:
        raise NotAnImage(f"multi-frame {sop_name} without per-frame geometry")
    if offsets[0] != 0:  # offsets relative to the first frame are the common, unambiguous form
        raise NotAnImage("GridFrameOffsetVector does not start at 0 (absolute offsets are not supported)")
    normal = np.cross(orientation[:3], orientation[3:])
    slope = float(ds.get("DoseGridScaling", top_slope) or top_slope)
    return [
        DicomFrame(path, index, series_uid, rows, columns, orientation, position + offset * normal,
                   (top_spacing[0], top_spacing[1]), slope, top_intercept, thickness, between)
        for index, offset in enumerate(offsets)
    ]


def _series_key(frame: DicomFrame) -> str:
    """Grouping key used for the case id: series UID + rounded orientation + image size."""
    orientation = ",".join(f"{value:.3f}" for value in frame.orientation + 0.0)
    return f"{frame.series_uid}|{orientation}|{frame.rows}x{frame.columns}"


def series_case_id(frame: DicomFrame) -> str:
    """Stable, non-identifying case id: a hash of the grouping key, never the UID itself."""
    return "series-" + hashlib.sha256(_series_key(frame).encode()).hexdigest()[:12]


def scan_dicom_files(paths: Iterable[Path]) -> tuple[list[DicomSeries], list[tuple[Path, str]]]:
    """Parse headers of candidate files and group their frames into series.

    Returns the series (sorted by case id) and the files skipped with a reason. Files that are not
    DICOM at all are skipped silently only when ``sniff_dicom`` already said no (callers decide).
    """
    with warnings.catch_warnings():  # pydicom warns on every malformed value; what matters fails below
        warnings.simplefilter("ignore")
        return _scan(paths)


def _scan(paths: Iterable[Path]) -> tuple[list[DicomSeries], list[tuple[Path, str]]]:
    groups: list[DicomSeries] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            ds = _read_dataset(path, header_only=True)
        except Exception as error:  # pydicom raises many types on corrupt input
            skipped.append((path, f"unreadable DICOM ({type(error).__name__})"))
            continue
        try:  # elements are parsed lazily: any access below may meet a malformed one
            if not _looks_like_dicom(ds):
                skipped.append((path, "not a DICOM file (no DICM preamble and no DICOM header)"))
                continue
            frames = _frames_of(ds, path)
            transfer_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
            modality, model = str(ds.get("Modality", "")), str(ds.get("ManufacturerModelName", ""))
        except NotAnImage as reason:
            skipped.append((path, str(reason)))
            continue
        except Exception as error:  # malformed numbers, sequences, VRs, ... in a parsable file
            detail = " ".join(str(error).split())[:120]
            skipped.append((path, f"malformed DICOM header ({type(error).__name__}: {detail})"))
            continue
        for frame in frames:
            group = next((g for g in groups if _same_group(g.frames[0], frame)), None)
            if group is None:
                group = DicomSeries(series_case_id(frame), [], modality, model)
                groups.append(group)
            group.frames.append(frame)
            group.datasets[path] = ds
            if transfer_syntax:
                group.transfer_syntaxes.add(transfer_syntax)
    return sorted(groups, key=lambda g: g.case_id), skipped


def _same_group(a: DicomFrame, b: DicomFrame) -> bool:
    return (
        a.series_uid == b.series_uid
        and a.rows == b.rows
        and a.columns == b.columns
        and bool(np.abs(a.orientation - b.orientation).max() <= ORIENTATION_TOLERANCE)
    )


def find_dicom_files(folder: Path) -> list[Path]:
    """Content-sniffed DICOM candidates anywhere below ``folder``."""
    return [path for path in walk_files(folder) if sniff_dicom(path)]


# ----------------------------------------------------------------------------------------------
# Assembling a volume
# ----------------------------------------------------------------------------------------------


def _sorted_geometry(series: DicomSeries, label: Path) -> tuple[list[DicomFrame], np.ndarray, list[str]]:
    """Sort frames along the slice normal, check the stack, return (frames, LPS affine, warnings)."""
    frames = series.frames
    first = frames[0]
    norms = np.linalg.norm(first.orientation.reshape(2, 3), axis=1)
    if not (norms > 1e-6).all():
        raise BadInputError(f"series {series.case_id}: ImageOrientationPatient has a zero-length vector", label)
    row_dir = first.orientation[:3] / norms[0]  # increasing column index
    col_dir = first.orientation[3:] / norms[1]  # increasing row index
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise BadInputError(f"series {series.case_id}: ImageOrientationPatient vectors are not orthogonal", label)
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    spacings = np.array([f.pixel_spacing for f in frames])
    if np.abs(spacings - spacings[0]).max() > 1e-3:
        raise BadInputError(f"series {series.case_id}: pixel spacing differs between slices", label)
    row_spacing, col_spacing = (float(v) for v in spacings[0])
    positions = np.array([f.position for f in frames])
    along = positions @ normal
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
        if duplicates:
            raise BadInputError(
                f"series {series.case_id}: {duplicates} duplicated slice position(s) "
                "(several acquisitions, echoes or phases in one series?)",
                label,
            )
        median = float(np.median(diffs))
        gaps = np.flatnonzero(diffs > GAP_FACTOR * median)
        if gaps.size:
            worst = int(gaps[np.argmax(diffs[gaps])])
            raise BadInputError(
                f"series {series.case_id}: missing slice(s): gap of {diffs[worst]:.3f} mm after slice {worst + 1} of "
                f"{count} (median spacing {median:.3f} mm)",
                label,
            )
        offsets = positions - positions[0]
        sideways = offsets - np.outer(offsets @ normal, normal)
        drift = float(np.linalg.norm(sideways, axis=1).max())
        if drift > max(TILT_ERROR_FRACTION * min(row_spacing, col_spacing), 0.01):
            tilt = float(np.degrees(np.arctan2(np.linalg.norm(sideways[-1]), along[-1] - along[0])))
            raise BadInputError(
                f"series {series.case_id}: gantry tilt / sheared stack of {tilt:.2f} degrees (slices drift "
                f"{drift:.2f} mm sideways); resample it to an orthogonal grid first",
                label,
            )
        step = float((along[-1] - along[0]) / (count - 1))
        residual = float(np.abs(along - (along[0] + step * np.arange(count))).max())
        if residual > SPACING_ERROR_FRACTION * step:
            raise BadInputError(
                f"series {series.case_id}: inconsistent slice spacing ({diffs.min():.3f} to {diffs.max():.3f} mm)", label
            )
        if residual > SPACING_WARN_MM:
            warnings_.append(
                f"slice spacing varies ({diffs.min():.3f} to {diffs.max():.3f} mm); using the mean {step:.4f} mm "
                f"(largest position error {residual:.3f} mm)"
            )
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = positions[0]
    return frames, affine, warnings_


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    """Decode all frames of a file as (frames, rows, columns); unsupported syntaxes named clearly."""
    transfer_syntax = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ExplicitVRLittleEndian))
    if not transfer_syntax.is_transfer_syntax:
        raise BadInputError(f"TransferSyntaxUID {str(transfer_syntax)[:64]!r} is not a transfer syntax", path)
    if transfer_syntax.is_compressed:
        try:
            available = get_decoder(transfer_syntax).is_available
        except Exception:
            available = False
        if not available:
            raise BadInputError(
                f"unsupported transfer syntax {transfer_syntax.name or transfer_syntax} ({transfer_syntax}): "
                "no permissively licensed decoder installed",
                path,
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as error:
        name = transfer_syntax.name or str(transfer_syntax)
        raise BadInputError(f"cannot decode pixel data ({name}): {type(error).__name__}: {error}", path) from None
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    return pixels


def load_series(series: DicomSeries, label: Path, modality: str = "auto") -> Volume:
    """Decode a grouped series into a RAS+ :class:`Volume` (rescale applied, float32)."""
    first = series.frames[0]
    check_voxel_count(first.rows * first.columns * len(series.frames), label)
    frames, affine_lps, warnings_ = _sorted_geometry(series, label)
    array = np.empty((first.columns, first.rows, len(frames)), dtype=np.float32)
    decoded: dict[Path, np.ndarray] = {}
    for k, frame in enumerate(frames):
        if frame.path not in decoded:
            try:
                ds = series.datasets.get(frame.path) or _read_dataset(frame.path, header_only=False)
                decoded[frame.path] = _decode(ds, frame.path)
            except BadInputError:
                raise
            except Exception as error:  # a malformed element met only now (values are parsed lazily)
                detail = " ".join(str(error).split())[:120]
                raise BadInputError(f"malformed DICOM ({type(error).__name__}: {detail})", frame.path) from None
        pixels = decoded[frame.path]
        index = frame.frame_index or 0
        if index >= pixels.shape[0] or pixels.shape[1:] != (first.rows, first.columns):
            raise BadInputError(f"pixel data does not match Rows/Columns/NumberOfFrames (shape {pixels.shape})", frame.path)
        array[:, :, k] = pixels[index].T.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
    check_finite(array, label)
    slopes = {(f.slope, f.intercept) for f in frames}
    rescale: dict[str, Any] = (
        {"slope": first.slope, "intercept": first.intercept} if len(slopes) == 1 else {"per_slice": True}
    )
    if modality == "auto":
        modality = MODALITY_NAMES.get(series.modality.upper(), "unknown")
    metadata = {
        "source_format": "dicom",
        "dicom_modality": series.modality,
        "manufacturer_model": series.model_name,
        "slices": len(frames),
        "rescale": rescale,
        "transfer_syntax": sorted(UID(ts).name or ts for ts in series.transfer_syntaxes),
        "warnings": warnings_,
    }
    affine = LPS_TO_RAS @ affine_lps
    check_affine(affine, label)
    return Volume(array, affine, modality, metadata)


def read_dicom(path: str | Path, modality: str = "auto", case_id: str | None = None,
               files: Iterable[Path] | None = None) -> Volume:
    """Read one DICOM file, or the single series of a folder (``case_id`` picks one of several)."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError("no such file or folder", path)
    if files:
        candidates = [Path(f) for f in files]
    elif path.is_dir():
        candidates = find_dicom_files(path)
    else:
        candidates = [path]
    series, skipped = scan_dicom_files(candidates)
    if path.is_file() and not series:
        reason = skipped[0][1] if skipped else "not a DICOM image"
        raise BadInputError(reason, path)
    if case_id is not None:
        series = [s for s in series if s.case_id == case_id]
        if not series:
            raise InputNotFoundError(f"DICOM series {case_id} not found (folder changed since discovery?)", path)
    if not series:
        reasons = Counter(reason for _, reason in skipped)
        detail = "; ".join(f"{n} file(s): {r}" for r, n in reasons.most_common(3))
        raise InputNotFoundError("no DICOM image series found" + (f" ({detail})" if detail else ""), path)
    if len(series) > 1:
        listing = ", ".join(s.describe() for s in series)
        raise BadInputError(f"{len(series)} DICOM series found, expected one: {listing}", path)
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # malformed values fail below, not warn on stderr
        warnings.simplefilter("ignore")
        volume = load_series(series[0], path, modality)
    if skipped:
        volume.metadata["skipped_files"] = dict(Counter(reason for _, reason in skipped))
    return volume


# ----------------------------------------------------------------------------------------------
# Writing a synthetic series
# ----------------------------------------------------------------------------------------------


def _stored_pixels(array: np.ndarray, modality: str, dtype: str) -> tuple[np.ndarray, float, float]:
    """Stored integers + (slope, intercept) so that ``stored * slope + intercept`` gives the values back.

    CT is stored in whole HU (rounded). Integral values that fit ``dtype`` are stored as they are,
    integral values that only fit after a shift get an intercept, anything else is scaled over the
    full integer range (error <= slope / 2). ``dtype='auto'``: int16 for CT and for integral data
    that fits it, otherwise uint16.
    """
    values = np.asarray(array, dtype=np.float64)
    if modality == "ct":
        values = np.rint(values)
    lo, hi = float(values.min()), float(values.max())
    integral = bool(np.array_equal(values, np.rint(values)))
    if dtype == "auto":
        dtype = "int16" if modality == "ct" or (integral and lo >= -32768 and hi <= 32767) else "uint16"
    if dtype not in ("int16", "uint16"):
        raise ValueError(f"DICOM dtype must be 'auto', 'int16' or 'uint16', got {dtype!r}")
    info = np.iinfo(dtype)
    if integral and lo >= info.min and hi <= info.max:
        return values.astype(dtype), 1.0, 0.0
    if integral and hi - lo <= float(info.max) - float(info.min):
        slope, intercept = 1.0, lo - float(info.min)
    else:
        slope = (hi - lo) / (float(info.max) - float(info.min)) if hi > lo else 1.0
        # DS values hold 16 characters: round the rescale first, then quantise with the rounded values.
        slope = float(f"{slope:.10g}")
        intercept = float(f"{lo - float(info.min) * slope:.10g}")
    stored = np.clip(np.rint((values - intercept) / slope), info.min, info.max).astype(dtype)
    return stored, slope, intercept


def _ds(value: float) -> str:
    """A DICOM decimal string (<= 16 characters) keeping as many digits as fit."""
    for digits in range(10, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.3g}"


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    modality: str = "ct",
    series_description: str | None = None,
    image_comments: str | None = None,
    model_name: str | None = None,
    synthetic: bool = True,
    dtype: str = "auto",
    series_number: int = 1,
) -> Path:
    """Write ``volume`` as a CT/MR Image Storage series (one file per slice) into ``out_dir``, atomically.

    Every UID is new and nothing is copied from any input: the patient module holds placeholder values.
    Synthetic output carries Synthetic Data (0008,001C) = YES and says so in its descriptions.
    ``dtype`` ('auto', 'int16', 'uint16') picks the stored integers; see :func:`_stored_pixels`.
    """
    if modality not in ("ct", "mri"):
        raise ValueError(f"modality must be 'ct' or 'mri', got {modality!r}")
    out_dir = Path(out_dir)
    affine = LPS_TO_RAS @ volume.affine  # RAS -> LPS
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if (spacing <= 0).any():
        raise ValueError("affine has a zero-length axis")
    units = axes / spacing
    if np.abs(units.T @ units - np.eye(3)).max() > 1e-4:
        raise ValueError("DICOM cannot store a sheared (non-orthogonal) affine; resample first")
    row_dir, col_dir = units[:, 0], units[:, 1]
    stored, slope, intercept = _stored_pixels(volume.array, modality, dtype)
    now = datetime.datetime.now(datetime.timezone.utc)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    sop_class = CT_IMAGE_STORAGE if modality == "ct" else MR_IMAGE_STORAGE
    origin_kind = "synthetic" if synthetic else "derived"
    model_text = f" by model {model_name}" if model_name else ""
    description = series_description or f"{origin_kind.upper()} {modality.upper()}{model_text} (meddiff)"
    comments = image_comments or (
        f"Synthetic image generated{model_text} by meddiff; not a real patient scan"
        if synthetic
        else f"Image written{model_text} by meddiff"
    )
    columns, rows, depth = stored.shape
    normal = np.cross(row_dir, col_dir)
    with atomic_dir(out_dir) as tmp:
        for k in range(depth):
            position = affine @ np.array([0.0, 0.0, k, 1.0])
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(str(tmp / f"slice_{k + 1:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if modality == "ct" else ["DERIVED", "SECONDARY", "OTHER"]
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            ds.StudyDate, ds.StudyTime = date, time
            ds.SeriesDate, ds.SeriesTime = date, time
            ds.ContentDate, ds.ContentTime = date, time
            ds.AccessionNumber = ""
            ds.Modality = "CT" if modality == "ct" else "MR"
            if synthetic:
                ds.add_new(0x0008001C, "CS", "YES")  # Synthetic Data
            ds.Manufacturer = "meddiff"
            ds.ManufacturerModelName = (model_name or "meddiff")[:64]
            ds.SoftwareVersions = "meddiff"
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = f"{origin_kind} data (meddiff)"
            ds.SeriesDescription = description[:64]
            ds.PatientName = "ANONYMOUS^SYNTHETIC" if synthetic else "ANONYMOUS"
            ds.PatientID = "SYNTHETIC" if synthetic else "ANONYMOUS"
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.PatientIdentityRemoved = "YES"
            ds.DeidentificationMethod = "no patient data: generated by meddiff" if synthetic else "written by meddiff"
            ds.BodyPartExamined = ""
            ds.SliceThickness = _ds(spacing[2])
            ds.SpacingBetweenSlices = _ds(spacing[2])
            ds.PatientPosition = ""
            if modality == "ct":
                ds.KVP = ""
            else:
                ds.ScanningSequence = "RM"  # research mode: no real acquisition happened
                ds.SequenceVariant = "NONE"
                ds.ScanOptions = ""
                ds.MRAcquisitionType = "3D"
                ds.EchoTime = ""
                ds.EchoTrainLength = ""
                ds.RepetitionTime = ""
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.SeriesNumber = series_number
            ds.Laterality = ""
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = k + 1
            ds.PatientOrientation = ""
            ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = _ds(float(position[:3] @ normal))
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = rows, columns
            ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # [between rows, between columns]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
            ds.BurnedInAnnotation = "NO"
            ds.ImageComments = comments[:10240]
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            ds.save_as(ds.filename, enforce_file_format=True)
    return out_dir
