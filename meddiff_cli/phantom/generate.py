"""One phantom volume and its label map, with real geometry: the entry point other stages call."""

from __future__ import annotations

import numpy as np

from meddiff_cli.errors import UsageError
from meddiff_cli.io.volume import Volume
from meddiff_cli.phantom import ct, mri
from meddiff_cli.phantom.options import CONTRASTS, DEFAULTS
from meddiff_cli.phantom.shapes import block_labels, block_mean

LABELS: dict[str, dict[str, int]] = {"ct": dict(ct.CT_LABELS), "mri": dict(mri.MRI_LABELS)}
FIELD_OF_VIEW_MM = {"ct": ct.CT_FOV_MM, "mri": mri.MRI_FOV_MM}
SUPERSAMPLE_MAX_SIZE = 80
"""Grids up to this many voxels per axis are rendered 2x finer and block-averaged (partial volume).
Larger grids are rendered at their own resolution: their voxels are small enough that the one-voxel
distance ramp of :func:`shapes.soft` already gives the partial-volume edge, at 1/8 of the cost."""


def phantom_geometry(modality: str, size, spacing=None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Output shape and RAS+ affine: axial slices (k = inferior -> superior), centred on the origin."""
    shape = (size,) * 3 if np.isscalar(size) else tuple(size)
    if len(shape) != 3 or any(int(n) < 8 for n in shape):
        raise UsageError(f"phantom size must be one or three integers >= 8, got {size!r}")
    shape = tuple(int(n) for n in shape)
    if spacing is None:
        spacing = FIELD_OF_VIEW_MM[modality] / max(shape)
    spacing_xyz = np.broadcast_to(np.asarray(spacing, float), (3,)).copy()
    if np.any(spacing_xyz <= 0) or not np.all(np.isfinite(spacing_xyz)):
        raise UsageError(f"phantom spacing must be positive, got {spacing!r}")
    affine = np.diag([*spacing_xyz, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * spacing_xyz
    return shape, affine  # type: ignore[return-value]


def render_axes(shape, affine, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates of the sub-voxel centres of a ``factor``-times finer grid, per axis."""
    axes = []
    for axis, n in enumerate(shape):
        step, origin = affine[axis, axis], affine[axis, 3]
        axes.append(origin + step * ((np.arange(n * factor) + 0.5) / factor - 0.5))
    return tuple(axes)  # type: ignore[return-value]


def generate_phantom(
    modality: str,
    seed: int,
    size: int | tuple[int, int, int] = DEFAULTS.size,
    spacing: float | tuple[float, float, float] | None = DEFAULTS.spacing,
    contrast: str = DEFAULTS.contrast,
    nodules: bool = DEFAULTS.nodules,
) -> tuple[Volume, Volume]:
    """A synthetic subject: (image, labels). CT image in HU; MRI in arbitrary units (~0-1000).

    The same ``seed`` gives the same subject (and, at the same size, identical arrays); anatomy is
    defined in millimetres, so a seed describes the same patient at any grid size.
    """
    modality = modality.lower()
    if modality not in LABELS:
        raise UsageError(f"phantom modality must be 'ct' or 'mri', got {modality!r}")
    if contrast not in CONTRASTS:
        raise UsageError(f"MRI contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    shape, affine = phantom_geometry(modality, size, spacing)
    factor = 2 if max(shape) <= SUPERSAMPLE_MAX_SIZE else 1
    axes = render_axes(shape, affine, factor)
    spacing_xyz = np.abs(np.diag(affine)[:3])
    width = float(spacing_xyz.min()) / factor
    anatomy_rng, tree_rng, texture_rng, noise_rng = (np.random.default_rng([int(seed), stream]) for stream in range(4))
    if modality == "ct":
        subject = ct.chest_subject(anatomy_rng, tree_rng, nodules, float(spacing_xyz.min()))
        image, labels = ct.render_chest(subject, axes, width, texture_rng)
        image, labels = block_mean(image, factor), block_labels(labels, factor, max(ct.CT_LABELS.values()))
        image = ct.finish_ct(image, subject, noise_rng)
        extra = {"inspiration": round(float(subject.inspiration), 3), "nodule_count": len(subject.nodules)}
    else:
        subject = mri.brain_subject(anatomy_rng, contrast)
        image, labels = mri.render_brain(subject, axes, width, texture_rng)
        image, labels = block_mean(image, factor), block_labels(labels, factor, max(mri.MRI_LABELS.values()))
        image = mri.finish_mri(image, subject, noise_rng)
        extra = {"contrast": contrast}
    metadata = {"source_format": "phantom", "phantom": True, "synthetic": True, "phantom_seed": int(seed), **extra}
    image_volume = Volume(image.astype(np.float32), affine, modality, metadata)
    label_volume = Volume(labels.astype(np.uint8), affine.copy(), modality, {**metadata, "kind": "labels"})
    return image_volume, label_volume
