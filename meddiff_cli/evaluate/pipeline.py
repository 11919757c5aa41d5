"""``meddiff evaluate``: is a synthetic set close to the real one, diverse, anatomically right and not copied?

:func:`evaluate_folders` picks the harmonisation grid from the data (:mod:`~meddiff_cli.evaluate.grid`),
loads and harmonises REAL, SYNTH (and optionally TRAIN), then computes fidelity on features (Fréchet
distance, KID, precision/recall; FRD with ``features="frd"``), diversity, slice consistency, intensity,
label volumes, the anatomy check, memorization with TRAIN, and a verdict. Every distance has a
REAL-vs-REAL baseline. The JSON it returns is ``report.json`` (``docs/formats.md``, "Evaluation report").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meddiff_cli import __version__
from meddiff_cli.devices import resolve_device
from meddiff_cli.errors import UsageError
from meddiff_cli.evaluate import sections
from meddiff_cli.evaluate.anatomy import anatomy_check
from meddiff_cli.evaluate.features import FrdExtractor, feature_names, make_extractor, per_volume_kind
from meddiff_cli.evaluate.frd import frd_feature_space
from meddiff_cli.evaluate.grid import choose_grid
from meddiff_cli.evaluate.loading import CaseRef, ProgressFn, VolumeSet, guess_modality, list_cases, load_set
from meddiff_cli.evaluate.memorization import memorization_check
from meddiff_cli.evaluate.metrics import standardise
from meddiff_cli.evaluate.options import EvaluateOptions
from meddiff_cli.evaluate.verdict import make_verdict
from meddiff_cli.io.limits import check_memory, harmonise_memory
from meddiff_cli.preprocess import PreprocessSettings

REPORT_FORMAT = "meddiff-evaluation"
REPORT_FORMAT_VERSION = 2


@dataclass
class EvaluationResult:
    """``summary`` is the JSON report; the sets and features are kept for the plots."""

    summary: dict[str, Any]
    real: VolumeSet
    synth: VolumeSet
    train: VolumeSet | None
    features: dict[str, np.ndarray] = field(default_factory=dict)  # standardised, per role


def wants_anatomy(options: EvaluateOptions, real_refs: list[CaseRef]) -> bool:
    """``--anatomy`` as given; by default on when an ONNX segmenter is given or every REAL volume has labels."""
    if options.anatomy is not None:
        return options.anatomy
    return options.anatomy_model is not None or all(ref.label is not None for ref in real_refs)


def _harmonisation(pp: PreprocessSettings, grid_json: dict[str, Any]) -> dict[str, Any]:
    return {
        "function": "meddiff_cli.preprocess.harmonise_volume",
        "modality": pp.modality,
        "orientation": "RAS (axis permutation/flips), then resampled onto an axis-aligned grid centred on each volume",
        "spacing_mm": list(pp.spacing),
        "size": list(pp.size),
        "grid": grid_json,
        "interpolation": "trilinear with Gaussian anti-aliasing",
        "intensity": (
            {"kind": "ct_window", "window_hu": list(pp.window), "to": [-1, 1]}
            if pp.modality == "ct"
            else {"kind": "percentile", "percentiles": list(pp.percentiles), "to": [-1, 1]}
        ),
    }


def _anatomy(options: EvaluateOptions, real: VolumeSet, synth: VolumeSet, pp: PreprocessSettings,
             progress: ProgressFn | None) -> dict[str, Any]:
    from meddiff_cli.evaluate.segmenter import onnx_segmenter, trained_segmenter

    device = resolve_device(options.device)
    if options.anatomy_model is not None:
        segmenter = onnx_segmenter(options.anatomy_model, str(device))
    else:
        segmenter = trained_segmenter(real, options.anatomy_steps, options.seed, device, options.cache, progress)
    if progress:
        progress("anatomy check", 0, 1)
    result = anatomy_check(real, synth, segmenter, pp.spacing, options.seed)  # type: ignore[arg-type]
    if progress:
        progress("anatomy check", 1, 1)
    return result


def evaluate_folders(
    real: str | Path,
    synth: str | Path,
    train: str | Path | None = None,
    options: EvaluateOptions | None = None,
    progress: ProgressFn | None = None,
) -> EvaluationResult:
    """Compare SYNTH with REAL (and, with TRAIN, check memorization). Raises MeddiffError subclasses on bad input."""
    options = options or EvaluateOptions()
    if options.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {options.workers}")
    started = time.perf_counter()
    resolve_device(options.device)  # a bad --device fails now, not after minutes of loading
    refs = {"real": list_cases(real, "REAL"), "synthetic": list_cases(synth, "SYNTH")}
    if train is not None:
        refs["train"] = list_cases(train, "TRAIN")
    modality = options.modality if options.modality != "auto" else guess_modality(refs["real"][0])
    grid = choose_grid(refs["real"], refs["synthetic"], Path(synth), modality, options)
    pp = options.preprocess_settings(modality, grid.size, grid.spacing)
    voxels = int(np.prod(pp.size, dtype=object))
    total = sum(len(role_refs) for role_refs in refs.values())
    # every set stays in memory as float32 (x2 while stacked), plus the cases being harmonised
    check_memory(total * voxels * 4 * 2 + harmonise_memory(pp.size, options.workers),
                 f"evaluating {total} volumes at --size {'x'.join(map(str, pp.size))}",
                 "use a smaller --size, fewer --workers or fewer volumes")
    extractor = make_extractor(options.features, options.device, options.cache)
    per_volume = per_volume_kind(extractor)
    anatomy = wants_anatomy(options, refs["real"])
    roots = {"real": real, "synthetic": synth, "train": train}
    sets = {
        role: load_set(roots[role], role_refs, role, pp, per_volume, options.workers, progress,
                       want_label_maps=anatomy and (role == "synthetic" or (role == "real" and options.anatomy_model is None)))
        for role, role_refs in refs.items()
    }
    real_set, synth_set, train_set = sets["real"], sets["synthetic"], sets.get("train")

    raw: dict[str, np.ndarray] = {}
    for role, vset in sets.items():
        if progress:
            progress(f"features {role}", 0, 1)
        raw[role] = vset.features if vset.features is not None else extractor(vset.arrays)  # type: ignore[operator]
        if progress:
            progress(f"features {role}", 1, 1)
    roles = list(sets)
    others = [raw[r] for r in roles[1:]]
    space = frd_feature_space(raw["real"], *others) if per_volume == "frd" else standardise(raw["real"], *others)
    standardised = dict(zip(roles, space, strict=True))

    fidelity = sections.fidelity(standardised["real"], standardised["synthetic"], options)
    if isinstance(extractor, FrdExtractor):
        fidelity["frd"] = sections.frd(raw["real"], raw["synthetic"], options, extractor.versions)
    summary: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        "meddiff_version": __version__,
        "synthetic_data_evaluated": True,
        "inputs": {role: {"path": str(roots[role]), "count": len(vset)} for role, vset in sets.items()},
        "harmonisation": _harmonisation(pp, grid.to_json()),
        "warnings": list(grid.warnings),
        "features": {
            "extractor": extractor.name,
            "device": extractor.runs_on,
            "dimension": int(raw["real"].shape[1]),
            "used_after_dropping_constant": int(standardised["real"].shape[1]),
            "standardised_with": (
                "REAL mean and standard deviation per feature (frd-score's z-score; non-finite columns dropped)"
                if per_volume == "frd" else "REAL mean and standard deviation per feature"
            ),
            "names": feature_names(extractor) or real_set.feature_names,
            "note": "distances are only comparable between reports made with the same extractor and harmonisation",
        },
        "fidelity": fidelity,
        "diversity": sections.diversity(real_set, synth_set, options, progress),
        "slice_consistency": sections.slice_consistency(real_set, synth_set, options),
        "intensity": sections.intensity(real_set, synth_set, pp, options),
        "anatomy": _anatomy(options, real_set, synth_set, pp, progress) if anatomy else None,
        "memorization": None,
        "bootstrap": {
            "reps": options.bootstrap_reps,
            "seed": options.seed,
            "min_n": 8,
            "resampled": "volumes",
            "method": "percentile interval re-centred on the estimate (bootstrap bias removed)",
        },
    }
    if train_set is not None:
        summary["memorization"] = memorization_check(
            synth_set.arrays, real_set.arrays, train_set.arrays,
            synth_set.names, real_set.names, train_set.names,
            standardised["synthetic"], standardised["real"], standardised["train"],
            margin=options.memorization_margin,
        )
    summary["verdict"] = make_verdict(summary)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return EvaluationResult(summary, real_set, synth_set, train_set, standardised)
