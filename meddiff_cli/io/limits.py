"""Guards every reader applies: refuse absurd sizes before allocating, refuse non-finite voxels after."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from meddiff_cli.errors import BadInputError
from meddiff_cli.paths import MAX_VOXELS_ENV, max_voxels_setting

DEFAULT_MAX_VOXELS = 2**30


def max_voxels() -> int:
    """Largest voxel count a header may claim (``MEDDIFF_MAX_VOXELS``, default 2**30)."""
    raw = max_voxels_setting()
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


RESAMPLE_BYTES_PER_VOXEL = 48
"""Peak bytes per output voxel while one case is harmonised: the float32 result, the float64 grid
coordinates of ``resample_to_grid`` plus their broadcast temporaries, the outside mask, the intensity-mapped
copy and the writer's cast (measured from the code path, rounded up)."""


def available_memory_bytes() -> int | None:
    """RAM that can be used without swapping: MemAvailable (Linux), else free pages from sysconf; None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed_bytes: int, what: str, hint: str) -> None:
    """Refuse up front (UsageError, exit 2) a job whose estimated peak exceeds the available RAM.

    Running out of memory half-way gets the process killed by the OOM killer (no message, exit 137),
    possibly hours in; an estimate checked before any work is read gives one clear line instead.
    """
    from meddiff_cli.errors import UsageError

    available = available_memory_bytes()
    if available is None or needed_bytes <= available:
        return
    gib = 1024**3
    raise UsageError(f"{what} needs about {needed_bytes / gib:.1f} GB of memory but only {available / gib:.1f} GB "
                     f"is available; {hint}")


def harmonise_memory(size: tuple[int, ...], workers: int) -> int:
    """Estimated peak bytes of ``workers`` cases harmonised at once onto a grid of ``size`` voxels."""
    voxels = int(np.prod([int(s) for s in size], dtype=object))
    return workers * voxels * RESAMPLE_BYTES_PER_VOXEL
