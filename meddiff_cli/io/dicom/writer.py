"""Writing a volume as a synthetic (or derived) CT/MR Image Storage series, one file per slice."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from meddiff_cli.fsutil import atomic_dir
from meddiff_cli.io.volume import LPS_TO_RAS, Volume
from meddiff_cli.modality import MODALITIES

# Converters guess the vendor from Manufacturer's first two letters (dcm2niix: "ME" is Mediso, "SI" Siemens,
# "GE", "PH", "TO", "CA", "HI", "UI", "BR", "MR", "HY", "CP"), so the text must not start like a vendor.
MANUFACTURER_SYNTHETIC = "SYNTHETIC (meddiff)"
MANUFACTURER_DERIVED = "DERIVED (meddiff)"
# Positions and orientations are patient coordinates whatever this says; head first supine is what converters
# assume when it is missing (dcm2niix warns), and what the phantoms and models depict.
PATIENT_POSITION = "HFS"
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")


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
    replace: bool = False,
) -> Path:
    """Write ``volume`` as a CT/MR Image Storage series (one file per slice) into ``out_dir``, atomically.

    ``out_dir`` must be new; ``replace=True`` (for a caller that knows the folder is its own earlier series)
    swaps an existing folder out only once the new series is complete.

    Every UID is new and nothing is copied from any input: the patient module holds placeholder values.
    Synthetic output carries Synthetic Data (0008,001C) = YES and says so in its descriptions.
    ``dtype`` ('auto', 'int16', 'uint16') picks the stored integers; see :func:`_stored_pixels`.
    """
    if modality not in MODALITIES:
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
    with atomic_dir(out_dir, replace=replace) as tmp:
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
            ds.Manufacturer = MANUFACTURER_SYNTHETIC if synthetic else MANUFACTURER_DERIVED
            ds.ManufacturerModelName = f"meddiff {model_name}"[:64] if model_name else "meddiff"
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
            ds.PatientPosition = PATIENT_POSITION
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
