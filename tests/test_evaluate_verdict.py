"""The verdict reads each number against REAL-vs-REAL: an identical set is close, a blurred one far, KID's
negative baseline does not vote, and a missing structure is named."""

from __future__ import annotations

import math
import shutil

import pytest

from meddiff_cli.evaluate import EvaluateOptions, evaluate_folders
from meddiff_cli.evaluate.verdict import make_verdict
from tests.test_evaluate_phantoms import SETTINGS, phantom_sets  # noqa: F401  (session fixture)


def _summary(fd=(10.0, 10.0), kid=(0.0, -0.001), precision=(1.0, 1.0), w1=(5.0, 5.0), frd=None, anatomy=None):
    def entry(pair):
        return {"value": pair[0], "baseline_real_vs_real": pair[1]}

    fidelity = {"frechet_distance": entry(fd), "kid": entry(kid), "precision": entry(precision), "recall": entry(precision)}
    if frd:
        fidelity["frd"] = entry(frd)
    return {"features": {"extractor": "radiomics-v1"}, "fidelity": fidelity,
            "intensity": {"wasserstein": entry(w1)}, "anatomy": anatomy}


def test_ratios_and_categories():
    far = make_verdict(_summary(fd=(1800.0, 10.0)))
    assert far["overall"] == "far" and far["metrics"]["frechet_distance"]["ratio"] == pytest.approx(180.0)
    assert far["line"].startswith("far from real: Fréchet distance (radiomics-v1) 180x the real-vs-real distance")
    assert make_verdict(_summary(fd=(14.0, 10.0)))["overall"] == "close"
    assert make_verdict(_summary(fd=(30.0, 10.0)))["overall"] == "different"
    frd = make_verdict(_summary(frd=(5.0 + math.log(3.0), 5.0)))["metrics"]["frd"]  # log scale: 3x of d^2
    assert frd["ratio"] == pytest.approx(3.0) and frd["category"] == "different"


def test_negative_kid_baseline_is_explained_not_used():
    verdict = make_verdict(_summary(kid=(0.5, -0.002)))
    kid = verdict["metrics"]["kid"]
    assert kid["ratio"] is None and kid["category"] is None and "unbiased" in kid["reading"]
    assert verdict["overall"] == "close"  # KID alone does not decide


def test_missing_structure_is_named():
    anatomy = {"structures": {
        "bone": {"presence": {"real": 1.0, "synthetic": 0.0}},
        "nodules": {"presence": {"real": 0.2, "synthetic": 0.0}},  # rare in REAL too: not a presence test
    }}
    verdict = make_verdict(_summary(anatomy=anatomy))
    assert verdict["overall"] == "far" and "bone present in 0 % of samples vs 100 % of real" in verdict["line"]
    assert set(verdict["anatomy"]) == {"bone"}


def test_identical_set_is_close_and_blurred_set_is_far(phantom_sets, tmp_path):  # noqa: F811
    copy = tmp_path / "copy"
    shutil.copytree(phantom_sets["real"] / "images", copy)
    identical = evaluate_folders(phantom_sets["real"], copy, None, SETTINGS).summary["verdict"]
    assert identical["overall"] == "close", identical["line"]
    assert identical["metrics"]["frechet_distance"]["ratio"] < 1e-6
    blurred = evaluate_folders(phantom_sets["real"], phantom_sets["blur2.4"], None, SETTINGS).summary["verdict"]
    assert blurred["overall"] == "far" and "x the real-vs-real distance" in blurred["line"]


@pytest.mark.slow
def test_bundled_model_samples_are_judged_on_the_models_own_grid(tmp_path):
    """Today's bundled default model against held-out CT phantoms, no grid options: the 6 mm grid of its sample
    manifest is used, nothing is cropped (the phantoms' 380 mm fit in 384 mm) and the verdict states the distance
    ratio the fidelity numbers give. (4 samples against 8 phantoms say little about quality, which the README's
    table measures at 100 against 100.)"""
    from meddiff_cli.model.registry import BUNDLED_DIR
    from meddiff_cli.phantom import write_phantom_corpus
    from meddiff_cli.sample import SampleOptions, sample_volumes

    if not (BUNDLED_DIR / "default" / "model.json").is_file():
        pytest.skip("no bundled default model in this checkout")
    write_phantom_corpus("ct", 8, tmp_path / "heldout", size=64, seed=900)
    sample_volumes(SampleOptions(modality="ct", count=4, out=tmp_path / "synth", backend="torch", device="cpu"))
    summary = evaluate_folders(tmp_path / "heldout", tmp_path / "synth", None,
                               EvaluateOptions(bootstrap_reps=0, anatomy=False)).summary
    grid = summary["harmonisation"]["grid"]
    assert (grid["size"], grid["spacing_mm"]) == ([64, 64, 64], [6.0, 6.0, 6.0]) and "sample manifest" in grid["reason"]
    assert summary["warnings"] == [] and grid["crop"]["real"]["max_fraction"] == 0.0
    verdict, distance = summary["verdict"], summary["fidelity"]["frechet_distance"]
    ratio = verdict["metrics"]["frechet_distance"]["ratio"]
    assert ratio == pytest.approx(distance["value"] / distance["baseline_real_vs_real"], rel=1e-3)
    prefix = {"close": "close to real: ", "different": "noticeably different from real: ", "far": "far from real: "}
    assert verdict["line"].startswith(prefix[verdict["overall"]]) and f"{ratio:.3g}x" in verdict["line"]
