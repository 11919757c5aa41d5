"""Per-class Dice and HD95 (MONAI metrics), their empty-class rules, and the paired A-vs-B statistics.

Empty classes, per test case and class (background excluded):

* class absent from the ground truth: Dice and HD95 are undefined for that case (MONAI's
  ``ignore_empty=True`` gives NaN) and the case does not count towards that class's mean;
* class present in the ground truth but not predicted: Dice 0, and HD95 is set to the diagonal of
  the volume in mm (the largest distance possible on the grid) instead of MONAI's inf, so a missed
  structure is penalised rather than silently dropped; such cases are counted as ``missed``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot
from scipy import stats


def _one_hot(labels: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Class indices [N, X, Y, Z] -> one-hot [N, C+1, X, Y, Z] (the layout MONAI metrics expect)."""
    return one_hot(labels.long().unsqueeze(1), num_classes=n_channels, dim=1)


def dice_per_case(prediction: torch.Tensor, truth: torch.Tensor, n_classes: int) -> np.ndarray:
    """Dice [N, C] for foreground classes 1..C; NaN where the class is absent from the ground truth."""
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    scores = metric(_one_hot(prediction, n_classes + 1), _one_hot(truth, n_classes + 1))
    return scores.cpu().numpy().astype(np.float64)


def hd95_per_case(prediction: torch.Tensor, truth: torch.Tensor, n_classes: int,
                  spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(HD95 in mm [N, C], missed [N, C] bool) with the empty-class rules of this module."""
    pred_1h, truth_1h = _one_hot(prediction, n_classes + 1), _one_hot(truth, n_classes + 1)
    metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    with warnings.catch_warnings():  # empty masks warn; they are handled explicitly below
        warnings.simplefilter("ignore")
        distances = metric(pred_1h, truth_1h, spacing=list(spacing)).cpu().numpy().astype(np.float64)
    truth_present = truth_1h[:, 1:].flatten(2).any(dim=2).cpu().numpy()
    pred_present = pred_1h[:, 1:].flatten(2).any(dim=2).cpu().numpy()
    diagonal = float(np.linalg.norm(np.asarray(prediction.shape[1:]) * np.asarray(spacing)))
    missed = truth_present & ~pred_present
    distances[missed] = diagonal
    distances[~truth_present] = np.nan
    return distances, missed


def score_predictions(prediction: torch.Tensor, truth: torch.Tensor, class_names: list[str],
                      spacing: tuple[float, float, float]) -> dict[str, Any]:
    """Per-class means over the test cases plus the class-averaged Dice/HD95 of one trained model."""
    n_classes = len(class_names)
    dice = dice_per_case(prediction, truth, n_classes)
    hd95, missed = hd95_per_case(prediction, truth, n_classes, spacing)
    dice_by_class = {name: _nanmean(dice[:, c]) for c, name in enumerate(class_names)}
    hd95_by_class = {name: _nanmean(hd95[:, c]) for c, name in enumerate(class_names)}
    return {
        "dice": dice_by_class,
        "hd95_mm": hd95_by_class,
        "missed": {name: int(missed[:, c].sum()) for c, name in enumerate(class_names)},
        "mean_dice": _mean_of(dice_by_class.values()),
        "mean_hd95_mm": _mean_of(hd95_by_class.values()),
        "dice_per_case": [[_finite_or_none(v) for v in row] for row in dice],
    }


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _mean_of(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof = 1) over seeds; std is None for a single value."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(present)), "std": float(np.std(present, ddof=1)) if len(present) > 1 else None,
            "n": len(present)}


def paired_comparison(baseline: list[float], treatment: list[float]) -> dict[str, Any]:
    """Paired difference treatment - baseline: mean, std, paired t-test and Wilcoxon signed-rank test.

    p-values are None where a test is undefined (n < 2, or all differences zero for Wilcoxon).
    With n below 6 the two-sided Wilcoxon test cannot reach p < 0.05 at all: read small-n results
    as effect sizes, not as significance.
    """
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(treatment, dtype=np.float64)
    diff = b - a
    n = int(diff.size)
    result: dict[str, Any] = {
        "n": n,
        "mean_difference": float(diff.mean()) if n else None,
        "std_difference": float(diff.std(ddof=1)) if n > 1 else None,
        "treatment_better": int((diff > 0).sum()),
        "baseline_better": int((diff < 0).sum()),
        "t_statistic": None, "t_p_value": None, "wilcoxon_statistic": None, "wilcoxon_p_value": None,
    }
    if n > 1 and np.ptp(diff) > 0:
        t = stats.ttest_rel(b, a)
        result["t_statistic"], result["t_p_value"] = float(t.statistic), float(t.pvalue)
    if n > 1 and np.any(diff != 0):
        w = stats.wilcoxon(b, a)
        result["wilcoxon_statistic"], result["wilcoxon_p_value"] = float(w.statistic), float(w.pvalue)
    return result
