"""DICOM series reading (recursive, content-sniffed) and synthetic DICOM series writing.

Geometry: DICOM patient coordinates are LPS+. ``ImageOrientationPatient`` holds two unit vectors:
the first is the direction of increasing *column* index (along a row), the second the direction of
increasing *row* index. ``PixelSpacing`` is ``[spacing between rows, spacing between columns]``.
A series read here becomes ``array[i, j, k]`` with i = column, j = row, k = slice sorted along the
slice normal (row direction x column direction), and an affine converted to RAS+ with
:data:`~meddiff_cli.io.volume.LPS_TO_RAS`.

Modules, in the order a file goes through them: :mod:`.scan` (find, parse, group into series, set
localizers aside) using :mod:`.frames` (one file -> 2D frames; :mod:`.mosaic` and :mod:`.csa` for
Siemens mosaics), then :mod:`.read` (decode; GDCM only in a child process, :mod:`.isolated`) with :mod:`.volumes`
(pick one volume of a 4D series) and :mod:`.stack` (sort and check the slice stack). :mod:`.writer` writes series,
:mod:`.seg` a label map as a DICOM SEG beside one (highdicom, imported only when it writes). What is read and
what is refused is tabulated in docs/formats.md ("DICOM").
"""

from meddiff_cli.io.dicom.read import load_series, read_dicom
from meddiff_cli.io.dicom.scan import (
    DICOM_SUFFIXES,
    DicomSeries,
    find_dicom_files,
    not_dicom_detail,
    not_dicom_reason,
    other_format,
    scan_dicom_files,
    series_case_id,
    skipped_notes,
    sniff_dicom,
)
from meddiff_cli.io.dicom.seg import write_dicom_seg
from meddiff_cli.io.dicom.writer import write_dicom_series

__all__ = [
    "DICOM_SUFFIXES",
    "DicomSeries",
    "find_dicom_files",
    "not_dicom_detail",
    "not_dicom_reason",
    "other_format",
    "load_series",
    "read_dicom",
    "scan_dicom_files",
    "series_case_id",
    "skipped_notes",
    "sniff_dicom",
    "write_dicom_seg",
    "write_dicom_series",
]
