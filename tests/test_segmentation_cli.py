"""``meddiff augment-seg`` end to end on tiny CT phantoms (CPU), and its bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meddiff_cli.io import Volume, write_nifti
from meddiff_cli.phantom import LABELS, generate_phantom
from meddiff_cli.segmentation import ExperimentSettings, load_network, predict, prepare_data, score_predictions

PHANTOM_SIZE = 32
EXPERIMENT = ["--size", "24", "--device", "cpu", "--seeds", "1", "--n-labelled", "2", "--epochs", "2",
              "--pretrain-epochs", "1", "--steps-per-epoch", "2"]


def write_corpus(folder: Path, seeds: range) -> Path:
    """images/ + labels/ + manifest.json (label names), the layout ``meddiff phantom`` writes."""
    for seed in seeds:
        image, labels = generate_phantom("ct", seed, PHANTOM_SIZE)
        write_nifti(image, folder / "images" / f"phantom_{seed:03d}.nii.gz", dtype="int16")
        write_nifti(labels, folder / "labels" / f"phantom_{seed:03d}.nii.gz", dtype="uint8")
    (folder / "manifest.json").write_text(json.dumps({"modality": "ct", "labels": LABELS["ct"]}))
    return folder


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("augment_seg")
    return {"train": write_corpus(root / "train", range(0, 6)), "test": write_corpus(root / "test", range(6, 8)),
            "synthetic": write_corpus(root / "synthetic", range(100, 103))}


def base_args(corpora: dict[str, Path], out: Path) -> list[str]:
    return ["augment-seg", "--images", corpora["train"] / "images", "--labels", corpora["train"] / "labels",
            "--test-images", corpora["test"] / "images", "--test-labels", corpora["test"] / "labels",
            "--synthetic", corpora["synthetic"], "--out", out, *EXPERIMENT]


def test_end_to_end_results_plot_and_reloadable_models(corpora, tmp_path, run_meddiff):
    out = tmp_path / "exp"
    code, stdout, stderr = run_meddiff(*base_args(corpora, out), "--arm-c", "--json")
    assert code == 0, stderr
    results = json.loads(stdout)
    assert results == json.loads((out / "results.json").read_text())
    assert "seed 0 K=2 arm B epoch 2/2" in stderr and "pretrain" in stderr

    classes = {c["value"]: c["name"] for c in results["data"]["classes"]}
    assert {1: "lungs", 2: "heart", 3: "bone"}.items() <= classes.items()  # names from the manifest
    assert results["data"]["n_train_pool"] == 6 and results["data"]["n_test"] == 2
    assert results["data"]["n_synthetic"] == 3 and results["data"]["n_synthetic_labelled"] == 3
    assert sorted((r["arm"], r["k"], r["seed"]) for r in results["runs"]) == [("A", 2, 0), ("B", 2, 0), ("C", 2, 0)]
    by_arm = {r["arm"]: r for r in results["runs"]}
    assert by_arm["A"]["train_case_indices"] == by_arm["B"]["train_case_indices"] == by_arm["C"]["train_case_indices"]
    for run in results["runs"]:
        assert 0.0 <= run["mean_dice"] <= 1.0
        assert all(v is None or 0.0 <= v <= 1.0 for v in run["dice"].values())
        assert all(v is None or v >= 0.0 for v in run["hd95_mm"].values())
    assert results["summary"]["B"]["2"]["mean_dice"]["mean"] == pytest.approx(by_arm["B"]["mean_dice"])
    pooled = [t for t in results["paired"] if t["comparison"] == "B - A" and t["k"] == "all"][0]
    assert pooled["n"] == 1 and pooled["mean_difference"] == pytest.approx(by_arm["B"]["mean_dice"] - by_arm["A"]["mean_dice"])
    assert "phantom_" not in (out / "results.json").read_text()  # case ids (file names) never reach outputs

    with Image.open(out / "dice_vs_k.png") as plot:
        assert plot.format == "PNG" and plot.size == (720, 480)
        assert len(plot.convert("RGB").getcolors(1 << 16)) > 3  # axes, text and three coloured arms

    # Every saved model, rebuilt from safetensors + JSON, reproduces its reported test Dice.
    settings = ExperimentSettings(images=corpora["train"] / "images", labels=corpora["train"] / "labels",
                                  synthetic=corpora["synthetic"], test_images=corpora["test"] / "images",
                                  test_labels=corpora["test"] / "labels", n_labelled=(2,), size=24)
    data = prepare_data(settings)
    for run in results["runs"]:
        net, sidecar = load_network(out / run["model"])
        assert sidecar["arm"] == run["arm"] and sidecar["preprocess"]["size"] == [24, 24, 24]
        prediction = predict(net, torch.from_numpy(data.test.images), torch.device("cpu"))
        scores = score_predictions(prediction, torch.from_numpy(data.test.labels), data.classes.names, data.test.spacing)
        assert scores["dice"] == pytest.approx(run["dice"], abs=1e-6)
    assert (out / "models" / "pretrain_seed0.safetensors").is_file()


def test_table_on_stdout_without_json(corpora, tmp_path, run_meddiff):
    code, stdout, _ = run_meddiff(*base_args(corpora, tmp_path / "exp"), "-q")
    assert code == 0
    assert "mean Dice" in stdout and "lungs" in stdout and "B - A (K=2, n=1)" in stdout


def unwrapped(stderr: str) -> str:
    """The error line as printed, without the wrapping rich adds at the (test) console width."""
    return stderr.replace("\n", "")


def copy_corpus(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_image_without_label_is_a_clear_error(corpora, tmp_path, run_meddiff):
    train = copy_corpus(corpora["train"], tmp_path / "train")
    (train / "labels" / "phantom_002.nii.gz").unlink()
    out = tmp_path / "exp"
    args = base_args(corpora, out)
    args[2], args[4] = train / "images", train / "labels"
    code, stdout, stderr = run_meddiff(*args)
    assert code == 4 and stdout == ""
    stderr = unwrapped(stderr)
    assert "phantom_002.nii.gz" in stderr and "no label map" in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_mismatched_label_shape_is_a_clear_error(corpora, tmp_path, run_meddiff):
    train = copy_corpus(corpora["train"], tmp_path / "train")
    bad = train / "labels" / "phantom_001.nii.gz"
    write_nifti(Volume(np.zeros((16, 16, 16), np.float32), np.eye(4)), bad, dtype="uint8")
    args = base_args(corpora, tmp_path / "exp")
    args[2], args[4] = train / "images", train / "labels"
    code, _, stderr = run_meddiff(*args)
    assert code == 4 and str(bad) in unwrapped(stderr) and "shape" in stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--n-labelled", "7"], "--n-labelled 7"),
        (["--size", "20"], "multiple of 8"),
        (["--arm-c"], "--arm-c needs synthetic label maps"),
        (["--device", "cuda:9"] if torch.cuda.is_available() else ["--device", "cuda"], "--device"),
    ],
)
def test_usage_errors(corpora, tmp_path, run_meddiff, change, message):
    synthetic = tmp_path / "synthetic_unlabelled"
    shutil.copytree(corpora["synthetic"] / "images", synthetic)
    args = base_args(corpora, tmp_path / "exp")
    args[args.index("--synthetic") + 1] = synthetic
    code, _, stderr = run_meddiff(*args, *change)
    assert code == (7 if message == "--device" else 2), stderr
    assert message in unwrapped(stderr) and not (tmp_path / "exp").exists()
