"""`evaluate_folders` on phantom corpora: same-distribution sets score close, corruptions score far and
monotonically worse, memorization flags a planted training copy and nothing else, reports are written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from meddiff_cli.evaluate import EvaluateOptions, evaluate_folders
from meddiff_cli.evaluate.report import write_report
from meddiff_cli.io import read_volume, write_nifti
from meddiff_cli.phantom import write_phantom_corpus
from meddiff_cli.phantom.generate import FIELD_OF_VIEW_MM

SIZE = 32
COUNT = 8  # >= 8 so that bootstrap intervals are computed
SPACING = FIELD_OF_VIEW_MM["ct"] / SIZE  # the phantoms' own grid: harmonisation resamples nothing away
SETTINGS = EvaluateOptions(size=SIZE, spacing=SPACING, bootstrap_reps=0, anatomy=False)
BLUR_SIGMAS = (0.6, 1.2, 2.4)  # voxels
NOISE_HU = (30.0, 90.0, 270.0)


def _corrupted_copy(source: Path, target: Path, blur: float = 0.0, noise: float = 0.0) -> Path:
    for index, path in enumerate(sorted((source / "images").glob("*.nii.gz"))):
        volume = read_volume(path, "ct")
        array = ndimage.gaussian_filter(volume.array, blur) if blur else volume.array
        if noise:
            array = array + np.random.default_rng(index).normal(scale=noise, size=array.shape)
        write_nifti(volume.with_array(array.astype(np.float32)), target / "images" / path.name)
    return target


@pytest.fixture(scope="session")
def phantom_sets(tmp_path_factory) -> dict[str, Path]:
    """REAL, SYNTH (same distribution, other seeds) and TRAIN phantom corpora at 32^3, plus corrupted SYNTHs."""
    root = tmp_path_factory.mktemp("evaluate_phantoms")
    sets = {}
    for name, seed in (("real", 0), ("synth", 1000), ("train", 2000)):
        write_phantom_corpus("ct", COUNT, root / name, size=SIZE, seed=seed)
        sets[name] = root / name
    for sigma in BLUR_SIGMAS:
        sets[f"blur{sigma}"] = _corrupted_copy(sets["synth"], root / f"blur{sigma}", blur=sigma)
    for level in NOISE_HU:
        sets[f"noise{level}"] = _corrupted_copy(sets["synth"], root / f"noise{level}", noise=level)
    return sets


@pytest.fixture(scope="session")
def same_distribution(phantom_sets):
    return evaluate_folders(phantom_sets["real"], phantom_sets["synth"], phantom_sets["train"], SETTINGS)


def test_same_distribution_scores_close_to_the_real_baseline(same_distribution, phantom_sets):
    summary = same_distribution.summary
    fid = summary["fidelity"]
    assert summary["features"]["extractor"] == "radiomics-v1"
    assert summary["harmonisation"]["function"] == "meddiff_cli.preprocess.harmonise_volume"
    assert summary["harmonisation"]["modality"] == "ct"  # auto: air in HU
    # Independent draws of the same phantom distribution look like another half of REAL.
    assert fid["frechet_distance"]["value"] < 2.0 * fid["frechet_distance"]["baseline_real_vs_real"]
    assert fid["precision"]["value"] >= 0.5 and fid["recall"]["value"] >= 0.5
    weakest = evaluate_folders(phantom_sets["real"], phantom_sets[f"blur{BLUR_SIGMAS[0]}"], None, SETTINGS).summary
    assert weakest["fidelity"]["frechet_distance"]["value"] > 3.0 * fid["frechet_distance"]["value"]
    ratios = [axis["ratio"] for axis in summary["slice_consistency"]["axes"].values()]
    assert all(0.8 < r < 1.25 for r in ratios)
    # Diversity of two phantom draws is similar; label volumes come from the phantom label maps.
    diversity = summary["diversity"]
    assert abs(diversity["ms_ssim_synthetic"]["value"] - diversity["ms_ssim_real"]["value"]) < 0.1
    assert diversity["settings"]["scales"] == 3
    labels = summary["intensity"]["labels"]
    assert set(labels) >= {"lungs", "heart", "bone"}
    assert abs(labels["lungs"]["relative_difference"]) < 0.5


@pytest.mark.parametrize("kind, levels", [("blur", BLUR_SIGMAS), ("noise", NOISE_HU)])
def test_distances_grow_monotonically_with_corruption(phantom_sets, kind, levels):
    summaries = [
        evaluate_folders(phantom_sets["real"], phantom_sets[f"{kind}{level}"], None, SETTINGS).summary for level in levels
    ]
    fd = [s["fidelity"]["frechet_distance"]["value"] for s in summaries]
    kid = [s["fidelity"]["kid"]["value"] for s in summaries]
    w1 = [s["intensity"]["wasserstein"]["value"] for s in summaries]
    assert np.all(np.diff(fd) > 0), fd
    assert np.all(np.diff(kid) > 0), kid
    assert np.all(np.diff(w1) > 0), w1
    assert summaries[-1]["fidelity"]["precision"]["value"] < 0.5


def test_memorization_flags_nothing_without_copies(same_distribution):
    memo = same_distribution.summary["memorization"]
    assert memo["flagged"] == []
    assert len(memo["per_synthetic"]) == COUNT
    assert memo["real_excluded_as_training_copies"] == []
    assert memo["threshold_ncc"] > memo["reference_real_ncc"]


def test_memorization_flags_a_planted_training_copy(phantom_sets, tmp_path):
    synth = tmp_path / "synth_with_copy"
    shutil.copytree(phantom_sets["synth"] / "images", synth)
    train_images = sorted((phantom_sets["train"] / "images").glob("*.nii.gz"))
    planted = train_images[3]
    shutil.copy(planted, synth / "planted.nii.gz")
    result = evaluate_folders(phantom_sets["real"], synth, phantom_sets["train"], SETTINGS)
    flagged = result.summary["memorization"]["flagged"]
    assert [f["synthetic"] for f in flagged] == ["planted.nii.gz"]
    assert flagged[0]["nearest_train"] == f"images/{planted.name}"
    assert flagged[0]["score"] == pytest.approx(1.0, abs=1e-5)
    per = {p["synthetic"]: p for p in result.summary["memorization"]["per_synthetic"]}
    assert per["planted.nii.gz"]["feature_distance"] == pytest.approx(0.0, abs=1e-6)

    report = write_report(result, tmp_path / "report")
    assert json.loads((report / "report.json").read_text())["memorization"]["flagged"] == flagged
    assert (report / "memorization_pairs.png").read_bytes().startswith(b"\x89PNG")
    html = (report / "report.html").read_text()
    assert "planted.nii.gz" in html and html.count("data:image/png;base64,") == 5
    assert "src='http" not in html and 'src="http' not in html  # self-contained


def test_bootstrap_intervals_and_real_copies_in_train(phantom_sets, tmp_path):
    """With >= 8 volumes CIs appear; a REAL scan that is also in TRAIN is not used as held-out reference."""
    train = tmp_path / "train"
    shutil.copytree(phantom_sets["train"] / "images", train)
    leaked = sorted((phantom_sets["real"] / "images").glob("*.nii.gz"))[0]
    shutil.copy(leaked, train / "leaked.nii.gz")
    settings = EvaluateOptions(size=SIZE, spacing=SPACING, bootstrap_reps=30, anatomy=False)
    summary = evaluate_folders(phantom_sets["real"], phantom_sets["synth"], train, settings).summary
    for key in ("frechet_distance", "kid"):  # re-centred intervals bracket the estimate
        entry = summary["fidelity"][key]
        assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
    assert summary["diversity"]["ms_ssim_synthetic"]["ci95"] is not None
    assert summary["memorization"]["real_excluded_as_training_copies"] == [f"images/{leaked.name}"]
    assert summary["memorization"]["flagged"] == []


def test_preprocessed_manifest_input_is_harmonised_like_the_raw_scans(phantom_sets, tmp_path):
    """A `meddiff preprocess` folder (model space, manifest.json) evaluated against its own raw scans ~ identical."""
    from meddiff_cli.preprocess import PreprocessSettings, preprocess_cases

    prep = tmp_path / "prep"
    preprocess_cases([phantom_sets["real"]], prep, PreprocessSettings(modality="ct", spacing=SPACING, size=SIZE))
    for source in (prep, prep / "manifest.json"):
        summary = evaluate_folders(phantom_sets["real"], source, None, SETTINGS).summary
        assert summary["inputs"]["synthetic"]["count"] == COUNT
        assert summary["fidelity"]["frechet_distance"]["value"] < 1e-3 * summary["fidelity"]["frechet_distance"]["baseline_real_vs_real"]
        assert summary["intensity"]["wasserstein"]["value"] < 1.0  # HU
        assert summary["intensity"]["labels"]["lungs"]["relative_difference"] == pytest.approx(0.0, abs=1e-6)


def test_mri_phantoms_auto_modality_and_small_sets(tmp_path):
    """MRI is recognised (no air in HU), intensities stay in model units, and 4 volumes give no CIs."""
    from meddiff_cli.phantom.generate import FIELD_OF_VIEW_MM as FOV

    for name, seed in (("real", 0), ("synth", 1000)):
        write_phantom_corpus("mri", 4, tmp_path / name, size=SIZE, seed=seed)
    settings = EvaluateOptions(size=SIZE, spacing=FOV["mri"] / SIZE, bootstrap_reps=50, anatomy=False)
    summary = evaluate_folders(tmp_path / "real", tmp_path / "synth", None, settings).summary
    assert summary["harmonisation"]["modality"] == "mri"
    assert summary["harmonisation"]["intensity"]["kind"] == "percentile"
    assert summary["intensity"]["unit"].startswith("model units")
    assert summary["fidelity"]["frechet_distance"]["ci95"] is None  # fewer than 8 volumes
    assert summary["fidelity"]["frechet_distance"]["baseline_real_vs_real"] is not None  # 2 + 2 halves
    assert set(summary["intensity"]["labels"]) == {"csf", "gm", "wm"}  # names from the phantom manifest
