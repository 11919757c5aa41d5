"""``radiomics-v1``: meddiff's own weight-free 3D texture features (always available offline).

Intensity, texture (GLCM), gradient and blob (LoG) statistics at several scales plus foreground shape,
computed per model-space volume (so the loading workers compute them in parallel). Deterministic;
not comparable with the pyradiomics features of :mod:`meddiff_cli.evaluate.frd`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

RADIOMICS_NAME = "radiomics-v1"
RADIOMICS_SCALES = (1, 2, 4)
"""Block-average downsampling factors at which intensity, gradient and GLCM features are taken."""
LOG_SIGMAS = (1.0, 2.0, 4.0)
"""Laplacian-of-Gaussian scales (voxels at full resolution): blob-like structures of radius ~sigma*sqrt(3)."""
GLCM_LEVELS = 16
FOREGROUND_THRESHOLD = -0.8
"""Model-space threshold for the shape features: -800 HU with the default CT window; above background for MRI."""
PERCENTILES = (5, 25, 50, 75, 95)


def _downsample(array: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return array
    shape = [s // factor * factor for s in array.shape]
    cropped = array[: shape[0], : shape[1], : shape[2]]
    return cropped.reshape(shape[0] // factor, factor, shape[1] // factor, factor, shape[2] // factor, factor).mean(
        axis=(1, 3, 5)
    )


def _intensity_stats(x: np.ndarray) -> list[float]:
    flat = x.ravel().astype(np.float64)
    mean, std = flat.mean(), flat.std()
    centred = (flat - mean) / std if std > 1e-12 else np.zeros_like(flat)
    counts, _ = np.histogram(flat, bins=32, range=(-1.0, 1.0))
    p = counts[counts > 0] / flat.size
    return [
        mean,
        std,
        float(np.mean(centred**3)),
        float(np.mean(centred**4) - 3.0),
        *np.percentile(flat, PERCENTILES).tolist(),
        float(-(p * np.log(p)).sum()),
    ]


def _gradient_stats(x: np.ndarray) -> list[float]:
    magnitude = np.sqrt(sum(g.astype(np.float64) ** 2 for g in np.gradient(x)))
    return [float(magnitude.mean()), float(magnitude.std()), float(np.percentile(magnitude, 90))]


def glcm(quantised: np.ndarray, levels: int) -> np.ndarray:
    """Symmetric, normalised grey-level co-occurrence matrix averaged over the three unit axis offsets."""
    total = np.zeros((levels, levels))
    for axis in range(3):
        first = np.take(quantised, np.arange(quantised.shape[axis] - 1), axis=axis)
        second = np.take(quantised, np.arange(1, quantised.shape[axis]), axis=axis)
        counts = np.bincount((first * levels + second).ravel(), minlength=levels * levels).reshape(levels, levels)
        total += counts + counts.T
    return total / total.sum()


def glcm_features(matrix: np.ndarray) -> list[float]:
    """Haralick's contrast, homogeneity, energy, correlation and entropy of a symmetric GLCM."""
    i, j = np.indices(matrix.shape, dtype=np.float64)
    mean = (i * matrix).sum()
    variance = (((i - mean) ** 2) * matrix).sum()
    correlation = (((i - mean) * (j - mean) * matrix).sum() / variance) if variance > 1e-12 else 1.0
    nonzero = matrix[matrix > 0]
    return [
        float((((i - j) ** 2) * matrix).sum()),
        float((matrix / (1.0 + (i - j) ** 2)).sum()),
        float((matrix**2).sum()),
        float(correlation),
        float(-(nonzero * np.log(nonzero)).sum()),
    ]


def _quantise(x: np.ndarray, levels: int) -> np.ndarray:
    return np.clip(((x + 1.0) / 2.0 * levels).astype(np.int64), 0, levels - 1)


def _log_stats(x: np.ndarray) -> list[float]:
    values: list[float] = []
    for sigma in LOG_SIGMAS:
        response = -(sigma**2) * ndimage.gaussian_laplace(x.astype(np.float32), sigma=sigma, mode="nearest")
        values += [
            float(np.abs(response).mean()),
            float(response.std()),
            float(np.percentile(response, 99)),  # bright blobs
            float(np.percentile(response, 1)),  # dark blobs
        ]
    return values


def _shape_stats(x: np.ndarray) -> list[float]:
    mask = x > FOREGROUND_THRESHOLD
    count = int(mask.sum())
    if count == 0:
        return [0.0] * 8
    faces = sum(int(np.count_nonzero(np.diff(np.pad(mask, 1), axis=axis))) for axis in range(3))
    coords = np.nonzero(mask)
    shape = np.asarray(mask.shape, dtype=np.float64)
    extents = [(c.max() - c.min() + 1) / s for c, s in zip(coords, shape, strict=True)]
    centroid = [(c.mean() - (s - 1) / 2) / s for c, s in zip(coords, shape, strict=True)]
    return [count / mask.size, faces / count, *extents, *centroid]


def radiomics_feature_names() -> list[str]:
    names: list[str] = []
    for scale in RADIOMICS_SCALES:
        prefix = f"s{scale}_"
        names += [prefix + n for n in ("mean", "std", "skewness", "kurtosis")]
        names += [f"{prefix}p{p}" for p in PERCENTILES] + [prefix + "hist_entropy"]
        names += [prefix + n for n in ("grad_mean", "grad_std", "grad_p90")]
        names += [prefix + "glcm_" + n for n in ("contrast", "homogeneity", "energy", "correlation", "entropy")]
    for sigma in LOG_SIGMAS:
        names += [f"log{sigma:g}_{n}" for n in ("abs_mean", "std", "p99", "p1")]
    names += ["fg_fraction", "fg_surface_to_volume", "fg_extent_i", "fg_extent_j", "fg_extent_k"]
    names += ["fg_centroid_i", "fg_centroid_j", "fg_centroid_k"]
    return names


def radiomics_features(array: np.ndarray) -> np.ndarray:
    """The ``radiomics-v1`` feature vector of one model-space volume (see :func:`radiomics_feature_names`)."""
    x = np.asarray(array, dtype=np.float32)
    values: list[float] = []
    for scale in RADIOMICS_SCALES:
        level = _downsample(x, scale)
        values += _intensity_stats(level)
        values += _gradient_stats(level)
        values += glcm_features(glcm(_quantise(level, GLCM_LEVELS), GLCM_LEVELS))
    values += _log_stats(x)
    values += _shape_stats(x)
    return np.asarray(values, dtype=np.float64)


@dataclass
class RadiomicsExtractor:
    """Weight-free features; the loader computes them per volume (in parallel) and this just stacks them."""

    name: str = RADIOMICS_NAME
    runs_on: str = "cpu (numpy)"

    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        return np.stack([radiomics_features(v) for v in volumes])
