"""The per-case transform: canonical orientation, one world grid, one intensity scale.

Every volume that enters training or evaluation goes through :func:`harmonise_volume`, so two scans
of different orientation, spacing and scanner end up voxel-comparable:

1. reorient to RAS+ by axis permutation/flips only (exact, no interpolation);
2. resample onto an axis-aligned RAS grid of ``size`` voxels at ``spacing`` mm, centred on the
   volume's world centre (this is resampling and centre crop/pad in one step, so the centre is kept
   exactly and nothing is interpolated twice); outside the scan the grid gets the background value
   (-1024 HU for CT, the volume minimum for MRI; 0 for labels);
3. map intensities to [-1, 1]: CT by a fixed HU window, MRI by robust percentiles. The mapping is
   returned so that :func:`invert_intensity` can take model outputs back to HU / scanner units.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from meddiff_cli.errors import BadInputError
from meddiff_cli.io.volume import Volume
from meddiff_cli.preprocess.settings import PreprocessSettings

CT_BACKGROUND_HU = -1024.0
FOREGROUND_FRACTION = 0.1
"""MRI percentiles are taken over the head/body: voxels brighter than p2 + 10 % of (p98 - p2), FSL BET's
robust intensity threshold, so the noisy air around the head does not drag the low percentile down."""
MIN_FOREGROUND_VOXELS = 0.01
"""If fewer than 1 % of the voxels pass the foreground test, all voxels are used instead."""


# ---------------------------------------------------------------------------------------------- geometry


def orientation_codes(affine: np.ndarray) -> str:
    """Axis codes of the closest canonical orientation, e.g. ``"LPS"`` for a typical DICOM series."""
    return "".join(nib.orientations.aff2axcodes(affine))


def reorient_to_ras(volume: Volume) -> Volume:
    """Permute/flip voxel axes so that i, j, k point (closest to) R, A, S. Exact: voxels are only moved.

    Same logic as ``nibabel.as_closest_canonical``; an oblique volume stays oblique (the resampling
    step takes it onto an axis-aligned grid).
    """
    ornt = nib.orientations.io_orientation(volume.affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return volume
    array = nib.orientations.apply_orientation(volume.array, ornt)  # a view: no copy of a big scan
    affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    return Volume(array, affine, volume.modality, dict(volume.metadata))


def world_centre(volume: Volume) -> np.ndarray:
    """World (RAS+, mm) position of the volume's centre: the middle of its voxel-centre extent."""
    middle = (np.asarray(volume.shape, dtype=np.float64) - 1.0) / 2.0
    return volume.affine[:3, :3] @ middle + volume.affine[:3, 3]


def target_grid(volume: Volume, settings: PreprocessSettings) -> np.ndarray:
    """Affine of the output grid: axis-aligned RAS+, ``settings.spacing``, centred on the volume's centre."""
    spacing = np.asarray(settings.spacing, dtype=np.float64)
    size = np.asarray(settings.size, dtype=np.float64)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = world_centre(volume) - spacing * (size - 1.0) / 2.0
    return affine


def resample_to_grid(
    volume: Volume,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    order: int,
    background: float,
    antialias: bool = True,
) -> np.ndarray:
    """Sample ``volume`` at the voxel centres of the grid (``affine``, ``shape``) in world space.

    ``order`` 1 is trilinear (images), 0 nearest neighbour (labels: only existing values appear).
    A grid point counts as inside the scan when it lies within the scan's voxels' full extent
    (half a voxel beyond the outer centres, as ITK does); outside it gets ``background``.
    With ``antialias`` and ``order`` > 0, a Gaussian (sigma = (factor - 1) / 2 input voxels, the
    scikit-image convention) first removes detail finer than the target spacing, so that
    downsampling a noisy scan does not alias.
    """
    # Output voxel -> input voxel: inv(A_in) @ A_out.
    grid_to_input = np.linalg.inv(volume.affine) @ np.asarray(affine, dtype=np.float64)
    matrix, offset = grid_to_input[:3, :3], grid_to_input[:3, 3]
    source = volume.array
    if order > 0 and antialias:
        # Input voxels per output voxel along each input axis (column norms of the inverse map).
        factors = np.linalg.norm(matrix, axis=1)
        sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
        if np.any(sigma > 0):
            source = ndimage.gaussian_filter(source.astype(np.float32, copy=False), sigma=sigma, mode="nearest")
    resampled = ndimage.affine_transform(
        source, matrix, offset=offset, output_shape=tuple(shape), order=order, mode="nearest", prefilter=False
    )
    outside = np.zeros(tuple(shape), dtype=bool)
    grid = [np.arange(n, dtype=np.float64) for n in shape]
    for axis, size in enumerate(volume.shape):
        coordinate = (
            matrix[axis, 0] * grid[0][:, None, None]
            + matrix[axis, 1] * grid[1][None, :, None]
            + matrix[axis, 2] * grid[2][None, None, :]
            + offset[axis]
        )
        outside |= (coordinate < -0.5) | (coordinate > size - 0.5)
    resampled[outside] = background
    return resampled


# --------------------------------------------------------------------------------------------- intensity


def background_value(array: np.ndarray, modality: str) -> float:
    """What lies outside the scan: air in HU for CT, the darkest voxel for MRI."""
    return CT_BACKGROUND_HU if modality == "ct" else float(np.min(array))


def intensity_mapping(array: np.ndarray, settings: PreprocessSettings) -> dict[str, Any]:
    """The mapping to [-1, 1] for one case, as stored in the manifest (enough to invert it)."""
    if settings.modality == "ct":
        return {"kind": "ct_window", "window": list(settings.window), "unit": "HU"}
    finite = array[np.isfinite(array)]
    low, top = (float(v) for v in np.percentile(finite, [2.0, 98.0]))
    foreground = finite[finite > low + FOREGROUND_FRACTION * (top - low)]
    if foreground.size < MIN_FOREGROUND_VOXELS * finite.size:
        foreground = finite
    v_lo, v_hi = (float(v) for v in np.percentile(foreground, settings.percentiles))
    if not v_hi > v_lo:
        raise BadInputError(f"MRI intensities are constant between the {settings.percentiles} percentiles")
    return {"kind": "percentile", "percentiles": list(settings.percentiles), "values": [v_lo, v_hi]}


def _mapping_range(mapping: dict[str, Any]) -> tuple[float, float]:
    """The physical values mapped to -1 and 1: the CT window; for MRI a case's own percentile ``values``
    (preprocess manifest), or the fixed ``output_range`` a model card maps generated MRI back to."""
    kind = mapping.get("kind")
    if kind == "ct_window":
        lo, hi = mapping["window"]
    elif kind == "percentile" and ("output_range" in mapping or "values" in mapping):
        lo, hi = mapping["output_range"] if "output_range" in mapping else mapping["values"]
    else:
        raise BadInputError(f"unknown or incomplete intensity mapping {mapping!r}")
    return float(lo), float(hi)


def apply_intensity(array: np.ndarray, mapping: dict[str, Any]) -> np.ndarray:
    """Map [lo, hi] linearly onto [-1, 1] and clip (float32)."""
    lo, hi = _mapping_range(mapping)
    scaled = (array.astype(np.float64) - lo) / (hi - lo) * 2.0 - 1.0
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def invert_intensity(array: np.ndarray, intensity_mapping: dict[str, Any]) -> np.ndarray:
    """Model space [-1, 1] back to HU (CT) or scanner units (MRI). Values clipped on the way in stay clipped."""
    lo, hi = _mapping_range(intensity_mapping)
    return ((np.asarray(array, dtype=np.float64) + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)


# ------------------------------------------------------------------------------------------------ cases


def harmonise_volume(volume: Volume, settings: PreprocessSettings) -> Volume:
    """Reorient, resample, crop/pad and intensity-map one image onto the settings' grid.

    Returns a float32 volume in [-1, 1] on an axis-aligned RAS+ grid whose centre is the input's
    world centre; ``metadata["intensity"]`` holds the mapping (see :func:`invert_intensity`).
    """
    settings = settings.resolved(volume.modality)
    if not np.all(np.isfinite(volume.array)):
        raise BadInputError("volume contains NaN or infinite voxels")
    canonical = reorient_to_ras(volume)
    mapping = intensity_mapping(canonical.array, settings)
    affine = target_grid(canonical, settings)
    background = background_value(canonical.array, settings.modality)
    resampled = resample_to_grid(canonical, affine, settings.size, order=1, background=background)
    array = apply_intensity(resampled, mapping)
    metadata = {**volume.metadata, "intensity": mapping, "orientation": "RAS"}
    return Volume(array, affine, settings.modality, metadata)


def harmonise_label(label: Volume, image: Volume, settings: PreprocessSettings) -> Volume:
    """Put a label map on the grid that :func:`harmonise_volume` gives ``image`` (nearest neighbour, pad 0).

    The label must cover the same voxels as the image (same shape and corners within half a voxel),
    as nnU-Net requires; anything else is almost always a mismatched pair.
    """
    settings = settings.resolved(image.modality)
    if label.shape != image.shape:
        raise BadInputError(f"label shape {label.shape} differs from image shape {image.shape}")
    tolerance = 0.5 * min(image.spacing)
    if np.max(np.abs(label.world_corners() - image.world_corners())) > tolerance:
        raise BadInputError("label geometry (affine) does not match the image's")
    values = label.array
    if not np.all(np.isfinite(values)) or np.any(values != np.rint(values)) or values.min() < 0 or values.max() > 255:
        raise BadInputError("label map must hold integers 0..255")
    canonical_image = reorient_to_ras(image)
    affine = target_grid(canonical_image, settings)
    array = resample_to_grid(reorient_to_ras(label), affine, settings.size, order=0, background=0.0)
    return Volume(np.rint(array).astype(np.uint8), affine, settings.modality, {"kind": "label"})
