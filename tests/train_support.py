"""Builders of small `meddiff preprocess`-style DATA folders for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from meddiff_cli.fsutil import sha256_file
from meddiff_cli.io import Volume, write_nifti

CT_INTENSITY = {"kind": "ct_window", "window": [-1000, 1000], "unit": "HU"}
MRI_INTENSITY = {"kind": "percentile", "percentiles": [0.5, 99.5]}


def smooth_blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random volume in [-1, 1]: easy for an autoencoder, yet different per case."""
    field = gaussian_filter(rng.standard_normal((size, size, size)), sigma=size / 8, mode="wrap")
    field = field / (np.abs(field).max() + 1e-8)
    return np.clip(field, -1.0, 1.0).astype(np.float32)


def phantom_model_space(modality: str, seed: int, size: int) -> np.ndarray:
    """A procedural phantom mapped to [-1, 1] as preprocess would (CT window [-1000, 1000] HU; MRI 0.5-99.5 %)."""
    from meddiff_cli.phantom import generate_phantom

    image = generate_phantom(modality, seed, size=size)[0].array
    if modality == "ct":
        return np.clip(image / 1000.0, -1.0, 1.0).astype(np.float32)
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / (high - low) * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)


def make_data(folder: Path, modality: str = "ct", cases: int = 4, size: int | tuple[int, int, int] = 32,
              seed: int = 0, spacing: float = 2.0, phantoms: bool = False) -> Path:
    """Write a DATA folder (manifest.json + images/*.nii.gz) that passes the preprocess manifest validator.

    Volumes are smooth random blobs, or procedural phantoms (cubic sizes only) with ``phantoms=True``."""
    shape = (size, size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(cases):
        if phantoms:
            array = phantom_model_space(modality, seed * 1000 + index, shape[0])
        else:
            array = smooth_blobs(rng, max(shape))[: shape[0], : shape[1], : shape[2]]
        relative = f"images/case{index:03d}.nii.gz"
        write_nifti(Volume(np.ascontiguousarray(array), np.diag([spacing, spacing, spacing, 1.0]), modality), folder / relative)
        per_case = dict(CT_INTENSITY) if modality == "ct" else {"kind": "percentile", "values": [0.0, 500.0]}
        entries.append({
            "case_id": f"case{index:03d}", "source": f"src/case{index:03d}.nii.gz", "format": "nifti",
            "original_shape": list(shape), "original_spacing": [spacing] * 3, "original_orientation": "RAS",
            "image": relative, "label": None, "intensity": per_case,
            "sha256": sha256_file(folder / relative), "label_sha256": None,
        })
    manifest = {
        "format": "meddiff-preprocess", "format_version": 1, "modality": modality, "spacing": [spacing] * 3,
        "size": list(shape), "orientation": "RAS", "intensity": CT_INTENSITY if modality == "ct" else MRI_INTENSITY,
        "labels": None, "cases": entries,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder
