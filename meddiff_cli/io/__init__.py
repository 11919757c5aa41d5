"""Volume I/O: everything that enters or leaves meddiff as a :class:`Volume` with RAS+ geometry.

Public entry points used by the other stages:

* :func:`read_volume` -- one NIfTI/NRRD/MHA/MHD file, one DICOM file, or a folder with one DICOM series.
* :func:`discover_cases` / :func:`read_case` -- expand many inputs (files and folders, mixed formats)
  into cases with stable, non-identifying ids, then read them one at a time (e.g. in workers).
* Writers: :func:`write_nifti`, :func:`write_dicom_series`, :func:`write_itk` (all atomic), and
  :func:`write_dicom_seg` for a label map beside a synthetic DICOM series.
"""

from meddiff_cli.lazy import lazy_exports

# Lazy (PEP 562): a stage that only writes NIfTI (``sample``) does not pay for pydicom, SimpleITK or highdicom.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "cases": ["CaseSource", "discover_cases", "read_case", "read_volume", "volume_format"],
    "dicom": ["write_dicom_seg", "write_dicom_series"],
    "itk": ["read_itk", "read_with_simpleitk", "write_itk"],
    "limits": ["MAX_VOXELS_ENV"],
    "nifti": ["read_nifti", "write_nifti"],
    "volume": ["LPS_TO_RAS", "Volume"],
})
