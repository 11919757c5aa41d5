"""``--features frd``: meddiff's FRDv1 equals ``python -m frd_score`` on the same folders; a clear message without the extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meddiff_cli.errors import ModelError
from meddiff_cli.evaluate import EvaluateOptions, evaluate_folders
from meddiff_cli.evaluate import frd as frd_module
from meddiff_cli.evaluate.features import make_extractor
from meddiff_cli.io import write_nifti
from meddiff_cli.phantom import generate_phantom

needs_frd = pytest.mark.skipif(not frd_module.frd_available(), reason="needs the frd extra: pip install 'meddiff[frd]'")


def _folder(folder: Path, seeds: range) -> Path:
    """Flat folders of 16^3 CT phantoms at 2 mm (pyradiomics' own resampling grid: seconds per volume)."""
    folder.mkdir(parents=True)
    for seed in seeds:
        image, _ = generate_phantom("ct", seed, 16, 2.0)
        clipped = np.clip(image.array, -1024, 1023)  # inside the window below: harmonisation changes nothing
        write_nifti(image.with_array(clipped.astype(np.float32)), folder / f"case_{seed:03d}.nii.gz", dtype="int16")
    return folder


@needs_frd
def test_frd_matches_frd_score_on_the_same_folders(tmp_path):
    """Same folders, no grid options: the grid is the volumes' own, so meddiff's inputs are the files' voxels.

    The window -1024..1024 maps integer HU to model space and back exactly (a power-of-two scale); with other
    windows float rounding moves a few voxels across pyradiomics' bin edges (~1e-3 relative on FRD), which
    is why the comparison is between identical voxels.
    """
    real, synth = _folder(tmp_path / "real", range(4)), _folder(tmp_path / "synth", range(100, 103))
    options = EvaluateOptions(features="frd", window=(-1024.0, 1024.0), bootstrap_reps=0, anatomy=False)
    summary = evaluate_folders(real, synth, None, options).summary
    frd = summary["fidelity"]["frd"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "frd_score", str(real), str(synth), "-w", "1"],
                         capture_output=True, text=True, env=env, timeout=600, check=True)
    reference = float(run.stdout.strip().splitlines()[-1].split(":")[-1])
    assert frd["value"] == pytest.approx(reference, rel=1e-6, abs=0.0)
    assert frd["features_extracted"] > 400 and frd["features_used"] <= frd["features_extracted"]
    assert frd["baseline_real_vs_real"] is not None  # 2 + 2 halves of REAL
    assert summary["features"]["extractor"] == "frd-v1" and summary["harmonisation"]["grid"]["source"] == "synthetic"
    # FD on the same z-scored features is d^2 up to sqrtm's numerics on a rank-deficient product
    assert summary["fidelity"]["frechet_distance"]["value"] == pytest.approx(frd["squared_distance"], rel=1e-3)
    assert summary["verdict"]["metrics"]["frd"]["ratio"] == pytest.approx(np.exp(frd["value"] - frd["baseline_real_vs_real"]))


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setattr(frd_module, "frd_available", lambda: False)
    with pytest.raises(ModelError, match=r"pip install 'meddiff\[frd\]'"):
        make_extractor("frd")
