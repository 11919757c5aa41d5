"""Set-level comparison metrics: feature distances, coverage, diversity, slice consistency, intensity.

Every function here works on plain arrays (features ``[n, F]``, volumes ``[n, X, Y, Z]`` in model
space [-1, 1]) so it can be validated against reference implementations in isolation. Conventions:
lower is better for distances, and every set-vs-set statistic can be bootstrapped by resampling
*volumes* with :func:`bootstrap_ci`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

MIN_BOOTSTRAP_N = 8
"""Confidence intervals are only reported when both sets have at least this many volumes."""

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Wang et al. (2003) scale weights, the MONAI/torchmetrics default; truncated and renormalised when fewer scales fit."""


# ------------------------------------------------------------------------------------- feature spaces


def standardise(real: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Z-score every set with REAL's per-feature mean and std, so no feature dominates by its units.

    Features constant over all sets carry no information and are dropped; a feature constant in REAL
    but not elsewhere is scaled by the pooled std instead (dividing by ~0 would explode it).
    """
    pooled = np.concatenate([real, *others], axis=0).astype(np.float64)
    varying = pooled.std(axis=0) > 1e-12
    mean = real.mean(axis=0)
    scale = real.std(axis=0, ddof=1) if len(real) > 1 else np.zeros(real.shape[1])
    scale = np.where(scale > 1e-12, scale, pooled.std(axis=0))
    scale = np.where(scale > 1e-12, scale, 1.0)
    return tuple(((s.astype(np.float64) - mean) / scale)[:, varying] for s in (real, *others))


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

    ``|mu_x - mu_y|^2 + Tr(S_x) + Tr(S_y) - 2 Tr((S_x S_y)^(1/2))``, with the trace term computed
    without ``sqrtm`` of a possibly singular product: the eigenvalues of S_x S_y are those of the PSD
    matrix S_x^(1/2) S_y S_x^(1/2) (F x F, used when features are few), and also the squared
    singular values of ``A B^T / sqrt((n-1)(m-1))`` (A, B: centred samples; n x m, used when volumes
    are fewer than features — the usual case in 3D). Both are exact and stable.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, b = x - x.mean(axis=0), y - y.mean(axis=0)
    nx, ny = len(x) - 1, len(y) - 1
    diff = x.mean(axis=0) - y.mean(axis=0)
    if x.shape[1] < min(len(x), len(y)):
        values, vectors = np.linalg.eigh(a.T @ a / nx)
        root_x = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
        inner = root_x @ (b.T @ b / ny) @ root_x
        cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum()
    else:
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(nx * ny)
    value = diff @ diff + (a * a).sum() / nx + (b * b).sum() / ny - 2.0 * cross
    return float(max(value, 0.0))


def kernel_inception_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel ``(x.y / F + 1)^3`` (Bińkowski et al., 2018).

    Unlike the Fréchet distance it is unbiased for small sets, so its expected value for two samples
    of the same distribution is 0 (single estimates can be slightly negative).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dim = x.shape[1]
    kxx, kyy, kxy = ((u @ v.T / dim + 1.0) ** 3 for u, v in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def _kth_neighbour_radius(points: np.ndarray, k: int) -> np.ndarray:
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return np.sort(distances, axis=1)[:, k - 1]


def precision_recall(real: np.ndarray, synth: np.ndarray, k: int = 3) -> dict[str, float]:
    """k-NN manifold precision and recall (Kynkäänniemi et al., 2019).

    Each set's manifold is the union of balls around its points reaching the k-th nearest
    neighbour (k capped at n - 1). Precision: fraction of SYNTH inside REAL's manifold (realism);
    recall: fraction of REAL inside SYNTH's manifold (coverage).
    """
    real, synth = np.asarray(real, np.float64), np.asarray(synth, np.float64)
    k_real, k_synth = min(k, len(real) - 1), min(k, len(synth) - 1)
    radius_real = _kth_neighbour_radius(real, k_real)
    radius_synth = _kth_neighbour_radius(synth, k_synth)
    cross = np.linalg.norm(synth[:, None, :] - real[None, :, :], axis=-1)  # [synth, real]
    precision = np.mean(np.any(cross <= radius_real[None, :], axis=1))
    recall = np.mean(np.any(cross.T <= radius_synth[None, :], axis=1))
    return {"precision": float(precision), "recall": float(recall), "k_real": k_real, "k_synth": k_synth}


# ------------------------------------------------------------------------------------------ bootstrap


def bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_a: int,
    n_b: int,
    reps: int = 200,
    seed: int = 0,
    level: float = 0.95,
    estimate: float | None = None,
) -> list[float] | None:
    """Bootstrap interval of ``statistic(indices_a, indices_b)``, resampling the volumes of both sets.

    With ``estimate`` the percentile interval is re-centred on it (the bootstrap's own bias, mean of
    the resampled values minus the estimate, is removed). This matters for the Fréchet distance and
    KID: resamples contain duplicated volumes, which inflates both, so plain percentiles can lie
    entirely above the estimate. For means and ratios the shift is ~0.
    Returns ``None`` when either set has fewer than :data:`MIN_BOOTSTRAP_N` volumes (an interval from
    a handful of volumes would look precise and not be).
    """
    if min(n_a, n_b) < MIN_BOOTSTRAP_N or reps < 2:
        return None
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n_a, n_a), rng.integers(0, n_b, n_b)) for _ in range(reps)]
    values = np.asarray([v for v in values if np.isfinite(v)])
    if values.size == 0:
        return None
    shift = float(values.mean() - estimate) if estimate is not None else 0.0
    tail = (1.0 - level) / 2.0 * 100.0
    return [float(np.percentile(values, tail)) - shift, float(np.percentile(values, 100.0 - tail)) - shift]


def random_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of ``range(n)`` (fixed seed) for the REAL-vs-REAL baseline."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


# -------------------------------------------------------------------------------------------- MS-SSIM


@dataclass(frozen=True)
class MsSsimSettings:
    """What MS-SSIM was computed with (reported, because values depend on it)."""

    kernel_size: int = 7
    kernel_sigma: float = 1.5
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS
    data_range: float = 2.0  # model space is [-1, 1]
    k1: float = 0.01
    k2: float = 0.03

    def to_json(self) -> dict:
        return {**asdict(self), "scales": len(self.weights), "weights": list(self.weights)}


def ms_ssim_settings_for(shape: Sequence[int], kernel_size: int = 7, data_range: float = 2.0) -> MsSsimSettings:
    """The most scales (up to 5) whose coarsest level still holds a full kernel.

    The standard 11-voxel kernel with 5 scales needs volumes > 160 voxels per side; 3D volumes are
    smaller, so we use a 7-voxel Gaussian (sigma 1.5) and drop the coarsest scales until the smallest
    level is at least one kernel wide and MONAI's own size check passes (so the numbers can be
    reproduced with ``monai.metrics.MultiScaleSSIMMetric``). The weights of the kept scales are renormalised.
    32^3 -> 3 scales, 64^3 -> 4, 128^3 -> 5.
    """
    smallest = int(min(shape))
    scales = 1
    for candidate in range(len(MS_SSIM_WEIGHTS), 0, -1):
        coarse_ok = smallest // 2 ** (candidate - 1) >= kernel_size
        monai_ok = smallest // max(1, candidate - 1) ** 2 > kernel_size - 1
        if coarse_ok and monai_ok:
            scales = candidate
            break
    if smallest < kernel_size:
        kernel_size = smallest if smallest % 2 else smallest - 1
        kernel_size = max(kernel_size, 1)
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    weights = tuple(float(w) for w in weights / weights.sum())
    return MsSsimSettings(kernel_size=kernel_size, weights=weights, data_range=data_range)


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange((1 - size) / 2, (1 + size) / 2, 1.0, dtype=torch.float64)
    kernel = torch.exp(-((offsets / sigma) ** 2) / 2)
    return kernel / kernel.sum()


def _valid_filter_matrix(kernel: torch.Tensor, length: int) -> torch.Tensor:
    """Banded matrix applying a 1D 'valid' correlation with ``kernel`` to a signal of ``length``."""
    size = kernel.numel()
    matrix = torch.zeros(length - size + 1, length, dtype=kernel.dtype)
    for row in range(length - size + 1):
        matrix[row, row : row + size] = kernel
    return matrix


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of [B, 1, X, Y, Z] (equals MONAI's full 3D kernel convolution).

    Written as three small matrix products (BLAS) rather than conv3d, which is ~30x slower on CPU here.
    """
    for axis in range(2, 5):
        matrix = _valid_filter_matrix(kernel, x.shape[axis])
        x = torch.movedim(torch.movedim(x, axis, -1) @ matrix.T, -1, axis)
    return x


def pairwise_ms_ssim(
    volumes: np.ndarray, pairs: np.ndarray, settings: MsSsimSettings, chunk: int = 32, others: np.ndarray | None = None
) -> np.ndarray:
    """3D MS-SSIM for index pairs ``(i, j)`` of ``volumes`` (or of ``volumes`` x ``others``).

    Same definition as ``monai.metrics.MultiScaleSSIMMetric`` (valid Gaussian filtering, 2x average
    pooling between scales, contrast-structure at every scale but the last, SSIM at the last, ReLU
    before the weighted product), restructured for many pairs: each volume's local means and
    variances are filtered once per scale, only the cross term is filtered per pair.
    """
    second = volumes if others is None else others
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    kernel = _gaussian_1d(settings.kernel_size, settings.kernel_sigma).to(torch.float32)
    c1 = (settings.k1 * settings.data_range) ** 2
    c2 = (settings.k2 * settings.data_range) ** 2
    first_used, second_used = np.unique(pairs[:, 0]), np.unique(pairs[:, 1])
    xs = torch.from_numpy(np.asarray(volumes)[first_used]).to(torch.float32)[:, None]
    ys = torch.from_numpy(np.asarray(second)[second_used]).to(torch.float32)[:, None]
    row_x = {int(v): r for r, v in enumerate(first_used)}
    row_y = {int(v): r for r, v in enumerate(second_used)}
    ix = torch.tensor([row_x[int(i)] for i in pairs[:, 0]], dtype=torch.long)
    iy = torch.tensor([row_y[int(j)] for j in pairs[:, 1]], dtype=torch.long)
    factors = []
    with torch.no_grad():
        for scale in range(len(settings.weights)):
            mu_x, mu_y = _blur(xs, kernel), _blur(ys, kernel)
            var_x, var_y = _blur(xs * xs, kernel) - mu_x**2, _blur(ys * ys, kernel) - mu_y**2
            values = []
            for start in range(0, len(pairs), chunk):
                a, b = ix[start : start + chunk], iy[start : start + chunk]
                cov = _blur(xs[a] * ys[b], kernel) - mu_x[a] * mu_y[b]
                cs = (2 * cov + c2) / (var_x[a] + var_y[b] + c2)
                if scale == len(settings.weights) - 1:
                    luminance = (2 * mu_x[a] * mu_y[b] + c1) / (mu_x[a] ** 2 + mu_y[b] ** 2 + c1)
                    cs = luminance * cs
                values.append(cs.flatten(1).mean(1))
            factors.append(torch.relu(torch.cat(values)))
            xs, ys = F.avg_pool3d(xs, 2), F.avg_pool3d(ys, 2)
    weights = torch.tensor(settings.weights, dtype=torch.float64)[:, None]
    return torch.prod(torch.stack(factors) ** weights, dim=0).numpy()


def ms_ssim_matrix(volumes: np.ndarray, settings: MsSsimSettings) -> np.ndarray:
    """Symmetric matrix of MS-SSIM between all pairs of volumes (diagonal 1)."""
    n = len(volumes)
    upper = np.array([(i, j) for i in range(n) for j in range(i + 1, n)], dtype=np.int64).reshape(-1, 2)
    matrix = np.eye(n)
    if len(upper):
        values = pairwise_ms_ssim(volumes, upper, settings)
        matrix[upper[:, 0], upper[:, 1]] = values
        matrix[upper[:, 1], upper[:, 0]] = values
    return matrix


def mean_pairwise(matrix: np.ndarray, indices: np.ndarray | None = None) -> float:
    """Mean of a pairwise matrix over distinct volumes (bootstrap duplicates never pair with themselves)."""
    idx = np.arange(len(matrix)) if indices is None else np.asarray(indices)
    sub = matrix[np.ix_(idx, idx)]
    distinct = idx[:, None] != idx[None, :]
    return float(sub[distinct].mean()) if distinct.any() else float("nan")


# ---------------------------------------------------------------------------------- per-volume statistics


def slice_differences(array: np.ndarray) -> np.ndarray:
    """Mean absolute difference between adjacent slices along each axis (i, j, k), in model units.

    A model that stacks 2D slices, or a resampling artefact, shows up as one axis standing out
    relative to the same statistic on real volumes.
    """
    return np.array([float(np.mean(np.abs(np.diff(array, axis=axis)))) for axis in range(3)])


HISTOGRAM_BINS = 128


def intensity_histogram(array: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Voxel counts over [-1, 1] (model space) in ``bins`` equal bins; clipped voxels fall in the end bins."""
    counts, _ = np.histogram(np.clip(array, -1.0, 1.0), bins=bins, range=(-1.0, 1.0))
    return counts.astype(np.float64)


def wasserstein_histograms(counts_a: np.ndarray, counts_b: np.ndarray, bin_width: float) -> float:
    """Wasserstein-1 (earth mover's) distance between two histograms on the same equal bins.

    For 1D distributions W1 is the area between the cumulative distributions; with all mass at bin
    centres that is ``sum |CDF_a - CDF_b| * bin_width`` (same value as ``scipy.stats.wasserstein_distance``).
    """
    cdf_a = np.cumsum(counts_a) / counts_a.sum()
    cdf_b = np.cumsum(counts_b) / counts_b.sum()
    return float(np.abs(cdf_a - cdf_b)[:-1].sum() * bin_width)
