"""Preview PNGs (training progress, ``sample --preview``): orthogonal mid-slices in radiological display convention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from meddiff_cli.fsutil import atomic_path

PREVIEW_DIR = "previews"


def mid_slices(volume: np.ndarray, sagittal_offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial, coronal and sagittal mid-slices of a RAS+ volume as displayed: anterior/superior up, patient
    right on the image left (radiological convention), anterior on the left of the sagittal plane.

    ``sagittal_offset`` moves the sagittal plane off the midline (a brain's midline is the CSF of the
    interhemispheric fissure; a few voxels aside show the folded medial cortex).
    """
    x, y, z = volume.shape
    axial = np.fliplr(np.flipud(volume[:, :, z // 2].T))
    coronal = np.fliplr(np.flipud(volume[:, y // 2, :].T))
    sagittal = np.fliplr(np.flipud(volume[x // 2 + sagittal_offset, :, :].T))
    return axial, coronal, sagittal


def orthogonal_slices(volume: np.ndarray) -> np.ndarray:
    """Axial | coronal | sagittal mid-slices of a volume in [-1, 1], side by side, as one float image padded
    to a common height."""
    planes = mid_slices(volume)
    height = max(p.shape[0] for p in planes)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 1)), constant_values=-1.0) for p in planes]
    return np.concatenate(padded, axis=1)


def save_preview(rows: list[list[np.ndarray]], path: Path) -> Path:
    """Write a grid: each row is a list of volumes (e.g. input | reconstruction), each shown as 3 slices."""
    images = [np.concatenate([orthogonal_slices(v) for v in row], axis=1) for row in rows]
    width = max(image.shape[1] for image in images)
    grid = np.concatenate([np.pad(image, ((0, 1), (0, width - image.shape[1])), constant_values=-1.0)
                           for image in images], axis=0)
    pixels = np.clip((grid + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    scale = max(1, 256 // max(pixels.shape[0], 1))  # small test volumes are hard to see at 1:1
    picture = Image.fromarray(pixels, mode="L").resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")
    return path
