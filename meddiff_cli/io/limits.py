"""Guards every reader applies: refuse absurd sizes before allocating, refuse non-finite voxels after."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from meddiff_cli.errors import BadInputError

MAX_VOXELS_ENV = "MEDDIFF_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 2**30


def max_voxels() -> int:
    """Largest voxel count a header may claim (``MEDDIFF_MAX_VOXELS``, default 2**30)."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(raw)
    except ValueError:
        raise BadInputError(f"{MAX_VOXELS_ENV}={raw!r} is not an integer") from None
    return max(value, 1)


def check_voxel_count(shape: tuple[int, ...] | int, path: str | Path) -> None:
    """Refuse a volume whose header claims more voxels than allowed, before any pixel is read.

    A corrupt or hostile header can claim terabytes; allocating first would kill the machine.
    """
    if not isinstance(shape, (int, np.integer)) and any(int(s) <= 0 for s in shape):
        raise BadInputError(f"header claims an empty volume (size {tuple(int(s) for s in shape)})", path)
    count = int(shape) if isinstance(shape, (int, np.integer)) else int(np.prod([int(s) for s in shape], dtype=object))
    limit = max_voxels()
    if count > limit:
        raise BadInputError(
            f"header claims {count:,} voxels, more than the limit {limit:,} (set {MAX_VOXELS_ENV} to raise it)", path
        )


def check_finite(array: np.ndarray, path: str | Path) -> None:
    """NaN/Inf voxels poison every later stage (normalisation, losses): refuse them at the edge."""
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise BadInputError(f"{bad} voxel(s) are NaN or infinite", path)


def check_affine(affine: np.ndarray, path: str | Path) -> None:
    """A voxel-to-world matrix with NaN/Inf or a zero-length axis cannot be resampled: refuse it here."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise BadInputError("the voxel-to-world geometry (affine) has NaN or infinite values", path)
    with np.errstate(all="ignore"):
        determinant = float(np.linalg.det(affine[:3, :3]))
    if not np.isfinite(determinant) or abs(determinant) < 1e-12:
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        raise BadInputError(f"degenerate geometry: voxel axes of length {np.round(spacing, 6).tolist()} mm span no volume", path)
