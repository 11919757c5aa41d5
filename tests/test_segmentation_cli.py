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


# ------------------------------------------------------------------------- --pairs: arms D and E


def write_pairs(source: Path, folder: Path) -> Path:
    """The layout ``meddiff sample --with-labels`` writes: images at the top, ``labels/`` with the same names."""
    (folder / "labels").mkdir(parents=True)
    for index, image in enumerate(sorted((source / "images").iterdir())):
        name = f"ct_{index:04d}.nii.gz"
        shutil.copy(image, folder / name)
        shutil.copy(source / "labels" / image.name, folder / "labels" / name)
    (folder / "manifest.json").write_text(json.dumps({"format": "meddiff-synthetic", "modality": "ct",
                                                      "labels": LABELS["ct"]}))
    return folder


def test_pairs_add_arm_d_per_k_and_arm_e_once_per_seed(corpora, tmp_path, run_meddiff, monkeypatch):
    from rich.console import Console

    from meddiff_cli.cli.augment_seg import paired_lines, results_table
    from meddiff_cli.segmentation import arms

    pairs = write_pairs(corpora["synthetic"], tmp_path / "pairs")
    calls: dict[str, tuple[int, int | None]] = {}
    train = arms.train_segmentation

    def recording(net, images, labels, *args, **kwargs):
        extra = kwargs.get("extra_images")
        calls[kwargs["label"]] = (images.shape[0], None if extra is None else extra.shape[0])
        return train(net, images, labels, *args, **kwargs)

    monkeypatch.setattr(arms, "train_segmentation", recording)
    args = base_args(corpora, tmp_path / "exp")
    args[args.index("--seeds") + 1], args[args.index("--n-labelled") + 1] = "2", "1,2"
    code, stdout, stderr = run_meddiff(*args, "--pairs", pairs, "--json")
    assert code == 0, stderr
    results = json.loads(stdout)
    assert results["data"]["n_pairs"] == 3 and results["settings"]["pairs"] is True
    assert sorted((r["arm"], r["k"], r["seed"]) for r in results["runs"]) == sorted(
        [(arm, k, seed) for arm in "ABD" for k in (1, 2) for seed in (0, 1)] + [("E", 0, 0), ("E", 0, 1)])
    assert all(r["train_case_indices"] == [] for r in results["runs"] if r["arm"] == "E")
    assert set(results["summary"]["E"]) == {"0"} and set(results["summary"]["D"]) == {"1", "2"}

    # D trains on the K real volumes + the 3 pairs, E on the 3 pairs alone; A and B never see them.
    assert calls["seed 1 K=2 arm D"] == (2, 3) and calls["seed 0 K=1 arm D"] == (1, 3)
    assert calls["seed 0 arm E (generated only)"] == calls["seed 1 arm E (generated only)"] == (3, None)
    assert calls["seed 0 K=2 arm A"] == calls["seed 0 K=2 arm B"] == (2, None)

    tests = {(t["comparison"], t["k"]): t for t in results["paired"]}
    assert {"D - A", "E - A"} <= {comparison for comparison, _ in tests}
    assert tests[("D - A", "all")]["n"] == tests[("E - A", "all")]["n"] == 4 and tests[("E - A", 2)]["n"] == 2
    dice = {(r["arm"], r["k"], r["seed"]): r["mean_dice"] for r in results["runs"]}
    assert tests[("E - A", 2)]["mean_difference"] == pytest.approx(  # A(K, seed) is paired with E(seed)
        np.mean([dice[("E", 0, s)] - dice[("A", 2, s)] for s in (0, 1)]))
    assert any("k = 0" in note and "E - A" in note for note in results["notes"])

    console = Console(width=200, record=True)
    console.print(results_table(results))
    rows = [line for line in console.export_text().splitlines() if "│" in line and "Dice" not in line]
    assert "E (generated only)" in rows[0] and rows[0].split("│")[1].strip() == "0" and len(rows) == 1 + 3 * 2
    assert any(line.startswith("E - A (K=2, n=2)") for line in paired_lines(results))


def test_pairs_folder_errors(corpora, tmp_path, run_meddiff):
    images_only = tmp_path / "images_only"
    images_only.mkdir()
    shutil.copy(next((corpora["synthetic"] / "images").iterdir()), images_only / "ct_0000.nii.gz")
    dicom_seg = write_pairs(corpora["synthetic"], tmp_path / "dicom_seg")
    (dicom_seg / "labels" / "ct_0000.dcm").write_bytes(b"\0" * 132)
    unpaired = write_pairs(corpora["synthetic"], tmp_path / "unpaired")
    (unpaired / "ct_0001.nii.gz").unlink()
    for folder, code, message in [(images_only, 2, "--pairs needs label maps"), (dicom_seg, 2, "DICOM-SEG"),
                                  (unpaired, 4, "label map has no image")]:
        out = tmp_path / f"exp_{folder.name}"
        result, _, stderr = run_meddiff(*base_args(corpora, out), "--pairs", folder)
        assert result == code and message in unwrapped(stderr) and not out.exists(), stderr
