"""The anatomy check (MAISI-style): segment REAL and SYNTH with one segmenter and compare the structures.

Texture statistics cannot tell that a sample has no spine; a segmenter can. The same segmenter
(:mod:`meddiff_cli.evaluate.segmenter`) labels every REAL and SYNTH volume on the harmonised grid — using it
on both sides makes its own errors cancel in the comparison — and, per structure, the check reports:

* presence: the fraction of volumes where the structure is found, i.e. its predicted volume is at least
  :data:`PRESENCE_FRACTION` of REAL's median volume of that structure (a spine a tenth of the usual size
  is not a spine);
* volume: mean and spread in mL, and the Wasserstein-1 distance between the REAL and SYNTH volume
  distributions (mL) next to the same distance between two random halves of REAL;
* connected components per volume (26-connected): one lung field or heart is 1-2 components, a
  fragmented or speckled structure many;
* label agreement, when SYNTH comes with label maps (``meddiff sample --with-labels``): the Dice between the
  segmenter's reading of each synthetic image and the label map generated with it, next to the segmenter's
  Dice on held-out REAL volumes against their true labels. Generated labels that match their images score
  close to the real-vs-real value; labels that drift from their images score far below it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage, stats

from meddiff_cli.evaluate.loading import VolumeSet
from meddiff_cli.evaluate.metrics import random_halves
from meddiff_cli.evaluate.segmenter import Segmenter

PRESENCE_FRACTION = 0.1
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def structure_statistics(classes: np.ndarray, n_classes: int, voxel_ml: float) -> tuple[np.ndarray, np.ndarray]:
    """(volumes in mL, connected components), each ``[n_volumes, n_classes]``, from class-index maps."""
    volumes = np.zeros((len(classes), n_classes))
    components = np.zeros((len(classes), n_classes), dtype=np.int64)
    for v, volume in enumerate(classes):
        counts = np.bincount(volume.ravel().astype(np.int64), minlength=n_classes + 1)
        volumes[v] = counts[1 : n_classes + 1] * voxel_ml
        for c in range(n_classes):
            if counts[c + 1]:
                components[v, c] = ndimage.label(volume == c + 1, structure=CONNECTIVITY)[1]
    return volumes, components


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "median": float(np.median(values))}


def compare_structures(real_classes: np.ndarray, synth_classes: np.ndarray, names: list[str],
                       spacing: tuple[float, float, float], seed: int) -> dict[str, Any]:
    """Per-structure presence, volume distributions and components of two sets of class-index maps."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    real_ml, real_parts = structure_statistics(real_classes, len(names), voxel_ml)
    synth_ml, synth_parts = structure_statistics(synth_classes, len(names), voxel_ml)
    halves = random_halves(len(real_ml), seed) if len(real_ml) >= 4 else None
    structures: dict[str, Any] = {}
    for c, name in enumerate(names):
        reference = float(np.median(real_ml[:, c]))
        threshold = max(PRESENCE_FRACTION * reference, voxel_ml)  # at least one voxel
        baseline = None
        if halves is not None:
            baseline = float(stats.wasserstein_distance(real_ml[halves[0], c], real_ml[halves[1], c]))
        structures[name] = {
            "presence": {"real": float(np.mean(real_ml[:, c] >= threshold)),
                         "synthetic": float(np.mean(synth_ml[:, c] >= threshold)), "threshold_ml": threshold},
            "volume_ml": {"real": _summary(real_ml[:, c]), "synthetic": _summary(synth_ml[:, c]),
                          "wasserstein": float(stats.wasserstein_distance(real_ml[:, c], synth_ml[:, c])),
                          "baseline_real_vs_real": baseline},
            "components": {"real": _summary(real_parts[:, c]), "synthetic": _summary(synth_parts[:, c])},
            "values_ml": {"real": [round(float(v), 3) for v in real_ml[:, c]],
                          "synthetic": [round(float(v), 3) for v in synth_ml[:, c]]},
        }
    return structures


def anatomy_check(real: VolumeSet, synth: VolumeSet, segmenter: Segmenter, spacing: tuple[float, float, float],
                  seed: int) -> dict[str, Any]:
    """Segment both sets and compare them structure by structure (the ``anatomy`` section of the report)."""
    real_classes = segmenter.predict(real.arrays)
    synth_classes = segmenter.predict(synth.arrays)
    result = {
        "segmenter": segmenter.source,
        "presence_rule": f"predicted volume >= {PRESENCE_FRACTION:g} x REAL's median volume of the structure "
                         "(and at least one voxel)",
        "structures": compare_structures(real_classes, synth_classes, segmenter.class_names, spacing, seed),
    }
    if synth.labels is not None:
        result["label_agreement"] = label_agreement(synth_classes, synth.labels, synth.label_names, segmenter)
    return result


def label_agreement(predicted: np.ndarray, labels: np.ndarray, label_names: dict[int, str],
                    segmenter: Segmenter) -> dict[str, Any]:
    """Per structure (matched by name): mean Dice of segmenter(synthetic image) vs the generated label map."""
    value_of = {name: value for value, name in label_names.items()}
    dice: dict[str, float | None] = {}
    for index, name in enumerate(segmenter.class_names, start=1):
        if name not in value_of:
            continue
        scores = []
        for prediction, label in zip(predicted, labels):
            p, t = prediction == index, label == value_of[name]
            total = int(p.sum()) + int(t.sum())
            if total:
                scores.append(2.0 * int((p & t).sum()) / total)
        dice[name] = round(float(np.mean(scores)), 4) if scores else None
    reference = segmenter.source.get("validation_dice") or {}
    scored = [v for v in dice.values() if v is not None]
    return {
        "dice": dice,
        "mean_dice": round(float(np.mean(scored)), 4) if scored else None,
        "real_reference_dice": {name: reference.get(name) for name in dice},
        "reading": "Dice of the segmenter's reading of each synthetic image against the label map generated with "
                   "it; real_reference_dice is the same segmenter on held-out REAL volumes against their true labels",
        "unmatched_names": sorted({n for v, n in label_names.items() if v != 0} - set(segmenter.class_names)),
    }
