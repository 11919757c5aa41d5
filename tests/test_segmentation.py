"""augment-seg: metrics against MONAI / hand-computed values, statistics, network storage, data pairing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from scipy import stats

from meddiff_cli.errors import BadInputError, ModelError, UsageError
from meddiff_cli.segmentation.data import class_map_from, fraction_split, labelled_subset, read_manifest_labels
from meddiff_cli.segmentation.metrics import dice_per_case, hd95_per_case, paired_comparison, score_predictions
from meddiff_cli.segmentation.network import (
    NetworkConfig,
    SegmentationNet,
    load_network,
    save_network,
    transfer_body,
)
from meddiff_cli.segmentation.training import TrainBudget, augment, corrupt, train_segmentation

TINY = NetworkConfig(channels=(4, 8), strides=(2,), num_res_units=1, features=4)


def numpy_dice(prediction: np.ndarray, truth: np.ndarray, cls: int) -> float:
    p, t = prediction == cls, truth == cls
    if not t.any():
        return float("nan")
    return 2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


# ------------------------------------------------------------------------------------------------ Dice


def test_dice_hand_computed_with_empty_class_rule():
    truth = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    prediction = torch.zeros_like(truth)
    truth[0, :2] = 1          # 32 voxels of class 1
    prediction[0, :1] = 1     # 16 of them predicted: Dice = 2*16 / (16 + 32) = 2/3
    truth[0, 3, 3, 3] = 2     # one voxel of class 2, missed entirely: Dice 0
    prediction[1, 0, 0, 0] = 2  # case 1 has no class 1 or 2 in the truth: both undefined (NaN)
    dice = dice_per_case(prediction, truth, n_classes=2)
    assert dice.shape == (2, 2)
    assert dice[0, 0] == pytest.approx(2 / 3)
    assert dice[0, 1] == 0.0
    assert np.isnan(dice[1]).all()
    scores = score_predictions(prediction, truth, ["a", "b"], (1.0, 1.0, 1.0))
    assert scores["dice"] == {"a": pytest.approx(2 / 3), "b": 0.0}  # NaN cases do not count
    assert scores["mean_dice"] == pytest.approx(1 / 3)
    assert scores["missed"] == {"a": 0, "b": 1}


def test_dice_matches_monai_and_numpy_on_random_label_maps():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, size=(3, 8, 9, 10))
    prediction = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, size=truth.shape))
    truth[2][truth[2] == 3] = 0  # class 3 absent from case 2's truth
    ours = dice_per_case(torch.from_numpy(prediction), torch.from_numpy(truth), n_classes=3)
    expected = np.array([[numpy_dice(prediction[b], truth[b], c) for c in (1, 2, 3)] for b in range(3)])
    np.testing.assert_allclose(ours, expected, rtol=1e-6, equal_nan=True)
    # MONAI's own label-map path (num_classes instead of one-hot) must agree too.
    reference = DiceMetric(include_background=False, reduction="none", num_classes=4)(
        torch.from_numpy(prediction).unsqueeze(1), torch.from_numpy(truth).unsqueeze(1))
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-6, equal_nan=True)


def test_hd95_uses_spacing_and_penalises_missed_structures():
    truth = torch.zeros(3, 10, 10, 10, dtype=torch.long)
    truth[:, 3:7, 3:7, 3:7] = 1
    prediction = torch.zeros_like(truth)
    prediction[0, 4:8, 3:7, 3:7] = 1  # shifted one voxel along i (2 mm)
    prediction[2, 3:7, 3:7, 3:7] = 1
    truth[2] = 0                      # case 2: class absent from the truth
    spacing = (2.0, 1.0, 1.0)
    hd95, missed = hd95_per_case(prediction, truth, n_classes=1, spacing=spacing)
    assert hd95[0, 0] == pytest.approx(2.0)
    diagonal = np.linalg.norm(np.array([10, 10, 10]) * np.array(spacing))
    assert hd95[1, 0] == pytest.approx(diagonal) and missed[1, 0]  # nothing predicted
    assert np.isnan(hd95[2, 0]) and not missed[2, 0]


# ------------------------------------------------------------------------------------------ statistics


def test_paired_comparison_matches_scipy():
    baseline = [0.61, 0.70, 0.55, 0.64, 0.59, 0.66]
    treatment = [0.66, 0.69, 0.63, 0.70, 0.61, 0.72]
    result = paired_comparison(baseline, treatment)
    assert result["n"] == 6
    assert result["mean_difference"] == pytest.approx(np.mean(np.subtract(treatment, baseline)))
    assert result["t_p_value"] == pytest.approx(stats.ttest_rel(treatment, baseline).pvalue)
    assert result["wilcoxon_p_value"] == pytest.approx(stats.wilcoxon(treatment, baseline).pvalue)
    assert (result["treatment_better"], result["baseline_better"]) == (5, 1)


def test_paired_comparison_undefined_tests_are_none():
    single = paired_comparison([0.5], [0.6])
    assert single["n"] == 1 and single["mean_difference"] == pytest.approx(0.1)
    assert single["t_p_value"] is None and single["wilcoxon_p_value"] is None and single["std_difference"] is None
    ties = paired_comparison([0.5, 0.6], [0.5, 0.6])
    assert ties["mean_difference"] == 0.0 and ties["wilcoxon_p_value"] is None and ties["t_p_value"] is None


# ------------------------------------------------------------------------------------- splits, subsets


def test_labelled_subsets_are_nested_deterministic_and_seed_dependent():
    small, large = labelled_subset(10, 2, seed=1), labelled_subset(10, 4, seed=1)
    assert set(small) <= set(large) and len(set(large)) == 4
    assert labelled_subset(10, 4, seed=1) == large
    assert any(labelled_subset(10, 4, seed=s) != large for s in range(2, 6))
    with pytest.raises(UsageError, match="needs 11"):
        labelled_subset(10, 11, seed=0)


def test_fraction_split_is_fixed_and_disjoint():
    train, test = fraction_split(10, 0.3)
    assert len(test) == 3 and not set(train) & set(test) and sorted(train + test) == list(range(10))
    assert fraction_split(10, 0.3) == (train, test)
    with pytest.raises(UsageError):
        fraction_split(3, 1.0)


def test_class_map_makes_sparse_label_values_contiguous():
    maps = [np.array([[0, 3], [3, 0]]), np.array([[6, 0], [0, 1]])]
    classes = class_map_from(maps, {3: "liver", 6: "spleen"})
    assert (classes.values, classes.names) == ([1, 3, 6], ["label_1", "liver", "spleen"])
    other = np.array([0, 1, 3, 6, 9])
    assert classes.to_indices(other).tolist() == [0, 1, 2, 3, 0]  # 9: unknown to the real maps -> background
    assert classes.unknown_values(other) == [9]
    with pytest.raises(BadInputError, match="empty"):
        class_map_from([np.zeros((2, 2))], {})


def test_label_names_from_sidecar_or_manifest(tmp_path):
    labels = tmp_path / "corpus" / "labels"
    labels.mkdir(parents=True)
    (tmp_path / "corpus" / "manifest.json").write_text(
        json.dumps({"modality": "mri", "labels": {"background": 0, "csf": 1, "gm": 2}}))
    assert read_manifest_labels(labels) == ({1: "csf", 2: "gm"}, "mri")
    (labels / "labels.json").write_text(json.dumps({"liver": 6}))  # the sidecar wins
    assert read_manifest_labels(labels) == ({6: "liver"}, None)
    (labels / "labels.json").write_text("{broken")
    with pytest.raises(BadInputError, match="labels.json"):
        read_manifest_labels(labels)


# ------------------------------------------------------------------------------------- network, training


def test_transfer_copies_every_weight_but_the_head():
    torch.manual_seed(0)
    pretrained = SegmentationNet(TINY.with_out_channels(1))
    target = SegmentationNet(TINY.with_out_channels(3))
    head_before = target.head.weight.detach().clone()
    copied = transfer_body(pretrained, target)
    source_state, target_state = pretrained.state_dict(), target.state_dict()
    body_keys = [k for k in source_state if not k.startswith("head.")]
    assert copied == len(body_keys) > 0
    for key in body_keys:
        assert torch.equal(source_state[key], target_state[key])
    assert torch.equal(target.head.weight, head_before)
    with pytest.raises(ModelError):
        transfer_body(SegmentationNet(NetworkConfig(channels=(4, 16), strides=(2,), features=4)), target)


def test_network_round_trip_and_tamper_detection(tmp_path):
    torch.manual_seed(1)
    net = SegmentationNet(TINY.with_out_channels(3)).eval()
    path = save_network(net, tmp_path / "m.safetensors", {"arm": "A"})
    loaded, sidecar = load_network(path)
    assert sidecar["arm"] == "A" and sidecar["network"]["out_channels"] == 3
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_network(path)


def test_training_is_deterministic_and_learns():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 8, 8, 8, generator=generator) * 2 - 1
    labels = (images > 0.3).long()
    states, histories = [], []
    for _ in range(2):
        torch.manual_seed(0)
        net = SegmentationNet(TINY.with_out_channels(2))
        histories.append(train_segmentation(net, images, labels, TrainBudget(epochs=4, steps_per_epoch=3),
                                            seed=5, device=torch.device("cpu")))
        states.append(net.state_dict())
    assert histories[0] == histories[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert histories[0][-1] < histories[0][0]


def test_corruption_and_augmentation_are_seeded_and_keep_labels_aligned():
    volume = torch.linspace(-1, 1, 16 ** 3).reshape(1, 16, 16, 16)
    a = corrupt(volume, torch.Generator().manual_seed(7))
    b = corrupt(volume, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.allclose(a, volume, atol=0.2)
    images = torch.arange(2 * 4 ** 3, dtype=torch.float32).reshape(2, 1, 4, 4, 4)
    labels = images[:, 0].long()
    out_images, out_labels = augment(images, labels, torch.Generator().manual_seed(0))
    assert not torch.equal(out_labels, labels)  # at least one volume was flipped
    # Flips move image and label together: the (un-jittered) voxel order still matches the labels.
    for b_index in range(2):
        order_image = torch.argsort(out_images[b_index, 0].flatten())
        order_label = torch.argsort(out_labels[b_index].flatten().float())
        assert torch.equal(order_image, order_label)


# ------------------------------------------------------------------------------ arms D and E (--pairs)


def test_arm_e_is_paired_with_a_at_every_k_of_its_seed():
    from meddiff_cli.segmentation.experiment import paired_tests, summarise

    dice = {("A", 2, 0): 0.5, ("A", 4, 0): 0.6, ("A", 2, 1): 0.55, ("A", 4, 1): 0.7,
            ("D", 2, 0): 0.6, ("D", 4, 0): 0.65, ("D", 2, 1): 0.5, ("D", 4, 1): 0.75,
            ("E", 0, 0): 0.4, ("E", 0, 1): 0.8}
    runs = [{"arm": arm, "k": k, "seed": seed, "mean_dice": value, "mean_hd95_mm": 1.0, "dice": {"x": value},
             "hd95_mm": {"x": 1.0}} for (arm, k, seed), value in dice.items()]
    tests = {(t["comparison"], t["k"]): t for t in paired_tests(runs, ["A", "D", "E"], (2, 4))}
    assert tests[("E - A", 2)]["n"] == 2
    assert tests[("E - A", 2)]["mean_difference"] == pytest.approx(((0.4 - 0.5) + (0.8 - 0.55)) / 2)
    assert tests[("E - A", 4)]["mean_difference"] == pytest.approx(((0.4 - 0.6) + (0.8 - 0.7)) / 2)
    assert tests[("E - A", "all")]["n"] == 4 and tests[("D - A", "all")]["n"] == 4
    assert tests[("D - A", 4)]["mean_difference"] == pytest.approx(((0.65 - 0.6) + (0.75 - 0.7)) / 2)
    summary = summarise(runs, ["A", "D", "E"], (2, 4), ["x"])
    assert set(summary["E"]) == {"0"} and summary["E"]["0"]["mean_dice"]["mean"] == pytest.approx(0.6)
    assert set(summary["D"]) == {"2", "4"}


def test_generated_pairs_in_the_sample_layout_and_the_corpus_layout(tmp_path):
    from meddiff_cli.io import Volume, write_nifti
    from meddiff_cli.segmentation.data import generated_pairs

    volume = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    sample = tmp_path / "sample"
    for name in ("ct_0000", "ct_0001"):  # images at the top, label maps with the same names in labels/
        write_nifti(volume, sample / f"{name}.nii.gz", dtype="int16")
        write_nifti(volume, sample / "labels" / f"{name}.nii.gz", dtype="uint8")
    (sample / "manifest.json").write_text(json.dumps({"labels": {"lungs": 1}}))
    (sample / "previews").mkdir()
    pairs = generated_pairs(sample)
    assert [(p.case_id, p.image.path.parent.name, p.label.path.parent.name) for p in pairs] == [
        ("ct_0000", "sample", "labels"), ("ct_0001", "sample", "labels")]
    corpus = tmp_path / "corpus"
    for name in ("a", "b"):
        write_nifti(volume, corpus / "images" / f"{name}.nii.gz", dtype="int16")
        write_nifti(volume, corpus / "labels" / f"{name}.nii.gz", dtype="uint8")
    assert [p.case_id for p in generated_pairs(corpus)] == ["a", "b"]
    (sample / "labels" / "ct_0001.nii.gz").unlink()
    with pytest.raises(BadInputError, match="no label map"):
        generated_pairs(sample)
