"""NIfTI reading and writing (nibabel). World coordinates are RAS+ already: no conversion needed."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from meddiff_cli.errors import BadInputError, InputNotFoundError
from meddiff_cli.fsutil import atomic_path
from meddiff_cli.io.limits import check_finite, check_voxel_count
from meddiff_cli.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path, modality: str = "unknown") -> Volume:
    """Read a 3D NIfTI file (a 4D file with one volume is squeezed) as float32.

    The header's size is checked before the (lazy) pixel read, which is then forced here so a
    truncated file fails now, as a BadInputError, not later inside another stage.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError("no such file", path)
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for corrupt files
        raise BadInputError(f"unreadable NIfTI header ({type(error).__name__}: {_short(error)})", path) from None
    check_voxel_count(tuple(image.shape), path)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:
        raise BadInputError(f"unreadable NIfTI data, truncated? ({type(error).__name__}: {_short(error)})", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadInputError(f"expected a 3D volume, got shape {data.shape}", path)
    check_finite(data, path)
    return Volume(data, image.affine, modality, {"source_format": "nifti"})


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
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(image, str(tmp))
    return path
