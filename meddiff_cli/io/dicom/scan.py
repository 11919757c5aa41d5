"""Finding DICOM files, parsing their headers and grouping frames into series (volume candidates).

Localizers (scouts, surveys, topograms) are set aside here with a reason, like non-image objects,
so that a study folder yields its real series and says what it left out.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from meddiff_cli.io.dicom.frames import DicomFrame, frames_of
from meddiff_cli.io.dicom.headers import PIXEL_TAGS, NotAnImage, image_type, sop_class
from meddiff_cli.io.walk import walk_files

ORIENTATION_TOLERANCE = 1e-3  # direction cosine difference still counted as "same orientation"
LOCALIZER_MAX_SLICES = 5  # a series of at most this many slices per plane may be a localizer
LOCALIZER_DESCRIPTION = re.compile(r"locali[sz]er|scout|survey|surview|topogram|scanogram|3.?plane|tri.?pilot", re.I)


@dataclass
class DicomSeries:
    """Frames sharing SeriesInstanceUID, orientation and size: one volume candidate."""

    case_id: str
    frames: list[DicomFrame]
    modality: str
    model_name: str
    transfer_syntaxes: set[str] = field(default_factory=set)
    datasets: dict[Path, Dataset] = field(default_factory=dict, repr=False)
    localizer_hint: str | None = None  # "ImageType LOCALIZER" (decisive) or a scout-like description

    @property
    def files(self) -> list[Path]:
        return sorted({frame.path for frame in self.frames})

    def describe(self) -> str:
        frame = self.frames[0]
        return f"{self.case_id} ({self.modality or '?'}, {len(self.frames)} slices of {frame.columns}x{frame.rows})"


DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# Magic numbers of files that end up named .dcm by mistake (an exported screenshot, a zipped study, ...).
OTHER_FORMATS = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
                 (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"),
                 (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip file"))


def other_format(path: Path) -> str | None:
    """What a file is when its first bytes are a common non-DICOM format's magic number (else None)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    return next((kind for magic, kind in OTHER_FORMATS if head.startswith(magic)), None)


def not_dicom_reason(path: Path) -> str:
    """Why ``path`` is no DICOM file, naming its real format when its magic number tells."""
    return f"not a DICOM file: {not_dicom_detail(path)}"


def not_dicom_detail(path: Path) -> str:
    if path.is_file() and path.stat().st_size == 0:
        return "empty (0 bytes)"
    return other_format(path) or "no DICM preamble and no DICOM header"


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


def find_dicom_files(folder: Path) -> list[Path]:
    """Content-sniffed DICOM candidates anywhere below ``folder``."""
    return [path for path in walk_files(folder) if sniff_dicom(path)]


def read_dataset(path: Path, header_only: bool) -> Dataset:
    """Parse a file; pixel data is deferred (read from disk only when decoded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(str(path), force=True, defer_size="256 KB" if header_only else None)


def _looks_like_dicom(ds: Dataset) -> bool:
    """Force-parsing accepts almost any bytes: demand at least one attribute real DICOM always has."""
    return bool(sop_class(ds)) or "Modality" in ds or any(tag in ds for tag in PIXEL_TAGS)


def _series_key(frame: DicomFrame) -> str:
    """Grouping key used for the case id: series UID + rounded orientation + image size."""
    orientation = ",".join(f"{value:.3f}" for value in frame.orientation + 0.0)
    return f"{frame.series_uid}|{orientation}|{frame.rows}x{frame.columns}"


def series_case_id(frame: DicomFrame) -> str:
    """Stable, non-identifying case id: a hash of the grouping key, never the UID itself."""
    return "series-" + hashlib.sha256(_series_key(frame).encode()).hexdigest()[:12]


def _localizer_hint(ds: Dataset) -> str | None:
    if "LOCALIZER" in image_type(ds):
        return "ImageType LOCALIZER"
    if LOCALIZER_DESCRIPTION.search(str(ds.get("SeriesDescription", "")) + " " + str(ds.get("ProtocolName", ""))):
        return "series description"
    return None


def scan_dicom_files(paths: Iterable[Path]) -> tuple[list[DicomSeries], list[tuple[Path, str]]]:
    """Parse headers of candidate files and group their frames into series.

    Returns the series (sorted by case id) and the files skipped with a reason: unreadable or
    non-image files, and localizers. Files that ``sniff_dicom`` rejected are the caller's business.
    """
    with warnings.catch_warnings():  # pydicom warns on every malformed value; what matters fails below
        warnings.simplefilter("ignore")
        groups, skipped = _scan(paths)
    kept = []
    for series, reason in _localizer_reasons(groups):
        if reason is None:
            kept.append(series)
        else:
            skipped.extend((path, reason) for path in series.files)
    return sorted(kept, key=lambda g: g.case_id), skipped


def _scan(paths: Iterable[Path]) -> tuple[list[DicomSeries], list[tuple[Path, str]]]:
    groups: dict[str, DicomSeries] = {}
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            ds = read_dataset(path, header_only=True)
        except Exception as error:  # pydicom raises many types on corrupt input
            skipped.append((path, not_dicom_reason(path) if other_format(path) else
                            f"unreadable DICOM ({type(error).__name__})"))
            continue
        try:  # elements are parsed lazily: any access below may meet a malformed one
            if not _looks_like_dicom(ds):
                skipped.append((path, not_dicom_reason(path)))
                continue
            frames = frames_of(ds, path)
            transfer_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
            modality, model = str(ds.get("Modality", "")), str(ds.get("ManufacturerModelName", ""))
            hint = _localizer_hint(ds)
        except NotAnImage as reason:
            skipped.append((path, str(reason)))
            continue
        except Exception as error:  # malformed numbers, sequences, VRs, ... in a parsable file
            detail = " ".join(str(error).split())[:120]
            skipped.append((path, f"malformed DICOM header ({type(error).__name__}: {detail})"))
            continue
        for frame in frames:
            key = _group_key(groups, frame)
            group = groups.get(key)
            if group is None:
                group = groups[key] = DicomSeries(series_case_id(frame), [], modality, model, localizer_hint=hint)
            group.frames.append(frame)
            group.datasets[path] = ds
            if transfer_syntax:
                group.transfer_syntaxes.add(transfer_syntax)
    return list(groups.values()), skipped


def _group_key(groups: dict[str, DicomSeries], frame: DicomFrame) -> str:
    """The key of the group this frame belongs to: an existing one within the orientation tolerance, else its own."""
    for key, group in groups.items():
        other = group.frames[0]
        if (other.series_uid == frame.series_uid and (other.rows, other.columns) == (frame.rows, frame.columns)
                and bool(np.abs(other.orientation - frame.orientation).max() <= ORIENTATION_TOLERANCE)):
            return key
    return _series_key(frame)


def _localizer_reasons(groups: list[DicomSeries]) -> list[tuple[DicomSeries, str | None]]:
    """Each group with the reason it is a localizer, or None: ImageType LOCALIZER; a scout-like
    description with few slices; or one series cut into several planes of few slices (3-plane scout)."""
    planes: dict[str, list[DicomSeries]] = defaultdict(list)
    for group in groups:
        planes[group.frames[0].series_uid].append(group)
    result = []
    for group in groups:
        slices = len(group.frames)
        few = slices <= LOCALIZER_MAX_SLICES
        siblings = planes[group.frames[0].series_uid]
        reason = None
        if group.localizer_hint == "ImageType LOCALIZER":
            reason = f"localizer (ImageType LOCALIZER, {slices} slice(s))"
        elif group.localizer_hint and few:
            reason = f"localizer (scout-like series description, {slices} slice(s))"
        elif len(siblings) > 1 and all(len(s.frames) <= LOCALIZER_MAX_SLICES for s in siblings):
            reason = f"localizer-like ({len(siblings)} planes of at most {LOCALIZER_MAX_SLICES} slices in one series)"
        result.append((group, reason))
    return result


def skipped_notes(skipped: list[tuple[Path, str]]) -> list[str]:
    """One line per folder and reason: ``skipped 3 DICOM file(s) in DIR: localizer (...)``."""
    counts: dict[tuple[Path, str], int] = defaultdict(int)
    for path, reason in skipped:
        counts[(path.parent, reason)] += 1
    return [f"skipped {n} DICOM file(s) in {folder}: {reason}" for (folder, reason), n in sorted(counts.items())]
