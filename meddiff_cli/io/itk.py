"""NRRD / MetaImage (.mha, .mhd) via SimpleITK. ITK geometry is LPS+; converted to RAS+ here.

``read_with_simpleitk`` is also the independent reference reader the tests compare our own
NIfTI and DICOM readers against. SimpleITK (~0.3 s, 50 MB) is imported when an ITK file is first read or
written, not with this module: finding cases, and NIfTI/DICOM pipelines, never pay for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from meddiff_cli.errors import BadInputError, InputNotFoundError
from meddiff_cli.fsutil import TMP_PREFIX, atomic_path
from meddiff_cli.io.limits import check_affine, check_finite, check_voxel_count
from meddiff_cli.io.volume import LPS_TO_RAS, Volume

if TYPE_CHECKING:
    import SimpleITK as sitk

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


@cache
def _sitk() -> Any:
    """SimpleITK, imported on first use."""
    import SimpleITK

    # ITK prints reader warnings straight to stderr from C++; failures still raise, and we report those in one line.
    SimpleITK.ProcessObject.SetGlobalWarningDisplay(False)
    return SimpleITK


def is_itk(path: str | Path) -> bool:
    return str(path).lower().endswith(ITK_SUFFIXES)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """MetaIO/NRRD print diagnostics with C++ ``std::cerr`` (not ITK warnings): send file
    descriptor 2 to /dev/null while a reader runs. Failures still raise and are reported in one line."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _image_affine_ras(image: sitk.Image) -> np.ndarray:
    """ITK (origin, spacing, direction) in LPS -> 4x4 RAS affine for array[i, j, k]."""
    dimension = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    spacing = np.array(image.GetSpacing(), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = np.array(image.GetOrigin(), dtype=np.float64)[:3]
    return LPS_TO_RAS @ affine


def _image_to_volume(image: sitk.Image, path: Path, modality: str, source_format: str) -> Volume:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise BadInputError(f"{image.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar volume", path)
    size = image.GetSize()
    sitk = _sitk()
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
    elif image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise BadInputError(f"expected a 3D volume, got size {size}", path)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)  # [k,j,i] -> [i,j,k]
    check_finite(array, path)
    affine = _image_affine_ras(image)
    check_affine(affine, path)
    return Volume(array, affine, modality, {"source_format": source_format})


def read_itk(path: str | Path, modality: str = "unknown") -> Volume:
    """Read NRRD/MHA/MHD; the header is checked against the size limit before pixels are loaded."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError("no such file", path)
    _check_text_header(path)
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _native_stderr_silenced():
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise BadInputError(f"unreadable image header ({_first_line(error)})", path) from None
    check_voxel_count(tuple(reader.GetSize()), path)
    try:
        with _native_stderr_silenced():
            image = reader.Execute()
    except RuntimeError as error:
        raise BadInputError(f"unreadable image data ({_first_line(error)})", path) from None
    suffix = path.suffix.lower().lstrip(".")
    return _image_to_volume(image, path, modality, "nrrd" if suffix == "nhdr" else suffix)


MAX_DIMENSIONS = 4  # 3D, or 4D with one volume
HEADER_SCAN_BYTES = 1 << 16


def _check_text_header(path: Path) -> None:
    """Validate the dimension fields of a MetaImage/NRRD text header before ITK parses it.

    ITK's MetaIO crashes the whole process (segmentation fault, heap corruption) on headers such as
    ``NDims = -1``; a crash cannot be caught, so the fields it trusts are checked here first.
    """
    with open(path, "rb") as handle:
        head = handle.read(HEADER_SCAN_BYTES)
    text = head.decode("latin-1")
    if path.suffix.lower() in (".mha", ".mhd"):
        fields = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if not sep:
                continue
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        dims_key, sizes_key, label = "NDims", "DimSize", "MetaImage"
    else:
        fields = {}
        for line in text.splitlines()[1:]:
            if not line.strip():
                break
            key, sep, value = line.partition(":")
            if sep and not value.startswith("="):
                fields[key.strip()] = value.strip()
        dims_key, sizes_key, label = "dimension", "sizes", "NRRD"
    try:
        dimensions = int(fields.get(dims_key, ""))
    except ValueError:
        raise BadInputError(f"{label} header: {dims_key} missing or not a whole number", path) from None
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise BadInputError(f"{label} header: {dims_key} = {dimensions}, expected 1 to {MAX_DIMENSIONS}", path)
    try:
        sizes = [int(value) for value in fields.get(sizes_key, "").split()]
    except ValueError:
        raise BadInputError(f"{label} header: {sizes_key} is not a list of whole numbers", path) from None
    if len(sizes) != dimensions or min(sizes) < 1:
        raise BadInputError(f"{label} header: {sizes_key} = {sizes} does not give {dimensions} positive sizes", path)
    channels = fields.get("ElementNumberOfChannels", "1")
    if channels.strip() not in ("1", ""):
        raise BadInputError(f"{label} header: ElementNumberOfChannels = {channels}; expected a scalar volume", path)


def _first_line(error: Exception) -> str:
    """SimpleITK errors are multi-line C++ dumps; keep the informative last non-empty line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[-1].startswith("Reason:"):  # a stale errno ITK appends; the file is there
        return "truncated or corrupt pixel data"
    return lines[-1][:200] if lines else type(error).__name__


def volume_to_image(volume: Volume) -> sitk.Image:
    """RAS volume -> SimpleITK image with LPS origin/direction (orthogonal affines only)."""
    affine = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    if np.abs(direction.T @ direction - np.eye(3)).max() > 1e-4:
        raise ValueError("ITK images cannot store a sheared (non-orthogonal) affine")
    image = _sitk().GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def write_itk(volume: Volume, path: str | Path) -> Path:
    """Write NRRD/MHA (one atomic file) or MHD (+ .raw: written in a temp folder, moved raw-first)."""
    path = Path(path)
    if not is_itk(path):
        raise ValueError(f"not an ITK file name (.nrrd, .mha, .mhd): {path}")
    image, sitk = volume_to_image(volume), _sitk()
    if path.suffix.lower() == ".mhd":
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=path.parent))
        try:
            sitk.WriteImage(image, str(staging / path.name))
            for written in sorted(staging.iterdir(), key=lambda p: p.suffix.lower() == ".mhd"):
                os.replace(written, path.parent / written.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path
    with atomic_path(path, suffix=path.suffix) as tmp:
        sitk.WriteImage(image, str(tmp))
    return path


def read_with_simpleitk(path: str | Path) -> Volume:
    """Reference reader: SimpleITK/GDCM's own interpretation of a file or DICOM folder, in RAS.

    Used by tests to check our readers against an independent implementation.
    """
    path, sitk = Path(path), _sitk()
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        names = reader.GetGDCMSeriesFileNames(str(path))
        reader.SetFileNames(names)
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    return _image_to_volume(image, path, "unknown", "simpleitk")
