"""The harmonisation grid comes from the data: sample manifest, then agreeing headers, then REAL; crops are measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from meddiff_cli.evaluate import EvaluateOptions, evaluate_folders
from meddiff_cli.evaluate.grid import CROP_WARN_FRACTION, Geometry, choose_grid, crop_summary, geometry_from_affine
from meddiff_cli.evaluate.loading import list_cases
from meddiff_cli.io import Volume, write_nifti


def _volumes(folder: Path, count: int, shape, spacing, value: float = 0.0, prefix: str = "v") -> Path:
    affine = np.diag([*np.broadcast_to(spacing, (3,)), 1.0])
    rng = np.random.default_rng(count)
    for i in range(count):
        array = (value + rng.normal(0, 50, shape)).astype(np.float32) - 600.0  # air-ish: modality auto says CT
        write_nifti(Volume(array, affine.copy(), "ct"), folder / f"{prefix}{i}.nii.gz")
    return folder


def _choose(real: Path, synth: Path, **options) -> object:
    refs = list_cases(real, "REAL"), list_cases(synth, "SYNTH")
    return choose_grid(*refs, synth, "ct", EvaluateOptions(**options))


def test_sample_manifest_grid_wins_and_a_crop_of_real_is_warned(tmp_path):
    real = _volumes(tmp_path / "real", 3, (40, 40, 40), 10.0)  # 400 mm field of view
    synth = _volumes(tmp_path / "synth", 2, (12, 12, 12), 2.0)  # headers say 2 mm; the manifest says otherwise
    (synth / "manifest.json").write_text(json.dumps(
        {"format": "meddiff-synthetic", "volume": {"shape": [64, 64, 64], "spacing": [6.0, 6.0, 6.0]}}))
    choice = _choose(real, synth)
    assert choice.size == (64, 64, 64) and choice.spacing == (6.0, 6.0, 6.0)
    assert choice.source == "synthetic" and "sample manifest" in choice.reason
    expected = 1.0 - (384.0 / 400.0) ** 3  # the 384 mm grid cuts 16 mm off each axis of a 400 mm volume
    assert choice.crop["real"]["max_fraction"] == pytest.approx(expected, abs=1e-4)
    assert expected > CROP_WARN_FRACTION and len(choice.warnings) == 1 and "REAL" in choice.warnings[0]


def test_agreeing_headers_give_the_synthetic_grid_else_reals(tmp_path):
    real = _volumes(tmp_path / "real", 3, (20, 20, 20), 3.0)
    synth = _volumes(tmp_path / "synth", 2, (16, 16, 16), 3.0)
    choice = _choose(real, synth)
    assert (choice.size, choice.spacing, choice.source) == ((16, 16, 16), (3.0, 3.0, 3.0), "synthetic")
    assert choice.crop["real"]["max_fraction"] == pytest.approx(1 - (16 / 20) ** 3, abs=1e-4)

    other = _volumes(tmp_path / "other", 2, (16, 16, 16), 2.0)  # spacing disagrees with REAL: REAL's grid
    choice = _choose(real, other)
    assert (choice.size, choice.spacing, choice.source) == ((20, 20, 20), (3.0, 3.0, 3.0), "real")
    assert choice.crop["synthetic"]["max_fraction"] == 0.0 and choice.warnings == []


def test_mixed_real_grids_use_median_spacing_and_field_of_view(tmp_path):
    real = tmp_path / "real"
    _volumes(real, 1, (30, 30, 30), 2.0, prefix="a")
    _volumes(real, 1, (20, 20, 20), 3.0, prefix="b")
    _volumes(real, 1, (100, 100, 100), 4.0, prefix="c")  # median spacing 3 mm, median field of view 60 mm
    synth = _volumes(tmp_path / "synth", 2, (8, 8, 8), 1.0)
    choice = _choose(real, synth)
    assert choice.spacing == (3.0, 3.0, 3.0) and choice.size == (20, 20, 20) and "median" in choice.reason
    assert choice.crop["real"]["volumes_cropped"] == 1  # the 400 mm volume


def test_one_grid_option_keeps_the_field_of_view(tmp_path):
    real = _volumes(tmp_path / "real", 2, (32, 32, 32), 6.0)
    synth = _volumes(tmp_path / "synth", 2, (32, 32, 32), 6.0)
    assert _choose(real, synth, spacing=12.0).size == (16, 16, 16)
    assert _choose(real, synth, size=64).spacing == (3.0, 3.0, 3.0)
    both = _choose(real, synth, size=8, spacing=5.0)
    assert (both.size, both.spacing, both.source) == ((8, 8, 8), (5.0, 5.0, 5.0), "command line")
    assert both.crop["real"]["max_fraction"] == pytest.approx(1 - (40 / 192) ** 3, abs=1e-4)


def test_geometry_is_in_ras_axis_order():
    affine = np.array([[0, 0, -2.0, 0], [3.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])  # i->A, j->S, k->R (flipped)
    assert geometry_from_affine((10, 20, 30), affine) == Geometry((30, 10, 20), (2.0, 3.0, 1.5), (60.0, 30.0, 30.0))
    assert crop_summary([], (8, 8, 8), (1.0, 1.0, 1.0))["max_fraction"] is None


def test_evaluate_without_grid_options_uses_the_sets_own_grid(tmp_path):
    real = _volumes(tmp_path / "real", 4, (12, 12, 12), 5.0)
    synth = _volumes(tmp_path / "synth", 4, (12, 12, 12), 5.0, value=30.0)
    summary = evaluate_folders(real, synth, None, EvaluateOptions(bootstrap_reps=0)).summary
    grid = summary["harmonisation"]["grid"]
    assert summary["harmonisation"]["size"] == [12, 12, 12] and summary["harmonisation"]["spacing_mm"] == [5.0, 5.0, 5.0]
    assert grid["source"] == "synthetic" and summary["warnings"] == [] and summary["anatomy"] is None
