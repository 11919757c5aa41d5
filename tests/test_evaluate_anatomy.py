"""The anatomy check: structure statistics against hand counts, and a segmenter trained on REAL's phantom labels
that finds lungs, heart and bone in real phantoms and less bone in phantoms whose bone was painted over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from meddiff_cli.evaluate import EvaluateOptions, evaluate_folders
from meddiff_cli.evaluate.anatomy import compare_structures, structure_statistics
from meddiff_cli.io import read_volume, write_nifti
from meddiff_cli.phantom.generate import LABELS
from tests.test_evaluate_phantoms import COUNT, SPACING, phantom_sets  # noqa: F401  (session fixture)

STEPS = 100


def test_structure_statistics_count_voxels_and_components():
    classes = np.zeros((2, 10, 10, 10), dtype=np.int64)
    classes[0, :2, :2, :2] = 1  # 8 voxels, one component
    classes[0, 5:7, 5:7, 5:7] = 1  # another 8, a second component
    classes[0, 9, 9, 9] = 2
    classes[1, 0, 0, 0] = 1
    classes[1, 1, 1, 1] = 1  # diagonal neighbours: one 26-connected component
    volumes, components = structure_statistics(classes, 2, voxel_ml=0.5)
    np.testing.assert_array_equal(volumes, [[8.0, 0.5], [1.0, 0.0]])
    np.testing.assert_array_equal(components, [[2, 1], [1, 0]])


def test_compare_structures_presence_and_wasserstein():
    real = np.zeros((6, 8, 8, 8), dtype=np.int64)
    synth = np.zeros((4, 8, 8, 8), dtype=np.int64)
    for v in range(6):
        real[v, : 2 + v % 2] = 1  # 128 or 192 voxels of "organ"
    synth[0, :2] = 1
    synth[1, 0, 0, 0] = 1  # one voxel: far below 10 % of REAL's median, not "present"
    result = compare_structures(real, synth, ["organ"], (1.0, 1.0, 1.0), seed=0)["organ"]
    assert result["presence"]["real"] == 1.0 and result["presence"]["synthetic"] == 0.25
    real_ml = [float(np.count_nonzero(r)) / 1000 for r in real]
    synth_ml = [float(np.count_nonzero(s)) / 1000 for s in synth]
    assert result["volume_ml"]["wasserstein"] == pytest.approx(stats.wasserstein_distance(real_ml, synth_ml))
    assert result["volume_ml"]["baseline_real_vs_real"] is not None
    assert result["components"]["synthetic"]["mean"] == 0.5


def _paint_over_bone(source: Path, target: Path) -> Path:
    """Copies of a phantom corpus whose bone is painted over: labelled bone and anything brighter than soft
    tissue (partial-volume bone in neighbouring voxels) set to 40 HU."""
    bone = LABELS["ct"]["bone"]
    for image_path in sorted((source / "images").glob("*.nii.gz")):
        image = read_volume(image_path, "ct")
        labels = read_volume(source / "labels" / image_path.name, "unknown").array
        array = np.where((labels == bone) | (image.array > 100.0), 40.0, image.array).astype(np.float32)
        write_nifti(image.with_array(array), target / "images" / image_path.name)
    return target


def test_segmenter_trained_on_real_labels_finds_missing_bone(phantom_sets, tmp_path):  # noqa: F811
    no_bone = _paint_over_bone(phantom_sets["synth"], tmp_path / "no_bone")
    options = EvaluateOptions(size=32, spacing=SPACING, bootstrap_reps=0, anatomy_steps=STEPS)
    summary = evaluate_folders(phantom_sets["real"], no_bone, None, options).summary
    anatomy = summary["anatomy"]  # on by default: REAL has label maps
    structures = anatomy["structures"]
    assert set(structures) == {"lungs", "heart", "bone", "nodules", "great_vessels"}
    for name in ("lungs", "heart", "bone"):
        assert structures[name]["presence"]["real"] >= 0.9, (name, structures[name])
    assert structures["lungs"]["presence"]["synthetic"] >= 0.9
    # A segmenter that has seen chests fills in some bone from context (the check's known limit, see
    # docs/evaluate.md), so painted-over bone shows as a volume shift rather than absence: measured here
    # ~0.85x the real mean and ~0.92x the untouched draws' mean, on a 100-step segmenter.
    bone = structures["bone"]["volume_ml"]
    assert bone["synthetic"]["mean"] < 0.9 * bone["real"]["mean"], bone
    assert anatomy["segmenter"]["trained_on"] + anatomy["segmenter"]["validation_volumes"] == COUNT
    assert anatomy["segmenter"]["validation_dice"]["lungs"] > 0.7
    assert "bone present in" in summary["verdict"]["anatomy"]["bone"]["reading"]

    again = evaluate_folders(phantom_sets["real"], phantom_sets["synth"], None, options).summary["anatomy"]
    assert again["segmenter"]["cached"] is True  # same REAL set, grid and budget: trained once
    same = again["structures"]["bone"]["volume_ml"]
    assert same["wasserstein"] < bone["wasserstein"]  # the untouched draws are closer than the painted ones
    assert bone["synthetic"]["mean"] < 0.97 * same["synthetic"]["mean"], (bone, same)  # and have more bone
    assert again["structures"]["bone"]["presence"]["synthetic"] >= 0.9
