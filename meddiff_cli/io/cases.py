"""Cases: expand inputs (files and folders, mixed formats) into cases with stable, non-identifying ids, and read
one volume of any supported format as a :class:`~meddiff_cli.io.volume.Volume`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from meddiff_cli.errors import BadInputError, InputNotFoundError
from meddiff_cli.io.dicom import (
    DICOM_SUFFIXES, not_dicom_detail, other_format, read_dicom, scan_dicom_files, skipped_notes, sniff_dicom,
)
from meddiff_cli.io.itk import ITK_SUFFIXES, read_itk
from meddiff_cli.io.nifti import NIFTI_SUFFIXES, read_nifti
from meddiff_cli.io.volume import Volume
from meddiff_cli.io.walk import walk_files

VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
UNSUPPORTED = "not a supported volume (NIfTI, NRRD, MHA, MHD by name, or DICOM by content)"
MAX_NAMED = 3  # files named in one note before "and N more"


@dataclass(frozen=True)
class CaseSource:
    """One case found by :func:`discover_cases`.

    ``series_key`` is set for DICOM series (the case id of the series inside ``path``); ``files``
    lists that series' files so reading it does not re-scan the folder.
    """

    case_id: str
    path: Path
    format: str
    series_key: str | None = None
    files: tuple[Path, ...] = ()


def volume_format(path: str | Path) -> str | None:
    """'nifti', 'nrrd', 'mha', 'mhd' from the file name, else None (DICOM is recognised by content)."""
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    for suffix in ITK_SUFFIXES:
        if name.endswith(suffix):
            return "nrrd" if suffix == ".nhdr" else suffix.lstrip(".")
    return None


def _case_id_from_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_volume(path: str | Path, modality: str = "auto", volume_index: int | None = None) -> Volume:
    """Read a volume file or a DICOM folder holding exactly one series.

    ``modality='auto'`` takes CT/MR from the DICOM header (else ``'unknown'``); ``'ct'``/``'mri'`` override.
    ``volume_index`` picks one volume (0-based) of a 4D DICOM series, which is refused without it.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError("no such file or folder", path)
    if path.is_file() and path.stat().st_size == 0:
        raise BadInputError("empty file (0 bytes)", path)
    kind = volume_format(path) if path.is_file() else None
    file_modality = "unknown" if modality == "auto" else modality
    if kind == "nifti":
        return read_nifti(path, file_modality)
    if kind is not None:
        return read_itk(path, file_modality)
    if path.is_dir() or sniff_dicom(path) or path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path, modality, volume_index=volume_index)
    raise BadInputError(_unsupported(path), path)


def _unsupported(path: Path) -> str:
    kind = other_format(path)
    return f"{UNSUPPORTED}: this is {kind}" if kind else UNSUPPORTED


def discover_cases(inputs: list[Path] | list[str], notes: list[str] | None = None) -> list[CaseSource]:
    """Expand files and folders into cases, sorted by case id.

    Volume files are cases named after the file; DICOM (recognised by content) is grouped into series,
    each a case ``series-<hash>``. Unknown files inside folders are ignored, except files named like DICOM
    (``.dcm``) that are not, which are named in a note. An explicitly named file that is neither becomes a case
    that fails with a clear BadInputError when read; alone, it fails here, before anyone asks for a modality.
    DICOM files that are no case (localizers, non-image objects) are skipped; ``notes`` gets one line per
    folder and reason, and "no volumes found" repeats them.
    """
    cases: list[CaseSource] = []
    found_notes: list[str] = []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            raise InputNotFoundError("no such file or folder", root)
        if root.is_file():
            kind = volume_format(root)
            if kind is not None:
                cases.append(CaseSource(_case_id_from_name(root), root, kind))
                continue
            dicom_like = root.stat().st_size and (sniff_dicom(root) or root.suffix.lower() in DICOM_SUFFIXES)
            series, skipped = scan_dicom_files([root]) if dicom_like else ([], [])
            if series:
                found_notes.extend(skipped_notes(skipped))
                cases.extend(CaseSource(s.case_id, root, "dicom", s.case_id, (root,)) for s in series)
            elif len(inputs) == 1:  # say what the file is now, not after asking for --modality
                raise BadInputError(skipped[0][1] if skipped else _unsupported_file(root), root)
            else:  # keep it so the failure is reported for this file, with its reason, at read time
                cases.append(CaseSource(_case_id_from_name(root), root, "unknown"))
            continue
        dicom_candidates: list[Path] = []
        misnamed: list[Path] = []
        for file in walk_files(root, nnunet_images_only=True):
            kind = volume_format(file)
            if kind is not None:
                cases.append(CaseSource(_case_id_from_name(file), file, kind))
            elif sniff_dicom(file):
                dicom_candidates.append(file)
            elif file.suffix.lower() in DICOM_SUFFIXES:
                misnamed.append(file)
        series, skipped = scan_dicom_files(dicom_candidates)
        found_notes.extend(skipped_notes(skipped))
        if misnamed:
            found_notes.append(_misnamed_note(misnamed))
        cases.extend(CaseSource(s.case_id, _series_folder(s.files), "dicom", s.case_id, tuple(s.files)) for s in series)
    if notes is not None:
        notes.extend(found_notes)
    if not cases:
        aside = f"; {'; '.join(found_notes)}" if found_notes else ""
        raise InputNotFoundError(f"no volumes found (NIfTI, NRRD, MHA, MHD or DICOM image series){aside}",
                                 inputs[0] if len(inputs) == 1 else None)
    by_id: dict[str, CaseSource] = {}
    for case in cases:
        other = by_id.get(case.case_id)
        if other is not None and (other.path, other.series_key) != (case.path, case.series_key):
            if other.series_key is not None and other.series_key == case.series_key:
                continue  # the same DICOM series reached through two inputs
            raise BadInputError(
                f"two inputs give the same case id {case.case_id!r}: {other.path} and {case.path}", case.path
            )
        by_id[case.case_id] = case
    return sorted(by_id.values(), key=lambda c: c.case_id)


def _unsupported_file(path: Path) -> str:
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    return _unsupported(path)


def _misnamed_note(files: list[Path]) -> str:
    """One line naming the first few files named like DICOM that are not DICOM (with what they are) and the count."""
    named = ", ".join(f"{file} ({not_dicom_detail(file)})" for file in files[:MAX_NAMED])
    more = f" and {len(files) - MAX_NAMED} more" if len(files) > MAX_NAMED else ""
    return f"skipped {len(files)} file(s) named like DICOM that are not DICOM: {named}{more}"


def _series_folder(files: list[Path]) -> Path:
    """The deepest folder holding every file of a series: what error messages and manifests name,
    so a broken series inside a large input tree is found without decoding its hashed case id."""
    return Path(os.path.commonpath([str(file.parent) for file in files]))


def read_case(case: CaseSource, modality: str = "auto", volume_index: int | None = None) -> Volume:
    """Read one discovered case (``volume_index``: see :func:`read_volume`)."""
    if case.format == "dicom":
        return read_dicom(case.path, modality, case_id=case.series_key, files=case.files or None,
                          volume_index=volume_index)
    return read_volume(case.path, modality)
