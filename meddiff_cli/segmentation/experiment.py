"""The augment-seg experiment: does synthetic data help a segmentation network when labels are scarce?

For every seed and every K in ``n_labelled`` (see docs/augment-seg.md):

* arm A trains the network from scratch on K labelled volumes;
* arm B first pre-trains the same network self-supervised on the synthetic volumes (restoration of
  corrupted volumes, once per seed), transfers every weight but the head, then fine-tunes on the
  same K volumes with the same budget, batches and augmentations as arm A;
* arm C (optional) trains from scratch on the K real volumes plus the labelled synthetic volumes.

Each model is scored on the same held-out test set; the paired A-vs-B comparison uses the
(K, seed) pairs, which share their labelled subset, initial head weights and batch order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meddiff_cli.errors import UsageError
from meddiff_cli.fsutil import atomic_write_json, output_folder, remove_stale_temps
from meddiff_cli.io import Volume, read_case
from meddiff_cli.modality import ALIASES, MODALITIES
from meddiff_cli.preprocess.transform import PreprocessSettings
from meddiff_cli.segmentation.data import (
    TEST_SPLIT_SEED,
    ClassMap,
    LabelledSet,
    as_class_indices,
    class_map_from,
    fit_spacing,
    fraction_split,
    harmonise_pairs,
    labelled_subset,
    pair_cases,
    read_manifest_labels,
    split_folder,
)
from meddiff_cli.segmentation.metrics import mean_std, paired_comparison, score_predictions
from meddiff_cli.segmentation.network import SegmentationNet, save_network, transfer_body
from meddiff_cli.segmentation.options import PLOT_NAME, RESULTS_NAME, ExperimentSettings, NetworkConfig
from meddiff_cli.segmentation.plot import plot_dice_vs_k
from meddiff_cli.segmentation.training import (
    ProgressCallback,
    TrainBudget,
    predict,
    pretrain_restoration,
    train_segmentation,
)
from meddiff_cli.devices import describe_device, resolve_device

RESULTS_FORMAT = "meddiff-augment-seg"
RESULTS_VERSION = 1
MODELS_DIR = "models"


@dataclass
class PreparedData:
    """Everything the arms need, harmonised: the labelled pool, test set and synthetic volumes."""

    pool: LabelledSet
    test: LabelledSet
    synthetic: LabelledSet
    classes: ClassMap
    preprocess: PreprocessSettings
    split: dict[str, Any]


def _resolve_modality(requested: str, manifest_modality: str | None, first_image: Volume) -> str:
    if requested in MODALITIES:
        return requested
    for candidate in (manifest_modality, first_image.modality):
        if candidate:
            candidate = ALIASES.get(candidate.lower(), candidate.lower())
            if candidate in MODALITIES:
                return candidate
    raise UsageError("cannot tell whether the scans are CT or MRI (no manifest or DICOM header says): pass --modality ct or --modality mri")


def prepare_data(settings: ExperimentSettings, progress: ProgressCallback | None = None) -> PreparedData:
    """Pair, read, check and harmonise every case; derive classes, spacing and the train/test split."""
    say = progress or (lambda _message: None)
    pairs = pair_cases(settings.images, settings.labels)
    if settings.test_images is not None:
        pool_pairs, test_pairs = pairs, pair_cases(settings.test_images, settings.test_labels)
        split = {"kind": "folders", "n_train_pool": len(pool_pairs), "n_test": len(test_pairs)}
    else:
        train_idx, test_idx = fraction_split(len(pairs), settings.test_fraction)
        pool_pairs, test_pairs = [pairs[i] for i in train_idx], [pairs[i] for i in test_idx]
        split = {"kind": "fraction", "fraction": settings.test_fraction, "split_seed": TEST_SPLIT_SEED,
                 "test_case_indices": test_idx, "n_train_pool": len(pool_pairs), "n_test": len(test_pairs)}
    if max(settings.n_labelled) > len(pool_pairs):
        raise UsageError(f"--n-labelled {max(settings.n_labelled)} needs that many labelled training cases; "
                         f"only {len(pool_pairs)} remain after holding out {len(test_pairs)} for testing")
    synthetic_images, synthetic_labels = split_folder(settings.synthetic)
    if settings.arm_c and synthetic_labels is None:
        raise UsageError(f"--arm-c needs synthetic label maps in {settings.synthetic / 'labels'}")
    synthetic_pairs = pair_cases(synthetic_images, synthetic_labels if settings.arm_c else None)

    names, manifest_modality = read_manifest_labels(settings.labels)
    requested = settings.modality if settings.modality in MODALITIES else "auto"
    modality = _resolve_modality(settings.modality, manifest_modality, read_case(pool_pairs[0].image, requested))
    spacing = ((settings.spacing,) * 3 if settings.spacing
               else fit_spacing(pool_pairs + test_pairs, modality, settings.size))
    preprocess = PreprocessSettings(modality=modality, spacing=spacing, size=(settings.size,) * 3)
    say(f"harmonising {len(pool_pairs)} training, {len(test_pairs)} test and {len(synthetic_pairs)} synthetic "
        f"volumes to {settings.size}^3 at {spacing[0]:.2f} mm ({modality})")
    pool = harmonise_pairs(pool_pairs, preprocess)
    test = harmonise_pairs(test_pairs, preprocess)
    synthetic = harmonise_pairs(synthetic_pairs, preprocess, with_labels=settings.arm_c)
    classes = class_map_from(list(pool.labels) + list(test.labels), names)
    say("classes: " + ", ".join(f"{v}={n}" for v, n in zip(classes.values, classes.names)))
    pool, test = as_class_indices(pool, classes), as_class_indices(test, classes)
    if synthetic.labels is not None:
        # Synthetic labels may carry classes the real maps never show (e.g. phantom nodules that vanish at a
        # coarse grid): the real annotation protocol calls those voxels background, so arm C does too.
        ignored = sorted({v for values in synthetic.labels for v in classes.unknown_values(values)})
        split["synthetic_label_values_as_background"] = ignored
        if ignored:
            say(f"synthetic label values {ignored} are not used in the real label maps: treated as background")
        synthetic = as_class_indices(synthetic, classes)
    return PreparedData(pool, test, synthetic, classes, preprocess, split)


def _budget(settings: ExperimentSettings, epochs: int) -> TrainBudget:
    return TrainBudget(epochs, settings.steps_per_epoch, settings.batch_size, settings.learning_rate)


def _fresh_network(config: NetworkConfig, seed: int) -> SegmentationNet:
    """Initial weights depend on the seed only, so arms at the same seed start from the same head."""
    torch.manual_seed(seed)
    return SegmentationNet(config)


def run_experiment(settings: ExperimentSettings, out_dir: Path, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Run every arm for every (K, seed), write models, ``results.json`` and the plot; return the results."""
    settings.validate()
    say = progress or (lambda _message: None)
    device = resolve_device(settings.device)
    say(f"running on {describe_device(device)}")
    data = prepare_data(settings, say)
    for folder in (out_dir, out_dir / MODELS_DIR):
        output_folder(folder)  # a file in the way fails now, not after the training
        remove_stale_temps(folder)  # half-written files of an interrupted earlier run
    class_names = data.classes.names
    seg_config = settings.network.with_out_channels(data.classes.n_classes + 1)
    ssl_config = settings.network.with_out_channels(1)
    pool_images, pool_labels = torch.from_numpy(data.pool.images), torch.from_numpy(data.pool.labels)
    test_images, test_labels = torch.from_numpy(data.test.images), torch.from_numpy(data.test.labels)
    synthetic_images = torch.from_numpy(data.synthetic.images)
    synthetic_labels = torch.from_numpy(data.synthetic.labels) if data.synthetic.labels is not None else None
    arms = ["A", "B"] + (["C"] if settings.arm_c else [])
    models_dir = out_dir / MODELS_DIR
    common_sidecar = {"format": "meddiff-augment-seg-model", "synthetic_data_used": True,
                      "classes": data.classes.to_json(), "preprocess": data.preprocess.to_json(),
                      "input": "1 x size^3 volume harmonised by meddiff preprocess settings above, values in [-1, 1]",
                      "output": "logits over [background, classes...] (argmax = class index)"}
    runs: list[dict[str, Any]] = []
    pretraining: list[dict[str, Any]] = []
    for seed in range(settings.seeds):
        pretrained = None
        if "B" in arms:
            started = time.monotonic()
            pretrained = _fresh_network(ssl_config, seed)
            losses = pretrain_restoration(pretrained, synthetic_images, _budget(settings, settings.pretrain_epochs),
                                          seed, device, say, label=f"seed {seed} pretrain (B, ssl)")
            name = f"pretrain_seed{seed}.safetensors"
            save_network(pretrained.cpu(), models_dir / name, {**common_sidecar, "arm": "B-pretrain", "seed": seed,
                                                             "task": "restoration of corrupted synthetic volumes"})
            pretraining.append({"seed": seed, "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1],
                                "seconds": round(time.monotonic() - started, 2), "model": f"{MODELS_DIR}/{name}"})
        for k in settings.n_labelled:
            subset = labelled_subset(pool_images.shape[0], k, seed)
            images, labels = pool_images[subset], pool_labels[subset]
            for arm in arms:
                started = time.monotonic()
                net = _fresh_network(seg_config, seed)
                if arm == "B":
                    transfer_body(pretrained, net)
                extra = (synthetic_images, synthetic_labels) if arm == "C" else (None, None)
                losses = train_segmentation(net, images, labels, _budget(settings, settings.epochs),
                                            seed * 1000 + k, device, say, label=f"seed {seed} K={k} arm {arm}",
                                            extra_images=extra[0], extra_labels=extra[1])
                prediction = predict(net, test_images, device, settings.batch_size)
                scores = score_predictions(prediction, test_labels, class_names, data.test.spacing)
                name = f"arm-{arm}_k{k}_seed{seed}.safetensors"
                save_network(net.cpu(), models_dir / name, {**common_sidecar, "arm": arm, "k": k, "seed": seed,
                                                          "train_case_indices": subset,
                                                          "test_mean_dice": scores["mean_dice"]})
                runs.append({"arm": arm, "k": k, "seed": seed, "train_case_indices": subset,
                             "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1],
                             "seconds": round(time.monotonic() - started, 2), "model": f"{MODELS_DIR}/{name}", **scores})
                say(f"seed {seed} K={k} arm {arm}: test mean Dice {_fmt(scores['mean_dice'])}")
    results = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "settings": settings.to_json(),
        "network": seg_config.to_json(),
        "device": str(device),
        "data": {**data.split, "n_synthetic": int(synthetic_images.shape[0]),
                 "n_synthetic_labelled": int(synthetic_labels.shape[0]) if synthetic_labels is not None else 0,
                 "modality": data.preprocess.modality, "size": settings.size,
                 "spacing_mm": list(data.test.spacing), "classes": data.classes.to_json()},
        "pretraining": pretraining,
        "runs": runs,
        "summary": summarise(runs, arms, settings.n_labelled, class_names),
        "paired": paired_tests(runs, arms, settings.n_labelled),
        "notes": [
            "Differences are treatment minus baseline in class-averaged test Dice; pairs share K subset, seed and batches.",
            f"n is small (at most {settings.seeds} per K, {settings.seeds * len(settings.n_labelled)} pooled): "
            "read the mean differences as effect sizes; with n < 6 a two-sided Wilcoxon test cannot reach p < 0.05.",
        ],
    }
    series = {arm: {k: (entry["mean_dice"]["mean"], entry["mean_dice"]["std"])
                    for k, entry in ((int(k), e) for k, e in results["summary"][arm].items())
                    if entry["mean_dice"]["mean"] is not None}
              for arm in arms}
    plot_dice_vs_k(series, out_dir / PLOT_NAME,
                   f"augment-seg: {data.preprocess.modality.upper()} {settings.size}^3, {settings.seeds} seed(s), "
                   f"{data.split['n_test']} test volumes")
    atomic_write_json(out_dir / RESULTS_NAME, results)
    return results


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summarise(runs: list[dict[str, Any]], arms: list[str], ks: tuple[int, ...], class_names: list[str]) -> dict[str, Any]:
    """Mean +- std over seeds for every arm and K: class-averaged and per-class Dice and HD95."""
    summary: dict[str, Any] = {}
    for arm in arms:
        summary[arm] = {}
        for k in ks:
            group = [r for r in runs if r["arm"] == arm and r["k"] == k]
            summary[arm][str(k)] = {
                "mean_dice": mean_std([r["mean_dice"] for r in group]),
                "mean_hd95_mm": mean_std([r["mean_hd95_mm"] for r in group]),
                "dice": {c: mean_std([r["dice"][c] for r in group]) for c in class_names},
                "hd95_mm": {c: mean_std([r["hd95_mm"][c] for r in group]) for c in class_names},
            }
    return summary


def paired_tests(runs: list[dict[str, Any]], arms: list[str], ks: tuple[int, ...]) -> list[dict[str, Any]]:
    """Treatment arm vs A on class-averaged Dice, per K and pooled over all (K, seed) pairs."""
    by_key = {(r["arm"], r["k"], r["seed"]): r["mean_dice"] for r in runs}
    tests = []
    for treatment in [arm for arm in arms if arm != "A"]:
        for k in [*ks, None]:
            keys = sorted((kk, s) for (arm, kk, s) in by_key if arm == "A" and (k is None or kk == k))
            keys = [key for key in keys if by_key[("A", *key)] is not None and by_key.get((treatment, *key)) is not None]
            result = paired_comparison([by_key[("A", *key)] for key in keys], [by_key[(treatment, *key)] for key in keys])
            tests.append({"comparison": f"{treatment} - A", "k": "all" if k is None else k, **result})
    return tests

