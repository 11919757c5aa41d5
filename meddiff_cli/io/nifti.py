"""NIfTI reading and writing (nibabel). World coordinates are RAS+ already: no conversion needed."""

from __future__ import annotations

from pathlib import Path

import contextlib
import gzip
from collections.abc import Iterator

import nibabel as nib
import numpy as np
from nibabel.imageglobals import logger as nibabel_logger

from meddiff_cli.errors import BadInputError, InputNotFoundError
from meddiff_cli.fsutil import atomic_path
from meddiff_cli.io.limits import check_affine, check_finite, check_voxel_count
from meddiff_cli.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SYNTHETIC_MARK = "meddiff synthetic"  # start of descrip and all of aux_file in synthetic volumes


def read_nifti(path: str | Path, modality: str = "unknown") -> Volume:
    """Read a 3D NIfTI file (a 4D file with one volume is squeezed) as float32.

    The header's size is checked before the (lazy) pixel read, which is then forced here so a
    truncated file fails now, as a BadInputError, not later inside another stage.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError("no such file", path)
    try:
        with _quiet_nibabel():
            image = nib.load(str(path))
            affine = image.affine
    except Exception as error:  # nibabel raises many types for corrupt files
        raise BadInputError(f"unreadable NIfTI header ({type(error).__name__}: {_short(error)})", path) from None
    check_voxel_count(tuple(image.shape), path)
    _check_data_size(image, path)
    try:
        with _quiet_nibabel(), np.errstate(all="ignore"):
            data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:
        raise BadInputError(f"unreadable NIfTI data, truncated? ({type(error).__name__}: {_short(error)})", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadInputError(f"expected a 3D volume, got shape {data.shape}", path)
    check_finite(data, path)
    check_affine(affine, path)
    return Volume(data, affine, modality, {"source_format": "nifti"})


GZIP_CHECK_BYTES = 256 * 2**20  # claims above this are verified by streaming before nibabel allocates them


def _check_data_size(image: nib.Nifti1Image, path: Path) -> None:
    """Refuse a file whose pixel data is shorter than its header claims, before allocating the claim.

    nibabel allocates the full claimed size and only then finds the file short: a 400-byte file can
    cost gigabytes. Uncompressed files are checked from their size; a gzip file claiming more than
    ``GZIP_CHECK_BYTES`` is decompressed once in small chunks, counting bytes, nothing kept.
    """
    header = image.header
    try:
        needed = int(header.get_data_offset()) + int(np.prod(image.shape, dtype=object)) * header.get_data_dtype().itemsize
    except Exception:
        return  # unusual headers are left to nibabel, which raises on them
    name = str(path).lower()
    if not name.endswith(".gz"):
        available = path.stat().st_size
    elif needed > GZIP_CHECK_BYTES:
        available = _gzip_length(path, needed)
    else:
        return
    if available < needed:
        raise BadInputError(f"truncated NIfTI: header needs {needed:,} bytes, the file holds {available:,}", path)


def _gzip_length(path: Path, enough: int, chunk: int = 1 << 20) -> int:
    """Uncompressed length of a gzip file, counting no further than ``enough``; corrupt streams count as 0."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < enough and (block := stream.read(chunk)):
                total += len(block)
    except (OSError, EOFError, ValueError):
        return 0
    return total


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel logs header repairs ("sizeof_hdr should be 348") to stderr; the CLI's stderr is ours.

    (nibabel's own LoggingOutputSuppressor leaves the logger handler-less, so Python's last-resort
    handler prints anyway.)
    """
    previous = nibabel_logger.disabled
    nibabel_logger.disabled = True
    try:
        yield
    finally:
        nibabel_logger.disabled = previous


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


def write_nifti(volume: Volume, path: str | Path, dtype: str = "float32") -> Path:
    """Write atomically. ``dtype='int16'`` rounds and clips (CT in HU); labels may use ``'uint8'``."""
    path = Path(path)
    if dtype == "int16":
        data = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
    elif dtype == "uint8":
        data = np.clip(np.rint(volume.array), 0, 255).astype(np.uint8)
    elif dtype == "float32":
        data = volume.array.astype(np.float32, copy=False)
    else:
        raise ValueError(f"unsupported NIfTI dtype {dtype!r}")
    image = nib.Nifti1Image(data, volume.affine)
    image.header.set_xyzt_units("mm")
    if volume.metadata.get("synthetic"):
        _mark_synthetic(image.header, volume.metadata)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(image, str(tmp))
    return path


def _mark_synthetic(header: nib.Nifti1Header, metadata: dict) -> None:
    """Say in the header itself that no patient was scanned: ``descrip`` (80 characters, shown by most viewers),
    ``aux_file`` and ``intent_name``, so the mark survives renaming and copying without the manifest."""
    source = f"model {metadata['model']}" if metadata.get("model") else "procedural phantom" if metadata.get(
        "phantom") else "generated"
    header["descrip"] = f"{SYNTHETIC_MARK} ({source}): not a real patient scan"[:80].encode("ascii", "replace")
    header["aux_file"] = SYNTHETIC_MARK.encode("ascii")
    header.set_intent("none", (), name="synthetic")
