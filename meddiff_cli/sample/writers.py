"""From model space to files: intensity inversion, geometry, and the NIfTI / DICOM / npy writers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from meddiff_cli.errors import BadInputError, ModelError
from meddiff_cli.fsutil import atomic_path, sha256_file
from meddiff_cli.io.nifti import write_nifti
from meddiff_cli.io.volume import Volume
from meddiff_cli.preprocess.transform import invert_intensity


def centred_ras_affine(shape: tuple[int, ...] | list[int], spacing: tuple[float, ...] | list[float]) -> np.ndarray:
    """Axis-aligned RAS+ voxel→mm affine with the volume centre at the world origin (axial slices along k)."""
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    affine = np.diag([*spacing_arr, 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * spacing_arr
    return affine


def to_physical(model_space: np.ndarray, mapping: dict[str, Any]) -> np.ndarray:
    """[-1, 1] → physical units with the card's mapping (CT window back to HU; MRI to its output range, a.u.)."""
    try:
        return invert_intensity(np.clip(model_space, -1.0, 1.0), mapping)
    except (BadInputError, TypeError, ValueError) as error:
        raise ModelError(f"model card has an unusable intensity mapping ({error})") from None


def write_output(volume: Volume, path: Path, fmt: str, model_name: str, index: int) -> None:
    """Write one finished volume under its final name (atomically, whatever the format)."""
    if fmt == "nifti":
        write_nifti(volume, path, dtype="int16" if volume.modality == "ct" else "float32")
    elif fmt == "npy":
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, volume.array.astype(np.float32, copy=False))
    else:
        from meddiff_cli.io import write_dicom_series

        write_dicom_series(
            volume, path, modality=volume.modality, model_name=model_name,
            series_description=f"SYNTHETIC {volume.modality.upper()} {index:04d} model {model_name} (meddiff)",
        )


def write_label_output(label: Volume, path: Path, fmt: str, names: dict[int, str], image_path: Path,
                       model_name: str) -> None:
    """Write one label map beside its image: uint8 NIfTI, npy, or a DICOM-SEG referencing the image series."""
    if fmt == "nifti":
        write_nifti(label, path, dtype="uint8")  # marked synthetic in its header like the image
    elif fmt == "npy":
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, label.array.astype(np.uint8, copy=False))
    else:
        from meddiff_cli.io.dicom.seg import write_dicom_seg

        write_dicom_seg(label, names, image_path, path, model_name)


def is_meddiff_series(folder: Path) -> bool:
    """True when every entry of ``folder`` is a DICOM file meddiff wrote as synthetic (its Manufacturer mark):
    the only kind of folder ``--overwrite`` may delete to put a new series in its place."""
    import pydicom

    from meddiff_cli.io.dicom.writer import MANUFACTURER_SYNTHETIC

    entries = list(folder.iterdir())
    for entry in entries:
        if not entry.is_file() or entry.is_symlink():
            return False
        try:
            header = pydicom.dcmread(entry, stop_before_pixels=True, specific_tags=["Manufacturer"])
        except Exception:  # noqa: BLE001 - anything unreadable is not ours
            return False
        if header.get("Manufacturer") != MANUFACTURER_SYNTHETIC:
            return False
    return bool(entries)


def output_sha256(path: Path) -> str:
    """sha256 of a file, or of a DICOM folder (over its sorted file names and their sha256)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()
