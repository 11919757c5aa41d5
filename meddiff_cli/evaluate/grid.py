"""Which grid to harmonise both sets onto, taken from the data, and how much of each set it crops.

Distances change with the grid (a 192 mm crop of a 384 mm chest drops the body wall; a coarser grid
smooths texture away), so the default is the grid the synthetic volumes were *made* on — they are then
compared at their own resolution and field of view, with nothing interpolated away:

1. ``--size`` and ``--spacing`` both given: that grid;
2. SYNTH is a ``meddiff sample`` folder: the grid in its ``manifest.json`` (written from the model card;
   the card itself when the manifest lacks it);
3. every SYNTH file header shows one grid and REAL's headers the same spacing: that grid;
4. otherwise REAL's grid: its one grid when all REAL headers agree, else REAL's median spacing and median
   field of view (at most :data:`MAX_AUTO_SIZE` voxels per axis; coarser spacing if needed).

Given only one of ``--size``/``--spacing``, the other keeps the data grid's field of view. The grid is
centred on each volume, so a grid smaller than a volume's field of view crops it: more than
:data:`CROP_WARN_FRACTION` of any volume's field of view gives a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meddiff_cli.evaluate.loading import CaseRef
from meddiff_cli.evaluate.options import EvaluateOptions
from meddiff_cli.preprocess import DEFAULT_SIZE, DEFAULT_SPACING_MM

SAMPLE_MANIFEST_FORMAT = "meddiff-synthetic"
MAX_AUTO_SIZE = 128
"""A grid taken from REAL's field of view has at most this many voxels per axis (memory: n volumes in RAM)."""
CROP_WARN_FRACTION = 0.05
"""Warn when the grid cuts away more than this fraction of a volume's field of view (by volume)."""
SPACING_TOLERANCE = 0.01
DICOM_GEOMETRY_SAMPLE = 8
"""DICOM series have no cheap header: at most this many per set are read to learn their geometry."""


@dataclass(frozen=True)
class Geometry:
    """A volume's grid in RAS axis order: voxels, voxel size (mm) and field of view (mm) along R, A, S."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    extent_mm: tuple[float, float, float]


@dataclass
class GridChoice:
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    source: str
    reason: str
    crop: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"size": list(self.size), "spacing_mm": list(self.spacing), "source": self.source,
                "reason": self.reason, "crop": self.crop, "warnings": self.warnings}


# ------------------------------------------------------------------------------------------- geometry


def geometry_from_affine(shape: tuple[int, ...], affine: np.ndarray) -> Geometry:
    import nibabel as nib

    matrix = np.asarray(affine, np.float64)[:3, :3]
    ornt = nib.orientations.io_orientation(np.asarray(affine, np.float64))
    voxel_axis = {int(world): v for v, (world, _) in enumerate(ornt)}
    spacing = np.linalg.norm(matrix, axis=0)
    extent = np.abs(matrix) @ np.asarray(shape[:3], np.float64)  # bounding box of the voxels' full extent
    return Geometry(
        tuple(int(shape[voxel_axis[a]]) for a in range(3)),  # type: ignore[arg-type]
        tuple(round(float(spacing[voxel_axis[a]]), 6) for a in range(3)),  # type: ignore[arg-type]
        tuple(float(e) for e in extent),  # type: ignore[arg-type]
    )


def read_geometry(ref: CaseRef, modality: str) -> Geometry | None:
    """The grid of one input from its header (whole volume for DICOM); None when it cannot be read."""
    path = ref.source.path
    try:
        if ref.source.format == "nifti":
            import nibabel as nib

            image = nib.load(str(path))
            return geometry_from_affine(image.shape, image.affine)
        if ref.source.format in ("nrrd", "mha", "mhd"):
            import SimpleITK as sitk

            from meddiff_cli.io.volume import LPS_TO_RAS

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            direction = np.asarray(reader.GetDirection(), np.float64).reshape(3, 3) * np.asarray(reader.GetSpacing())
            affine = np.eye(4)
            affine[:3, :3] = direction
            return geometry_from_affine(tuple(reader.GetSize()), LPS_TO_RAS @ affine)
        from meddiff_cli.io import read_case

        volume = read_case(ref.source, modality)
        return geometry_from_affine(volume.shape, volume.affine)
    except Exception:  # noqa: BLE001 - an unreadable header is reported when the volume itself is loaded
        return None


def set_geometries(refs: list[CaseRef], modality: str) -> list[Geometry]:
    dicom_left = DICOM_GEOMETRY_SAMPLE
    found = []
    for ref in refs:
        if ref.source.format == "dicom":
            if dicom_left == 0:
                continue
            dicom_left -= 1
        geometry = read_geometry(ref, modality)
        if geometry is not None:
            found.append(geometry)
    return found


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return bool(np.allclose(a, b, rtol=SPACING_TOLERANCE, atol=0.0))


def _uniform(geometries: list[Geometry]) -> Geometry | None:
    """The one grid all geometries share (same shape and spacing), else None."""
    if not geometries:
        return None
    first = geometries[0]
    if all(g.shape == first.shape and _same(g.spacing, first.spacing) for g in geometries):
        return first
    return None


# ------------------------------------------------------------------------------------------ the choice


def _sample_manifest_grid(synth_root: Path, modality: str, cache: str | Path | None) -> tuple[Any, Any, str] | None:
    """(shape, spacing, source) from a ``meddiff sample`` manifest in SYNTH, or from the card of its model."""
    path = synth_root / "manifest.json" if synth_root.is_dir() else synth_root
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != SAMPLE_MANIFEST_FORMAT:
        return None
    volume = manifest.get("volume") or {}
    if volume.get("shape") and volume.get("spacing"):
        return volume["shape"], volume["spacing"], f"sample manifest {path}"
    name = (manifest.get("model") or {}).get("name")
    if not name:
        return None
    from meddiff_cli.model.card import ModelCard
    from meddiff_cli.paths import models_dir

    try:
        card = ModelCard.load(models_dir(cache) / str(name))
        return card.volume["shape"], card.spacing(modality), f"model card of {name!r}"
    except Exception:  # noqa: BLE001 - a missing card only means this source is not available
        return None


def _real_grid(geometries: list[Geometry], modality: str) -> tuple[tuple, tuple, str]:
    one = _uniform(geometries)
    if one is not None:
        return one.shape, one.spacing, "REAL's own grid (all REAL headers agree)"
    if not geometries:
        spacing = (DEFAULT_SPACING_MM[modality],) * 3
        return (DEFAULT_SIZE,) * 3, spacing, "preprocess defaults (no readable REAL header geometry)"
    spacing = np.median([g.spacing for g in geometries], axis=0)
    extent = np.median([g.extent_mm for g in geometries], axis=0)
    spacing = spacing * max(1.0, float(np.max(extent / spacing)) / MAX_AUTO_SIZE)
    size = np.maximum(1, np.round(extent / spacing)).astype(int)
    return (tuple(int(s) for s in size), tuple(round(float(s), 4) for s in spacing),
            f"REAL's median spacing and field of view (headers differ; at most {MAX_AUTO_SIZE} voxels per axis)")


def choose_grid(real_refs: list[CaseRef], synth_refs: list[CaseRef], synth_root: Path, modality: str,
                options: EvaluateOptions) -> GridChoice:
    """The harmonisation grid (see the module docstring), why it was chosen, and what it crops."""
    real_geometries = set_geometries(real_refs, modality)
    synth_geometries = set_geometries(synth_refs, modality)
    from_manifest = _sample_manifest_grid(Path(synth_root), modality, options.cache)
    synth_one = _uniform(synth_geometries)
    real_spacings = {g.spacing for g in real_geometries}
    if from_manifest is not None:
        shape, spacing, where = from_manifest
        source, reason = "synthetic", f"the synthetic set's own grid ({where})"
    elif synth_one is not None and real_geometries and all(_same(s, synth_one.spacing) for s in real_spacings):
        shape, spacing = synth_one.shape, synth_one.spacing
        source, reason = "synthetic", "the synthetic set's own grid (file headers; REAL has the same spacing)"
    else:
        shape, spacing, why = _real_grid(real_geometries, modality)
        source, reason = "real", why
    size = tuple(int(v) for v in np.broadcast_to(np.asarray(shape), (3,)))
    spacing_mm = tuple(float(v) for v in np.broadcast_to(np.asarray(spacing, np.float64), (3,)))
    size, spacing_mm, source, reason = _apply_overrides(size, spacing_mm, source, reason, options)
    choice = GridChoice(size, spacing_mm, source, reason)  # type: ignore[arg-type]
    for role, geometries in (("REAL", real_geometries), ("SYNTH", synth_geometries)):
        choice.crop[role.lower() if role == "REAL" else "synthetic"] = crop_summary(geometries, size, spacing_mm)
        worst = choice.crop["real" if role == "REAL" else "synthetic"]["max_fraction"]
        if worst is not None and worst > CROP_WARN_FRACTION:
            choice.warnings.append(
                f"the {'x'.join(map(str, size))} grid at {'/'.join(f'{s:g}' for s in spacing_mm)} mm "
                f"({'x'.join(f'{n * s:g}' for n, s in zip(size, spacing_mm))} mm) crops up to {100 * worst:.0f} % "
                f"of {role}'s field of view; pass --size/--spacing to cover it"
            )
    return choice


def _apply_overrides(size, spacing, source, reason, options: EvaluateOptions):
    """``--size``/``--spacing``: both replace the grid; one alone keeps the data grid's field of view."""
    from meddiff_cli.preprocess.transform import PreprocessSettings

    if options.size is None and options.spacing is None:
        return size, spacing, source, reason
    fov = np.asarray(size) * np.asarray(spacing)
    checked = PreprocessSettings(size=options.size or size, spacing=options.spacing or spacing)  # validates
    if options.size is not None and options.spacing is not None:
        return checked.size, checked.spacing, "command line", "--size and --spacing from the command line"
    if options.size is not None:
        new_spacing = tuple(round(float(v), 6) for v in fov / np.asarray(checked.size))
        return checked.size, new_spacing, source, f"--size from the command line, field of view of {reason}"
    new_size = tuple(int(v) for v in np.maximum(1, np.round(fov / np.asarray(checked.spacing))))
    return new_size, checked.spacing, source, f"--spacing from the command line, field of view of {reason}"


def crop_summary(geometries: list[Geometry], size: tuple[int, ...], spacing: tuple[float, ...]) -> dict[str, Any]:
    """Fraction of each volume's field of view (by volume) outside the grid centred on it: max, median, count."""
    if not geometries:
        return {"max_fraction": None, "median_fraction": None, "volumes_cropped": None, "checked": 0}
    grid = np.asarray(size, np.float64) * np.asarray(spacing, np.float64)
    fractions = np.asarray([1.0 - float(np.prod(np.minimum(1.0, grid / np.asarray(g.extent_mm)))) for g in geometries])
    return {
        "max_fraction": round(float(fractions.max()), 4),
        "median_fraction": round(float(np.median(fractions)), 4),
        "volumes_cropped": int(np.sum(fractions > CROP_WARN_FRACTION)),
        "checked": len(geometries),
    }
