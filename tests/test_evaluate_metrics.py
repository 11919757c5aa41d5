"""Evaluation metrics against reference implementations (MONAI, SciPy) and known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import FIDMetric, MultiScaleSSIMMetric
from scipy import ndimage, stats

from meddiff_cli.evaluate.radiomics import glcm, glcm_features, radiomics_feature_names, radiomics_features
from meddiff_cli.evaluate.metrics import (
    bootstrap_ci,
    frechet_distance,
    kernel_inception_distance,
    mean_pairwise,
    ms_ssim_matrix,
    ms_ssim_settings_for,
    pairwise_ms_ssim,
    precision_recall,
    slice_differences,
    standardise,
    wasserstein_histograms,
)


def smooth_volumes(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vols = [np.tanh(4 * ndimage.gaussian_filter(rng.normal(size=(size,) * 3), 2.0)) for _ in range(n)]
    return np.stack(vols).astype(np.float32)


def monai_ms_ssim(a: np.ndarray, b: np.ndarray, settings) -> np.ndarray:
    metric = MultiScaleSSIMMetric(
        spatial_dims=3,
        data_range=settings.data_range,
        kernel_size=settings.kernel_size,
        kernel_sigma=settings.kernel_sigma,
        weights=settings.weights,
        reduction="none",
    )
    return metric(torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None]).flatten().numpy()


@pytest.mark.parametrize("shape", [(32, 32, 32), (40, 36, 32)])
def test_ms_ssim_matches_monai_on_the_same_pairs(shape):
    rng = np.random.default_rng(1)
    base = smooth_volumes(3, size=max(shape))[:, : shape[0], : shape[1], : shape[2]]
    noisy = np.clip(base[0] + rng.normal(scale=0.2, size=shape), -1, 1).astype(np.float32)
    volumes = np.concatenate([base, noisy[None]])
    settings = ms_ssim_settings_for(shape)
    pairs = np.array([(0, 1), (0, 2), (1, 2), (0, 3), (3, 3)])
    ours = pairwise_ms_ssim(volumes, pairs, settings)
    reference = monai_ms_ssim(volumes[pairs[:, 0]], volumes[pairs[:, 1]], settings)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    assert ours[-1] == pytest.approx(1.0, abs=1e-6)  # identical volumes
    assert ours[3] > max(ours[0], ours[1], ours[2])  # a noisy copy is more similar than another volume


def test_ms_ssim_scales_fit_small_volumes_and_monai_accepts_them():
    assert len(ms_ssim_settings_for((32, 32, 32)).weights) == 3
    assert len(ms_ssim_settings_for((64, 64, 64)).weights) == 4
    assert len(ms_ssim_settings_for((128, 128, 128)).weights) == 5
    for size in (32, 64):
        settings = ms_ssim_settings_for((size,) * 3)
        assert sum(settings.weights) == pytest.approx(1.0)
        volume = smooth_volumes(1, size)
        monai_ms_ssim(volume, volume, settings)  # raises if the image is too small for kernel/scales


def test_ms_ssim_drops_monotonically_with_noise():
    base = smooth_volumes(1)[0]
    rng = np.random.default_rng(2)
    copies = [base] + [np.clip(base + rng.normal(scale=s, size=base.shape), -1, 1) for s in (0.05, 0.2, 0.6)]
    matrix = ms_ssim_matrix(np.stack(copies).astype(np.float32), ms_ssim_settings_for(base.shape))
    assert np.all(np.diff(matrix[0, 1:]) < 0)
    assert mean_pairwise(matrix) == pytest.approx(matrix[np.triu_indices(4, 1)].mean())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # MONAI passes scipy sqrtm a deprecated argument
def test_frechet_distance_matches_monai_fid_metric():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(60, 8))
    synth = rng.normal(size=(50, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 0.3
    reference = FIDMetric()(torch.from_numpy(synth), torch.from_numpy(real)).item()
    assert frechet_distance(real, synth) == pytest.approx(reference, rel=1e-6)


def test_frechet_distance_fewer_samples_than_features_matches_sqrtm_formula():
    """The nuclear-norm form must equal the textbook formula also when covariances are singular."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(10, 30)), rng.normal(size=(12, 30)) + 0.2
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    values, vectors = np.linalg.eigh(sx)  # PSD square root (sqrtm is inaccurate on singular matrices)
    root_x = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_x @ sy @ root_x), 0, None)).sum()
    diff = x.mean(0) - y.mean(0)
    expected = diff @ diff + np.trace(sx) + np.trace(sy) - 2 * cross
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([2.0, -1.0, 0.5])
    y = rng.normal(size=(4000, 3)) * 2.0 + shift  # N(shift, 4 I)
    # Analytic: |mu1 - mu2|^2 + Tr(I + 4I - 2 (4 I)^(1/2)) = |shift|^2 + 3 * (1 + 4 - 4).
    analytic = shift @ shift + 3.0
    assert frechet_distance(x, y) == pytest.approx(analytic, rel=0.05)


def test_kid_identical_near_zero_and_grows_with_shift():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 10))
    same = kernel_inception_distance(x, x.copy())
    shifted = [kernel_inception_distance(x, x + s) for s in (0.25, 0.5, 1.0)]
    assert abs(same) < 0.02 * shifted[-1]  # O(1/n) for a set compared with itself
    assert np.all(np.diff(shifted) > 0)
    independent = kernel_inception_distance(x, rng.normal(size=(200, 10)))
    assert abs(independent) < 0.1 * shifted[-1]  # unbiased: ~0 for the same distribution


def test_precision_recall_known_cases():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(30, 4))
    assert precision_recall(real, real.copy())["precision"] == 1.0
    far = precision_recall(real, real + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # A collapsed synthetic set (all near one real point) is realistic but covers little.
    collapsed = precision_recall(real, real[:1] + rng.normal(scale=1e-3, size=(30, 4)))
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.3
    assert precision_recall(real[:2], real[:3])["k_real"] == 1  # k capped at n - 1


def test_standardise_uses_real_statistics_and_drops_constant_features():
    rng = np.random.default_rng(8)
    real = np.column_stack([rng.normal(5, 3, 40), np.ones(40), rng.normal(size=40)])
    synth = np.column_stack([rng.normal(5, 3, 30), np.ones(30), rng.normal(size=30)])
    real_z, synth_z = standardise(real, synth)
    assert real_z.shape == (40, 2) and synth_z.shape == (30, 2)
    np.testing.assert_allclose(real_z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(real_z.std(0, ddof=1), 1, atol=1e-12)


def test_wasserstein_histograms_matches_scipy():
    rng = np.random.default_rng(9)
    edges = np.linspace(-1, 1, 65)
    centres = (edges[:-1] + edges[1:]) / 2
    a, _ = np.histogram(rng.normal(-0.2, 0.3, 5000), bins=edges)
    b, _ = np.histogram(rng.normal(0.1, 0.2, 5000), bins=edges)
    expected = stats.wasserstein_distance(centres, centres, a, b)
    assert wasserstein_histograms(a.astype(float), b.astype(float), edges[1] - edges[0]) == pytest.approx(expected)


def test_bootstrap_ci_needs_eight_and_covers_the_estimate():
    values = np.random.default_rng(10).normal(size=20)
    assert bootstrap_ci(lambda a, b: values[a].mean(), 7, 20) is None
    low, high = bootstrap_ci(lambda a, b: values[a].mean(), 20, 20, reps=200, seed=1)
    assert low < values.mean() < high
    assert bootstrap_ci(lambda a, b: values[a].mean(), 20, 20, seed=1) == [low, high]  # seeded
    # A statistic that resampling inflates (here: +1 for every duplicated volume) is re-centred on the estimate.
    inflated = bootstrap_ci(lambda a, b: len(a) - len(np.unique(a)), 20, 20, seed=1, estimate=0.0)
    assert inflated[0] < 0.0 < inflated[1]


def test_slice_differences_expose_a_stacking_artefact():
    volume = smooth_volumes(1)[0]
    striped = volume.copy()
    striped[:, :, ::2] += 0.3  # alternate slices brighter along k only
    base, artefact = slice_differences(volume), slice_differences(striped)
    np.testing.assert_allclose(artefact[:2], base[:2], rtol=0.2)
    assert artefact[2] > 3 * base[2]


def test_glcm_known_answers():
    constant = np.full((8, 8, 8), 3)
    matrix = glcm(constant, 4)
    contrast, homogeneity, energy, correlation, entropy = glcm_features(matrix)
    assert (contrast, homogeneity, energy, entropy) == (0.0, 1.0, 1.0, 0.0)
    stripes = np.zeros((8, 8, 8), dtype=np.int64)
    stripes[::2] = 1  # levels alternate along i: 1/3 of the pairs (those along i) differ by 1
    contrast = glcm_features(glcm(stripes, 2))[0]
    assert contrast == pytest.approx(1 / 3)


def test_radiomics_features_are_deterministic_and_sensitive():
    volume = smooth_volumes(1)[0]
    first, second = radiomics_features(volume), radiomics_features(volume.copy())
    assert first.shape == (len(radiomics_feature_names()),) and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, second)
    blurred = radiomics_features(ndimage.gaussian_filter(volume, 1.5))
    names = radiomics_feature_names()
    assert blurred[names.index("s1_grad_mean")] < first[names.index("s1_grad_mean")]
    assert blurred[names.index("s1_glcm_contrast")] < first[names.index("s1_glcm_contrast")]
