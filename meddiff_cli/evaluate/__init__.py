"""``meddiff evaluate``: is a synthetic set close to the real one, diverse, and not copied from training?

:func:`evaluate_folders` loads and harmonises REAL, SYNTH (and optionally TRAIN), then computes
fidelity (Fréchet distance, KID, precision/recall on features, with a REAL-vs-REAL baseline),
diversity (within-set MS-SSIM), slice consistency, intensity distribution distance, per-label
volumes and, with TRAIN, memorization. The JSON document it returns is ``report.json``
(``docs/formats.md``, "Evaluation report"); :mod:`~meddiff_cli.evaluate.report` draws the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meddiff_cli import __version__
from meddiff_cli.errors import UsageError
from meddiff_cli.devices import resolve_device
from meddiff_cli.evaluate.features import RadiomicsExtractor, feature_names, make_extractor
from meddiff_cli.io.limits import check_memory, harmonise_memory
from meddiff_cli.evaluate.loading import ProgressFn, VolumeSet, guess_modality, list_cases, load_set
from meddiff_cli.evaluate.memorization import memorization_check
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
    standardise,
    wasserstein_histograms,
)
from meddiff_cli.preprocess import PreprocessSettings

REPORT_FORMAT = "meddiff-evaluation"
REPORT_FORMAT_VERSION = 1
AXES = ("i", "j", "k")

__all__ = ["EvaluationSettings", "EvaluationResult", "evaluate_folders", "REPORT_FORMAT"]


@dataclass(frozen=True)
class EvaluationSettings:
    """How to harmonise and what to compute. ``size``/``spacing`` None = preprocess defaults (64^3; CT 3 mm, MRI 1.5 mm)."""

    features: str = "auto"
    modality: str = "auto"
    size: int | tuple[int, int, int] | None = None
    spacing: float | tuple[float, float, float] | None = None
    window: tuple[float, float] = (-1000.0, 1000.0)
    device: str = "auto"
    workers: int = 1
    k: int = 3
    bootstrap_reps: int = 200
    seed: int = 0
    memorization_margin: float = 0.5
    cache: str | Path | None = None

    def preprocess_settings(self, modality: str) -> PreprocessSettings:
        kwargs: dict[str, Any] = {"modality": modality, "window": self.window}
        if self.size is not None:
            kwargs["size"] = self.size
        if self.spacing is not None:
            kwargs["spacing"] = self.spacing
        return PreprocessSettings(**kwargs).resolved(modality)


@dataclass
class EvaluationResult:
    """``summary`` is the JSON report; the sets and features are kept for the plots."""

    summary: dict[str, Any]
    real: VolumeSet
    synth: VolumeSet
    train: VolumeSet | None
    features: dict[str, np.ndarray] = field(default_factory=dict)  # standardised, per role


def _fidelity(real: np.ndarray, synth: np.ndarray, settings: EvaluationSettings) -> dict[str, Any]:
    """Fréchet distance, KID and precision/recall with bootstrap CIs and the REAL-halves baseline."""
    reps, seed = settings.bootstrap_reps, settings.seed
    fd = frechet_distance(real, synth)
    kid = kernel_inception_distance(real, synth)
    pr = precision_recall(real, synth, settings.k)
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
        half_pr = precision_recall(real[first], real[second], settings.k)
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


def _diversity(real: VolumeSet, synth: VolumeSet, settings: EvaluationSettings, progress: ProgressFn | None) -> dict:
    ms_settings = ms_ssim_settings_for(real.arrays.shape[1:])
    out: dict[str, Any] = {"settings": ms_settings.to_json()}
    for key, vset in (("ms_ssim_real", real), ("ms_ssim_synthetic", synth)):
        if progress:
            progress(f"MS-SSIM {vset.role}", 0, 1)
        matrix = ms_ssim_matrix(vset.arrays, ms_settings)
        value = mean_pairwise(matrix)
        ci = bootstrap_ci(
            lambda a, b: mean_pairwise(matrix, a), len(vset), len(vset), settings.bootstrap_reps, settings.seed, estimate=value
        )
        out[key] = {"value": value, "ci95": ci, "pairs": len(vset) * (len(vset) - 1) // 2}
        if progress:
            progress(f"MS-SSIM {vset.role}", 1, 1)
    return out


def _slice_consistency(real: VolumeSet, synth: VolumeSet, settings: EvaluationSettings) -> dict[str, Any]:
    axes = {}
    for axis, name in enumerate(AXES):
        r, s = real.slice_diffs[:, axis], synth.slice_diffs[:, axis]
        ratio = float(s.mean() / r.mean()) if r.mean() > 0 else None
        ci = None
        if ratio is not None:
            ci = bootstrap_ci(
                lambda a, b: s[b].mean() / r[a].mean(), len(r), len(s), settings.bootstrap_reps, settings.seed, estimate=ratio
            )
        axes[name] = {"real": float(r.mean()), "synthetic": float(s.mean()), "ratio": ratio, "ratio_ci95": ci}
    return {"unit": "model units ([-1, 1] scale) per slice step", "axes": axes}


def _intensity(real: VolumeSet, synth: VolumeSet, pp: PreprocessSettings, settings: EvaluationSettings) -> dict:
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
    ci = bootstrap_ci(lambda a, b: w1(rh[a], sh[b]), len(rh), len(sh), settings.bootstrap_reps, settings.seed, estimate=distance)
    if ci is not None:
        ci[0] = max(ci[0], 0.0)
    baseline = None
    if len(rh) >= 4:
        first, second = random_halves(len(rh), settings.seed)
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


def evaluate_folders(
    real: str | Path,
    synth: str | Path,
    train: str | Path | None = None,
    settings: EvaluationSettings | None = None,
    progress: ProgressFn | None = None,
) -> EvaluationResult:
    """Compare SYNTH with REAL (and, with TRAIN, check memorization). Raises MeddiffError subclasses on bad input."""
    settings = settings or EvaluationSettings()
    if settings.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {settings.workers}")
    started = time.perf_counter()
    resolve_device(settings.device)  # a bad --device fails now, not after minutes of loading
    refs = {"real": list_cases(real, "REAL"), "synthetic": list_cases(synth, "SYNTH")}
    if train is not None:
        refs["train"] = list_cases(train, "TRAIN")
    modality = settings.modality if settings.modality != "auto" else guess_modality(refs["real"][0])
    pp = settings.preprocess_settings(modality)
    voxels = int(np.prod(pp.size, dtype=object))
    total = sum(len(role_refs) for role_refs in refs.values())
    # every set stays in memory as float32 (x2 while stacked), plus the cases being harmonised
    check_memory(total * voxels * 4 * 2 + harmonise_memory(pp.size, settings.workers),
                 f"evaluating {total} volumes at --size {'x'.join(map(str, pp.size))}",
                 "use a smaller --size, fewer --workers or fewer volumes")
    extractor = make_extractor(settings.features, settings.device, settings.cache)
    radiomics = isinstance(extractor, RadiomicsExtractor)
    roots = {"real": real, "synthetic": synth, "train": train}
    sets = {
        role: load_set(roots[role], role_refs, role, pp, radiomics, settings.workers, progress)
        for role, role_refs in refs.items()
    }
    real_set, synth_set, train_set = sets["real"], sets["synthetic"], sets.get("train")

    raw: dict[str, np.ndarray] = {}
    for role, vset in sets.items():
        if progress:
            progress(f"features {role}", 0, 1)
        raw[role] = vset.radiomics if radiomics else extractor(vset.arrays)
        if progress:
            progress(f"features {role}", 1, 1)
    roles = list(sets)
    standardised = dict(zip(roles, standardise(raw["real"], *(raw[r] for r in roles[1:])), strict=True))
    names = list(feature_names(extractor, raw["real"].shape[1]))

    summary: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        "meddiff_version": __version__,
        "synthetic_data_evaluated": True,
        "inputs": {
            role: {"path": str(roots[role]), "count": len(vset)} for role, vset in sets.items()
        },
        "harmonisation": {
            "function": "meddiff_cli.preprocess.harmonise_volume",
            "modality": pp.modality,
            "orientation": "RAS (axis permutation/flips), then resampled onto an axis-aligned grid centred on each volume",
            "spacing_mm": list(pp.spacing),
            "size": list(pp.size),
            "interpolation": "trilinear with Gaussian anti-aliasing",
            "intensity": (
                {"kind": "ct_window", "window_hu": list(pp.window), "to": [-1, 1]}
                if pp.modality == "ct"
                else {"kind": "percentile", "percentiles": list(pp.percentiles), "to": [-1, 1]}
            ),
        },
        "features": {
            "extractor": extractor.name,
            "device": extractor.runs_on,
            "dimension": int(raw["real"].shape[1]),
            "used_after_dropping_constant": int(standardised["real"].shape[1]),
            "standardised_with": "REAL mean and standard deviation per feature",
            "names": names if radiomics else None,
            "note": "distances are only comparable between reports made with the same extractor and harmonisation",
        },
        "fidelity": _fidelity(standardised["real"], standardised["synthetic"], settings),
        "diversity": _diversity(real_set, synth_set, settings, progress),
        "slice_consistency": _slice_consistency(real_set, synth_set, settings),
        "intensity": _intensity(real_set, synth_set, pp, settings),
        "memorization": None,
        "bootstrap": {
            "reps": settings.bootstrap_reps,
            "seed": settings.seed,
            "min_n": 8,
            "resampled": "volumes",
            "method": "percentile interval re-centred on the estimate (bootstrap bias removed)",
        },
    }
    if train_set is not None:
        summary["memorization"] = memorization_check(
            synth_set.arrays,
            real_set.arrays,
            train_set.arrays,
            synth_set.names,
            real_set.names,
            train_set.names,
            standardised["synthetic"],
            standardised["real"],
            standardised["train"],
            margin=settings.memorization_margin,
        )
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return EvaluationResult(summary, real_set, synth_set, train_set, standardised)
