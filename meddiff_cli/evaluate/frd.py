"""FRDv1, the Fréchet Radiomics Distance (Konz, Osuala et al., Medical Image Analysis 2026), as ``frd-score`` computes it.

The field's distance for 3D generators. Everything that decides the number is taken from the installed
``frd-score`` package rather than restated, so meddiff's value equals ``python -m frd_score REAL SYNTH`` on
the same volumes (tested to 1e-6 relative):

* extraction: ``frd_score.frd.get_feature_extractor(frd_version="v1", image_dim=3)`` (its 3D YAML: Original +
  LoG sigma 2-5 mm + 8 wavelet bands; firstorder, GLCM, GLRLM, GLSZM, NGTDM; per-image normalisation x100,
  B-spline resampling to 2 mm isotropic, bin width 5), a whole-image mask with its corner voxel cleared
  (frd-score's pyradiomics work-around), every feature plus the numeric diagnostics frd-score keeps;
* per set: volumes with a NaN feature dropped, features cast to float32;
* normalisation: z-score with the first (reference) set's mean and std — REAL here — via frd-score's own
  ``z_score_normalize``; feature columns with NaN/inf in either set dropped;
* distance: frd-score's ``calculate_frechet_distance`` (``scipy.linalg.sqrtm``), then FRD = ``log(d^2)``.

Inputs are the *harmonised* volumes (meddiff's grid) as SimpleITK would read them from a NIfTI file: CT in HU
(the window mapping inverted, so values outside the window stay clipped), MRI in model units (pyradiomics
normalises each image, so the per-volume MRI scaling does not matter). Cost grows with the field of view in
2 mm voxels: a 384 mm grid becomes 192^3 voxels for pyradiomics, ~2 min per volume per core.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

import numpy as np

from meddiff_cli.errors import ModelError

FRD_NAME = "frd-v1"
INSTALL_HINT = "pip install 'meddiff[frd]'  (pyradiomics-bhklab + frd-score)"
_EXTRACTOR: Any = None
"""The pyradiomics extractor of this process (built once per loading worker)."""


def frd_available() -> bool:
    try:
        import frd_score.frd  # noqa: F401
        import radiomics  # noqa: F401
    except ImportError:
        return False
    return True


def require_frd() -> dict[str, str]:
    """The versions of the packages FRD comes from; a ModelError (exit 6) saying how to install them if missing."""
    if not frd_available():
        raise ModelError(f"--features frd needs the optional FRD packages: {INSTALL_HINT}")
    return {name: metadata.version(name) for name in ("frd-score", "pyradiomics-bhklab") if _installed(name)}


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _extractor() -> Any:
    global _EXTRACTOR
    if _EXTRACTOR is None:
        import radiomics
        from frd_score import frd

        radiomics.setVerbosity(60)  # what compute_frd does when not verbose
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        _EXTRACTOR = frd.get_feature_extractor(frd_version=frd.FRD_VERSION_V1, image_dim=3)
    return _EXTRACTOR


def frd_features(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """FRDv1 feature vector (float64, may hold NaN) and names of one volume on a RAS grid (``affine``)."""
    import SimpleITK as sitk

    from meddiff_cli.io.itk import volume_to_image
    from meddiff_cli.io.volume import Volume

    image = volume_to_image(Volume(np.asarray(array, np.float32), np.asarray(affine, np.float64), "unknown"))
    mask_array = np.ones(image.GetSize()[::-1], dtype=np.uint8)
    mask_array[0, 0, 0] = 0  # frd-score's work-around for a pyradiomics whole-image-mask bug
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    output = _extractor().execute(image, mask)
    names: list[str] = []
    values: list[float] = []
    for key, value in output.items():
        if "diagnostics" not in key:
            names.append(key.replace("original_", ""))
            values.append(float(value))
            continue
        try:  # frd v1 keeps the numeric diagnostics (image mean/min/max, mask voxel counts)
            number = float(value)
        except (TypeError, ValueError):
            continue
        names.append(key)
        values.append(number)
    return np.asarray(values, dtype=np.float64), names


def _prepare(features: np.ndarray) -> tuple[np.ndarray, int]:
    """frd-score's v1 per-set step: drop volumes with any NaN feature, cast to float32."""
    features = np.asarray(features, dtype=np.float64)
    nan_rows = np.isnan(features).any(axis=1)
    return features[~nan_rows].astype(np.float32), int(nan_rows.sum())


def normalise(reference: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """z-score every set with ``reference``'s statistics (frd-score's v1 call); also the finite-column mask."""
    from frd_score.frd import z_score_normalize

    sets = [reference, *others]
    normalised = [
        z_score_normalize(s, 0.0, 1.0, base_distribution=reference, replace_nan=False, handle_std_zero=False)
        for s in sets
    ]
    finite = np.ones(reference.shape[1], dtype=bool)
    for values in normalised:
        finite &= np.isfinite(values).all(axis=0)
    return normalised, finite


def frd_value(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """FRDv1 between two raw feature sets (``reference`` = frd-score's first path, D1), with its bookkeeping."""
    from frd_score.frd import calculate_frechet_distance

    d1, dropped_1 = _prepare(reference)
    d2, dropped_2 = _prepare(other)
    if min(len(d1), len(d2)) < 2:
        return {"value": None, "squared_distance": None, "features_used": 0, "volumes_dropped_nan": [dropped_1, dropped_2]}
    (n1, n2), finite = normalise(d1, d2)
    n1, n2 = n1[:, finite], n2[:, finite]
    squared = float(
        calculate_frechet_distance(np.mean(n1, axis=0), np.cov(n1, rowvar=False), np.mean(n2, axis=0), np.cov(n2, rowvar=False))
    )
    return {
        "value": float(np.log(squared)) if squared > 0 else None,  # log(d^2); -inf (identical sets) is null in JSON
        "squared_distance": squared,
        "features_used": int(finite.sum()),
        "volumes_dropped_nan": [dropped_1, dropped_2],
    }


def frd_feature_space(real: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every set z-scored with REAL's FRD statistics, columns non-finite anywhere dropped (for FD/KID/PR, memorization).

    Unlike :func:`frd_value` no volume is dropped (NaN features become non-finite columns instead), so rows
    stay aligned with the volumes' names.
    """
    sets = [np.asarray(s, np.float64).astype(np.float32) for s in (real, *others)]
    normalised, finite = normalise(*sets)
    return tuple(values[:, finite].astype(np.float64) for values in normalised)
