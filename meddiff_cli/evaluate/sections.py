"""The report's set-level sections: fidelity on features, diversity, slice consistency, intensity, label volumes.

Each function turns harmonised sets (and their features) into one JSON-ready section of ``report.json``;
every set-vs-set number comes with its REAL-vs-REAL baseline (two random halves of REAL, seeded) so it
can be read without knowing the metric's scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meddiff_cli.evaluate.frd import frd_value
from meddiff_cli.evaluate.loading import ProgressFn, VolumeSet
from meddiff_cli.evaluate.metrics import (
    HISTOGRAM_BINS,
    bootstrap_ci,
    frechet_distance,
    kernel_inception_distance,
    mean_pairwise,
    ms_ssim_matrix,
    ms_ssim_settings_for,
    precision_recall,
    random_halves,
    wasserstein_histograms,
)
from meddiff_cli.evaluate.options import EvaluateOptions
from meddiff_cli.preprocess import PreprocessSettings

AXES = ("i", "j", "k")


def fidelity(real: np.ndarray, synth: np.ndarray, options: EvaluateOptions) -> dict[str, Any]:
    """Fréchet distance, KID and precision/recall with bootstrap CIs and the REAL-halves baseline."""
    reps, seed = options.bootstrap_reps, options.seed
    fd = frechet_distance(real, synth)
    kid = kernel_inception_distance(real, synth)
    pr = precision_recall(real, synth, options.k)
    n_real, n_synth = len(real), len(synth)
    fd_ci = bootstrap_ci(lambda a, b: frechet_distance(real[a], synth[b]), n_real, n_synth, reps, seed, estimate=fd)
    if fd_ci is not None:
        fd_ci[0] = max(fd_ci[0], 0.0)  # a distance
    kid_ci = bootstrap_ci(
        lambda a, b: kernel_inception_distance(real[a], synth[b]), n_real, n_synth, reps, seed, estimate=kid
    )
    baseline: dict[str, float | None] = {"fd": None, "kid": None, "precision": None, "recall": None}
    halves_n = None
    if len(real) >= 4:
        first, second = random_halves(len(real), seed)
        halves_n = [len(first), len(second)]
        half_pr = precision_recall(real[first], real[second], options.k)
        baseline = {
            "fd": frechet_distance(real[first], real[second]),
            "kid": kernel_inception_distance(real[first], real[second]),
            "precision": half_pr["precision"],
            "recall": half_pr["recall"],
        }
    return {
        "frechet_distance": {"value": fd, "ci95": fd_ci, "baseline_real_vs_real": baseline["fd"]},
        "kid": {"value": kid, "ci95": kid_ci, "baseline_real_vs_real": baseline["kid"]},
        "precision": {"value": pr["precision"], "ci95": None, "baseline_real_vs_real": baseline["precision"]},
        "recall": {"value": pr["recall"], "ci95": None, "baseline_real_vs_real": baseline["recall"]},
        "k": {"real": pr["k_real"], "synthetic": pr["k_synth"]},
        "baseline_split": halves_n,
    }


def diversity(real: VolumeSet, synth: VolumeSet, options: EvaluateOptions, progress: ProgressFn | None) -> dict:
    ms_settings = ms_ssim_settings_for(real.arrays.shape[1:])
    out: dict[str, Any] = {"settings": ms_settings.to_json()}
    for key, vset in (("ms_ssim_real", real), ("ms_ssim_synthetic", synth)):
        if progress:
            progress(f"MS-SSIM {vset.role}", 0, 1)
        matrix = ms_ssim_matrix(vset.arrays, ms_settings)
        value = mean_pairwise(matrix)
        ci = bootstrap_ci(
            lambda a, b: mean_pairwise(matrix, a), len(vset), len(vset), options.bootstrap_reps, options.seed, estimate=value
        )
        out[key] = {"value": value, "ci95": ci, "pairs": len(vset) * (len(vset) - 1) // 2}
        if progress:
            progress(f"MS-SSIM {vset.role}", 1, 1)
    return out


def slice_consistency(real: VolumeSet, synth: VolumeSet, options: EvaluateOptions) -> dict[str, Any]:
    axes = {}
    for axis, name in enumerate(AXES):
        r, s = real.slice_diffs[:, axis], synth.slice_diffs[:, axis]
        ratio = float(s.mean() / r.mean()) if r.mean() > 0 else None
        ci = None
        if ratio is not None:
            ci = bootstrap_ci(
                lambda a, b: s[b].mean() / r[a].mean(), len(r), len(s), options.bootstrap_reps, options.seed, estimate=ratio
            )
        axes[name] = {"real": float(r.mean()), "synthetic": float(s.mean()), "ratio": ratio, "ratio_ci95": ci}
    return {"unit": "model units ([-1, 1] scale) per slice step", "axes": axes}


def intensity(real: VolumeSet, synth: VolumeSet, pp: PreprocessSettings, options: EvaluateOptions) -> dict:
    """W1 between pooled histograms, in HU for CT (window inverted) and model units for MRI."""
    if pp.modality == "ct":
        lo, hi = pp.window
        unit, to_physical = "HU", (hi - lo) / 2.0
        offset = (hi + lo) / 2.0
    else:
        unit, to_physical, offset = "model units (MRI: per-volume percentiles mapped to [-1, 1])", 1.0, 0.0
    width = 2.0 / HISTOGRAM_BINS * to_physical
    centres = (np.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1)[:-1] + 1.0 / HISTOGRAM_BINS) * to_physical + offset

    def w1(a: np.ndarray, b: np.ndarray) -> float:
        return wasserstein_histograms(a.sum(axis=0), b.sum(axis=0), width)

    rh, sh = real.histograms, synth.histograms
    distance = w1(rh, sh)
    ci = bootstrap_ci(lambda a, b: w1(rh[a], sh[b]), len(rh), len(sh), options.bootstrap_reps, options.seed, estimate=distance)
    if ci is not None:
        ci[0] = max(ci[0], 0.0)
    baseline = None
    if len(rh) >= 4:
        first, second = random_halves(len(rh), options.seed)
        baseline = w1(rh[first], rh[second])

    def mean_value(h: np.ndarray) -> float:
        pooled = h.sum(axis=0)
        return float((pooled * centres).sum() / pooled.sum())

    return {
        "unit": unit,
        "wasserstein": {"value": distance, "ci95": ci, "baseline_real_vs_real": baseline},
        "mean": {"real": mean_value(rh), "synthetic": mean_value(sh)},
        "bin_centres": [float(c) for c in centres],
        "histogram_real": [float(v) for v in rh.sum(axis=0) / rh.sum()],
        "histogram_synthetic": [float(v) for v in sh.sum(axis=0) / sh.sum()],
        "labels": _label_stats(real, synth),
    }


def _label_stats(real: VolumeSet, synth: VolumeSet) -> dict[str, Any] | None:
    """Per-label volumes (mL) where label maps are present next to the images."""

    def collect(vset: VolumeSet) -> dict[str, list[float]]:
        present = [d for d in vset.label_volumes_ml if d is not None]
        names = sorted({name for d in present for name in d})
        return {name: [d.get(name, 0.0) for d in present] for name in names} if present else {}

    real_labels, synth_labels = collect(real), collect(synth)
    if not real_labels and not synth_labels:
        return None
    stats: dict[str, Any] = {}
    for name in sorted(set(real_labels) | set(synth_labels)):
        entry: dict[str, Any] = {}
        for role, values in (("real", real_labels.get(name)), ("synthetic", synth_labels.get(name))):
            entry[role] = None if not values else {"mean_ml": float(np.mean(values)), "std_ml": float(np.std(values)), "n": len(values)}
        if entry["real"] and entry["synthetic"] and entry["real"]["mean_ml"] > 0:
            entry["relative_difference"] = entry["synthetic"]["mean_ml"] / entry["real"]["mean_ml"] - 1.0
        stats[name] = entry
    return stats


def frd(real: np.ndarray, synth: np.ndarray, options: EvaluateOptions, versions: dict[str, str]) -> dict[str, Any]:
    """FRDv1 (REAL as frd-score's reference set D1) and the same number between two halves of REAL."""
    result = frd_value(real, synth)
    baseline = None
    if len(real) >= 4:
        first, second = random_halves(len(real), options.seed)
        baseline = frd_value(real[first], real[second])["value"]
    return {
        **result,
        "ci95": None,  # a bootstrap of a 1000-feature sqrtm per resample costs minutes; not computed
        "baseline_real_vs_real": baseline,
        "features_extracted": int(real.shape[1]),
        "definition": "log(d^2), d^2 = Fréchet distance of z-scored pyradiomics features (REAL's mean/std), as frd-score v1",
        "packages": versions,
    }
