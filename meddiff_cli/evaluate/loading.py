"""Turning REAL / SYNTH / TRAIN inputs into harmonised volume sets plus the per-volume statistics.

Inputs are folders (searched recursively with :func:`meddiff_cli.io.discover_cases`) or preprocess
``manifest.json`` files (or folders holding one). Every volume goes through the shared
:func:`meddiff_cli.preprocess.harmonise_volume` — the same reorientation, resampling, crop/pad and
intensity mapping that training uses — so all metrics compare voxel-aligned volumes on one scale.
Volumes that come from a preprocess manifest are already in model space; their recorded intensity
mapping is inverted first so they are harmonised exactly like raw scans.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meddiff_cli.errors import BadInputError, InputNotFoundError, MeddiffError, UsageError
from meddiff_cli.evaluate.frd import frd_features
from meddiff_cli.evaluate.metrics import intensity_histogram, slice_differences
from meddiff_cli.evaluate.radiomics import radiomics_features
from meddiff_cli.io import CaseSource, discover_cases, read_case, read_volume
from meddiff_cli.io.volume import Volume
from meddiff_cli.modality import MODALITIES
from meddiff_cli.preprocess import (
    MANIFEST_NAME,
    PreprocessSettings,
    harmonise_label,
    harmonise_volume,
    invert_intensity,
    load_manifest,
)
from meddiff_cli.preprocess.manifest import FORMAT as PREPROCESS_FORMAT
from meddiff_cli.signals import interruptible_process_pool

ProgressFn = Callable[[str, int, int], None]
CT_AIR_THRESHOLD_HU = -500.0
"""Modality ``auto`` on files without a DICOM header: a volume with voxels below this is CT (air in HU)."""


@dataclass(frozen=True)
class CaseRef:
    """One volume to load: where it is, how to name it in reports, and what travels with it."""

    name: str
    source: CaseSource
    mapping: dict[str, Any] | None = None  # set when the file is already in model space (preprocess output)
    label: Path | None = None


@dataclass
class VolumeSet:
    """A harmonised set (``arrays``: ``[n, X, Y, Z]`` float32 in [-1, 1]) and its per-volume statistics.

    ``features``: per-volume features the workers computed (radiomics-v1 or FRD), named ``feature_names``;
    ``labels``: label maps on the same grid (uint8 values, names in ``label_names``) when every volume has one
    and they were asked for (the anatomy check).
    """

    role: str
    root: Path
    names: list[str]
    arrays: np.ndarray
    slice_diffs: np.ndarray  # [n, 3]
    histograms: np.ndarray  # [n, bins]
    features: np.ndarray | None = None  # [n, F]
    feature_names: list[str] | None = None
    label_volumes_ml: list[dict[str, float] | None] = field(default_factory=list)
    labels: np.ndarray | None = None  # [n, X, Y, Z] uint8
    label_names: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


# ------------------------------------------------------------------------------------------ discovery


def _preprocess_manifest_path(path: Path) -> Path | None:
    candidate = path / MANIFEST_NAME if path.is_dir() else path
    if candidate.is_file() and candidate.suffix == ".json":
        if path.is_file():
            return candidate  # an explicitly named .json must be a valid manifest (load_manifest says why not)
        try:
            if json.loads(candidate.read_text(encoding="utf-8")).get("format") == PREPROCESS_FORMAT:
                return candidate
        except (OSError, ValueError, AttributeError):
            return None
    return None


def _label_names(root: Path) -> dict[int, str]:
    """``{value: name}`` from a manifest's ``labels`` object ({name: value}) beside the images, if any."""
    manifest = (root if root.is_dir() else root.parent) / MANIFEST_NAME
    try:
        labels = json.loads(manifest.read_text(encoding="utf-8")).get("labels") or {}
        return {int(value): str(name) for name, value in labels.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _label_beside(image: Path) -> Path | None:
    """nnU-Net layout: ``X/images/<case>.nii.gz`` has its label map at ``X/labels/<case>.nii.gz``."""
    if image.parent.name != "images":
        return None
    candidate = image.parent.parent / "labels" / image.name
    return candidate if candidate.is_file() else None


def _synthetic_manifest_cases(folder: Path) -> list[CaseRef] | None:
    """The volumes a ``meddiff sample`` manifest lists (with their ``--with-labels`` NIfTI label maps), or None.

    Listing by manifest keeps ``labels/`` out of the volumes: a recursive search would read every label map
    as one more synthetic volume."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        if manifest.get("format") != "meddiff-synthetic":
            return None
        entries = [e for e in manifest["files"] if (folder / e["file"]).exists()]
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None
    refs = []
    for entry in entries:
        for case in discover_cases([folder / entry["file"]]):
            label = folder / entry["label"] if str(entry.get("label") or "").endswith((".nii", ".nii.gz")) else None
            refs.append(CaseRef(entry["file"], case, None, label if label is not None and label.is_file() else None))
    return refs


def list_cases(path: str | Path, role: str) -> list[CaseRef]:
    """All volumes of one input (folder or manifest), with names relative to it; at least 2 required."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{role} input does not exist", path)
    manifest_path = _preprocess_manifest_path(path)
    refs: list[CaseRef] = []
    if manifest_path is not None:
        manifest = load_manifest(manifest_path)
        folder = manifest_path.parent
        for case in manifest["cases"]:
            image = folder / case["image"]
            source = CaseSource(case["case_id"], image, "nifti")
            label = folder / case["label"] if case.get("label") else None
            refs.append(CaseRef(case["image"], source, case["intensity"], label))
    elif path.is_dir() and (listed := _synthetic_manifest_cases(path)) is not None:
        refs = listed
    else:
        for case in discover_cases([path]):
            if case.format == "dicom":
                name = case.case_id
            elif path.is_dir():
                name = case.path.relative_to(path).as_posix()
            else:
                name = case.path.name
            refs.append(CaseRef(name, case, None, _label_beside(case.path) if case.format != "dicom" else None))
    if not refs:
        raise InputNotFoundError(f"no volumes found in {role} input", path)
    if len(refs) < 2:
        raise UsageError(f"{role} input {path} holds {len(refs)} volume; set metrics need at least 2")
    return refs


# ------------------------------------------------------------------------------------------- loading


def _read(ref: CaseRef, modality: str) -> Volume:
    if ref.mapping is not None:
        volume = read_volume(ref.source.path, modality)
        return volume.with_array(invert_intensity(volume.array, ref.mapping))
    return read_case(ref.source, modality)


def guess_modality(ref: CaseRef) -> str:
    """CT or MRI for ``--modality auto``: a DICOM header if there is one, else air in HU means CT."""
    if ref.mapping is not None and ref.mapping.get("kind") in ("ct_window", "percentile"):
        return "ct" if ref.mapping["kind"] == "ct_window" else "mri"
    volume = _with_path(ref, lambda: read_case(ref.source, "auto"))
    if volume.modality in MODALITIES:
        return volume.modality
    return "ct" if float(np.min(volume.array)) < CT_AIR_THRESHOLD_HU else "mri"


def _with_path(ref: CaseRef, action: Callable[[], Any]) -> Any:
    """Run ``action``; make sure any failure names this volume's file."""
    try:
        return action()
    except MeddiffError as error:
        if error.path is None:
            raise type(error)(error.message, ref.source.path) from None
        raise
    except (ValueError, OSError, RuntimeError) as error:
        raise BadInputError(f"cannot load volume ({type(error).__name__}: {error})", ref.source.path) from None


def label_volumes_ml(path: Path, names: dict[int, str]) -> dict[str, float]:
    """Volume in millilitres of every non-zero label (on the label map's own grid: no resampling error)."""
    label = read_volume(path, "unknown")
    values, counts = np.unique(np.rint(label.array).astype(np.int64), return_counts=True)
    voxel_ml = float(np.prod(label.spacing)) / 1000.0
    return {names.get(int(v), f"label_{int(v)}"): float(c) * voxel_ml for v, c in zip(values, counts) if v != 0}


@dataclass
class _Loaded:
    array: np.ndarray
    slice_diffs: np.ndarray
    histogram: np.ndarray
    features: np.ndarray | None
    feature_names: list[str] | None
    labels_ml: dict[str, float] | None = None
    label_map: np.ndarray | None = None


def _per_volume_features(kind: str | None, harmonised: Volume) -> tuple[np.ndarray | None, list[str] | None]:
    """radiomics-v1 on model space; FRD on the harmonised volume in HU (CT) or model units (MRI)."""
    if kind == "radiomics":
        return radiomics_features(harmonised.array), None
    if kind == "frd":
        mapping = harmonised.metadata["intensity"]
        values = invert_intensity(harmonised.array, mapping) if mapping["kind"] == "ct_window" else harmonised.array
        return frd_features(values, harmonised.affine)
    return None, None


def _load_one(ref: CaseRef, settings: PreprocessSettings, per_volume: str | None, label_names: dict[int, str],
              want_label_maps: bool) -> _Loaded:
    volume: Volume | None = None

    def work() -> _Loaded:
        nonlocal volume
        volume = _read(ref, settings.modality)
        volume = Volume(volume.array, volume.affine, settings.modality, volume.metadata)
        harmonised = harmonise_volume(volume, settings)
        array = harmonised.array.astype(np.float32, copy=False)
        features, names = _per_volume_features(per_volume, harmonised)
        return _Loaded(array, slice_differences(array), intensity_histogram(array), features, names)

    loaded = _with_path(ref, work)
    if ref.label is not None:
        label_path = ref.label
        label_ref = CaseRef(ref.name, CaseSource(ref.source.case_id, label_path, "nifti"))
        loaded.labels_ml = _with_path(label_ref, lambda: label_volumes_ml(label_path, label_names))
        if want_label_maps and volume is not None:
            image = volume
            loaded.label_map = _with_path(
                label_ref, lambda: harmonise_label(read_volume(label_path, settings.modality), image, settings).array
            )
    return loaded


def load_set(
    root: str | Path,
    refs: list[CaseRef],
    role: str,
    settings: PreprocessSettings,
    per_volume: str | None,
    workers: int = 1,
    progress: ProgressFn | None = None,
    want_label_maps: bool = False,
) -> VolumeSet:
    """Read and harmonise every volume (in ``workers`` processes), in a stable order.

    ``per_volume``: ``radiomics`` / ``frd`` features computed in the workers; ``want_label_maps``: keep
    harmonised label maps (set only when every volume has one).
    """
    label_names = _label_names(Path(root))
    results: list[_Loaded | None] = [None] * len(refs)
    if progress:
        progress(f"loading {role}", 0, len(refs))
    if workers > 1 and len(refs) > 1:
        with interruptible_process_pool(workers) as pool:  # Ctrl-C stops within one volume's time
            futures = [pool.submit(_load_one, ref, settings, per_volume, label_names, want_label_maps) for ref in refs]
            for index, future in enumerate(futures):
                results[index] = future.result()
                if progress:
                    progress(f"loading {role}", index + 1, len(refs))
    else:
        for index, ref in enumerate(refs):
            results[index] = _load_one(ref, settings, per_volume, label_names, want_label_maps)
            if progress:
                progress(f"loading {role}", index + 1, len(refs))
    loaded = [r for r in results if r is not None]
    shapes = {r.array.shape for r in loaded}
    if len(shapes) != 1:  # harmonise_volume always returns settings.size; guard the invariant anyway
        raise BadInputError(f"volumes of {role} differ in shape after harmonisation: {sorted(shapes)}", root)
    return VolumeSet(
        role=role,
        root=Path(root),
        names=[ref.name for ref in refs],
        arrays=np.stack([r.array for r in loaded]),
        slice_diffs=np.stack([r.slice_diffs for r in loaded]),
        histograms=np.stack([r.histogram for r in loaded]),
        features=np.stack([r.features for r in loaded]) if per_volume else None,
        feature_names=loaded[0].feature_names,
        label_volumes_ml=[r.labels_ml for r in loaded],
        labels=np.stack([r.label_map for r in loaded]) if all(r.label_map is not None for r in loaded) else None,
        label_names=label_names,
    )
