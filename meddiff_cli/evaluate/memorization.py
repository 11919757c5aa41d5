"""Did the model copy its training data? Nearest-training-volume similarity, calibrated on held-out REAL.

For every synthetic volume we find the training volume with the highest normalised cross-correlation
(NCC, 1 = identical up to brightness/contrast) and, separately, the nearest one in feature space.
The same statistic for REAL volumes (held out from training) says how close an *independent* scan
of the same population gets to the training set; a synthetic volume much closer than that is a
likely copy. Flag rule (reported with the result): ``1 - NCC`` smaller than ``margin`` times the
smallest ``1 - NCC`` of any held-out REAL volume. The margin (default 0.5) keeps ordinary
sampling variation from flagging volumes — under a model that does not copy, a synthetic volume
beats every one of ``n`` real volumes with probability ~1/(n+1) by chance alone — while an exact or
near-exact copy (``1 - NCC`` ~ 0) is always flagged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

SAME_SCAN_NCC = 0.999
"""A REAL volume this close to a training volume is the same scan (not held out): it is excluded from the reference."""
FALLBACK_NCC = 0.98
"""Flag threshold used when no held-out REAL volume is left to calibrate against."""


STRUCTURE_SIGMAS = (1.0, 4.0)
"""Band-pass (difference of Gaussians, voxels) applied before the NCC: see :func:`structure`."""


def structure(array: np.ndarray) -> np.ndarray:
    """Anatomical detail of a volume: Gaussian(1) - Gaussian(4) voxels.

    Whole-volume NCC is dominated by the body outline against air (any two chest CTs score > 0.95),
    so it cannot tell a copy from a look-alike. The band-pass removes the outline and the
    voxel noise and keeps the structures a copy would reproduce: independent subjects score low,
    copies score ~1.
    """
    fine, coarse = (ndimage.gaussian_filter(np.asarray(array, np.float32), s, mode="nearest") for s in STRUCTURE_SIGMAS)
    return fine - coarse


def normalised_rows(arrays: np.ndarray) -> np.ndarray:
    """Flatten, remove each volume's mean and scale to unit norm: dot products are then NCCs."""
    rows = np.asarray(arrays, dtype=np.float64).reshape(len(arrays), -1)
    rows = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def ncc_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation between every volume of ``a`` and every volume of ``b``: ``[len(a), len(b)]``."""
    return np.clip(normalised_rows(a) @ normalised_rows(b).T, -1.0, 1.0).astype(np.float64)


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)),
        "median": float(np.median(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def memorization_check(
    synth: np.ndarray,
    real: np.ndarray,
    train: np.ndarray,
    synth_names: list[str],
    real_names: list[str],
    train_names: list[str],
    synth_features: np.ndarray,
    real_features: np.ndarray,
    train_features: np.ndarray,
    margin: float = 0.5,
    worst: int = 4,
) -> dict[str, Any]:
    """Nearest-training-volume statistics for SYNTH vs held-out REAL, and the flagged synthetic volumes."""
    train_detail = np.stack([structure(v) for v in train])
    synth_ncc = ncc_matrix(np.stack([structure(v) for v in synth]), train_detail)
    real_ncc = ncc_matrix(np.stack([structure(v) for v in real]), train_detail)
    synth_best, synth_arg = synth_ncc.max(axis=1), synth_ncc.argmax(axis=1)
    real_best = real_ncc.max(axis=1)
    held_out = real_best < SAME_SCAN_NCC
    excluded = [real_names[i] for i in np.nonzero(~held_out)[0]]
    if held_out.any():
        reference = float(real_best[held_out].max())
        threshold = 1.0 - margin * (1.0 - reference)
    else:
        reference, threshold = None, FALLBACK_NCC

    feature_dist = np.linalg.norm(synth_features[:, None, :] - train_features[None, :, :], axis=-1)
    real_feature_dist = np.linalg.norm(real_features[:, None, :] - train_features[None, :, :], axis=-1)
    synth_fnn, synth_farg = feature_dist.min(axis=1), feature_dist.argmin(axis=1)
    real_fnn = real_feature_dist.min(axis=1)
    feature_reference = float(real_fnn[held_out].min()) if held_out.any() else None

    per_synthetic = [
        {
            "synthetic": synth_names[s],
            "nearest_train": train_names[int(synth_arg[s])],
            "score": float(synth_best[s]),
            "feature_nearest_train": train_names[int(synth_farg[s])],
            "feature_distance": float(synth_fnn[s]),
        }
        for s in range(len(synth_names))
    ]
    order = np.argsort(-synth_best, kind="stable")
    flagged = [
        {k: per_synthetic[s][k] for k in ("synthetic", "nearest_train", "score")}
        for s in order
        if synth_best[s] > threshold
    ]
    return {
        "rule": (
            f"flag when 1 - NCC < {margin:g} x (1 - max held-out REAL nearest-train NCC)"
            if reference is not None
            else f"no held-out REAL volume left: flag when NCC > {FALLBACK_NCC}"
        ),
        "margin": margin,
        "reference_real_ncc": reference,
        "threshold_ncc": float(threshold),
        "flagged": flagged,
        "closer_than_every_real": int(np.sum(synth_best > reference)) if reference is not None else None,
        "ncc_nearest_train": {
            "synthetic": _summary(synth_best),
            "real_held_out": _summary(real_best[held_out]) if held_out.any() else None,
        },
        "feature_nearest_train": {
            "synthetic": _summary(synth_fnn),
            "real_held_out": _summary(real_fnn[held_out]) if held_out.any() else None,
            "closer_than_every_real": int(np.sum(synth_fnn < feature_reference)) if feature_reference is not None else None,
        },
        "real_excluded_as_training_copies": excluded,
        "per_synthetic": per_synthetic,
        "worst_pairs": [
            {"synthetic_index": int(s), "train_index": int(synth_arg[s]), "score": float(synth_best[s])}
            for s in order[:worst]
        ],
        "real_nearest_ncc_values": [float(v) for v in real_best],
        "synthetic_nearest_ncc_values": [float(v) for v in synth_best],
    }
