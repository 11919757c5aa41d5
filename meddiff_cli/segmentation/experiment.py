"""The augment-seg experiment: does synthetic data help a segmentation network when labels are scarce?

For every seed and every K in ``n_labelled`` (see docs/augment-seg.md) arms A and B run, C with
``arm_c``, D with ``pairs`` (the arms: :mod:`~meddiff_cli.segmentation.arms`); arm E (``pairs``) runs
once per seed. B's self-supervised pre-training runs once per seed and serves every K.

Each model is scored on the same held-out test set; the paired comparisons with arm A use the
(K, seed) pairs, which share their labelled subset, initial head weights and batch order (E, which
has no K, is paired with A at every K of its seed).
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
    generated_pairs,
    harmonise_pairs,
    labelled_subset,
    pair_cases,
    read_manifest_labels,
    split_folder,
)
from meddiff_cli.segmentation.arms import MODELS_DIR, ArmRunner, budget, fresh_network
from meddiff_cli.segmentation.metrics import mean_std, paired_comparison
from meddiff_cli.segmentation.network import save_network
from meddiff_cli.segmentation.options import (
    GENERATED_ONLY_K,
    PLOT_NAME,
    RESULTS_NAME,
    ExperimentSettings,
    arm_ks,
)
from meddiff_cli.segmentation.plot import plot_dice_vs_k
from meddiff_cli.segmentation.training import ProgressCallback, pretrain_restoration
from meddiff_cli.devices import describe_device, resolve_device

RESULTS_FORMAT = "meddiff-augment-seg"
RESULTS_VERSION = 1


@dataclass
class PreparedData:
    """Everything the arms need, harmonised: the labelled pool, test set, synthetic volumes and generated pairs."""

    pool: LabelledSet
    test: LabelledSet
    synthetic: LabelledSet
    pairs: LabelledSet | None
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
    pair_list = generated_pairs(settings.pairs) if settings.pairs is not None else []

    names, manifest_modality = read_manifest_labels(settings.labels)
    if pair_list:  # labels are matched by value: say when the model's label table names a value otherwise
        pair_names, _ = read_manifest_labels(pair_list[0].label.path.parent)
        for value in sorted(v for v in pair_names.keys() & names.keys() if pair_names[v] != names[v]):
            say(f"warning: label value {value} is {names[value]!r} in the real label maps but "
                f"{pair_names[value]!r} in the generated pairs")
    requested = settings.modality if settings.modality in MODALITIES else "auto"
    modality = _resolve_modality(settings.modality, manifest_modality, read_case(pool_pairs[0].image, requested))
    spacing = ((settings.spacing,) * 3 if settings.spacing
               else fit_spacing(pool_pairs + test_pairs, modality, settings.size))
    preprocess = PreprocessSettings(modality=modality, spacing=spacing, size=(settings.size,) * 3)
    say(f"harmonising {len(pool_pairs)} training, {len(test_pairs)} test, {len(synthetic_pairs)} synthetic and "
        f"{len(pair_list)} generated labelled volumes to {settings.size}^3 at {spacing[0]:.2f} mm ({modality})")
    pool = harmonise_pairs(pool_pairs, preprocess)
    test = harmonise_pairs(test_pairs, preprocess)
    synthetic = harmonise_pairs(synthetic_pairs, preprocess, with_labels=settings.arm_c)
    pairs = harmonise_pairs(pair_list, preprocess) if pair_list else None
    classes = class_map_from(list(pool.labels) + list(test.labels), names)
    say("classes: " + ", ".join(f"{v}={n}" for v, n in zip(classes.values, classes.names)))
    pool, test = as_class_indices(pool, classes), as_class_indices(test, classes)
    if synthetic.labels is not None:
        synthetic = _as_real_classes(synthetic, classes, "synthetic", split, say)
    if pairs is not None:
        pairs = _as_real_classes(pairs, classes, "generated pair", split, say)
    return PreparedData(pool, test, synthetic, pairs, classes, preprocess, split)


def _as_real_classes(data: LabelledSet, classes: ClassMap, what: str, split: dict[str, Any],
                     say: ProgressCallback) -> LabelledSet:
    """Class indices of the real label maps for synthetic or generated labels, recording the values dropped.

    Such labels may carry classes the real maps never show (e.g. phantom nodules that vanish at a coarse
    grid, or a model's label table with more structures): the real annotation protocol calls those voxels
    background, so arms C, D and E do too.
    """
    ignored = sorted({v for values in data.labels for v in classes.unknown_values(values)})
    split[f"{what.replace(' ', '_')}_label_values_as_background"] = ignored
    if ignored:
        say(f"{what} label values {ignored} are not used in the real label maps: treated as background")
    return as_class_indices(data, classes)


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
    synthetic_images = torch.from_numpy(data.synthetic.images)
    extras = {"C": _tensors(data.synthetic), "D": _tensors(data.pairs)}
    arms = settings.arms
    models_dir = out_dir / MODELS_DIR
    common_sidecar = {"format": "meddiff-augment-seg-model", "synthetic_data_used": True,
                      "classes": data.classes.to_json(), "preprocess": data.preprocess.to_json(),
                      "input": "1 x size^3 volume harmonised by meddiff preprocess settings above, values in [-1, 1]",
                      "output": "logits over [background, classes...] (argmax = class index)"}
    runner = ArmRunner(settings, seg_config, device, _tensors(data.test), class_names, data.test.spacing,
                       models_dir, common_sidecar, say)
    runs: list[dict[str, Any]] = []
    pretraining: list[dict[str, Any]] = []
    for seed in range(settings.seeds):
        pretrained = None
        if "B" in arms:
            started = time.monotonic()
            pretrained = fresh_network(ssl_config, seed)
            losses = pretrain_restoration(pretrained, synthetic_images, budget(settings, settings.pretrain_epochs),
                                          seed, device, say, label=f"seed {seed} pretrain (B, ssl)")
            name = f"pretrain_seed{seed}.safetensors"
            save_network(pretrained.cpu(), models_dir / name, {**common_sidecar, "arm": "B-pretrain", "seed": seed,
                                                             "task": "restoration of corrupted synthetic volumes"})
            pretraining.append({"seed": seed, "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1],
                                "seconds": round(time.monotonic() - started, 2), "model": f"{MODELS_DIR}/{name}"})
        if "E" in arms:  # no real labels, so no K: once per seed
            runs.append(runner.run("E", GENERATED_ONLY_K, seed, [], extras["D"]))
        for k in settings.n_labelled:
            subset = labelled_subset(pool_images.shape[0], k, seed)
            real = (pool_images[subset], pool_labels[subset])
            for arm in [arm for arm in arms if arm != "E"]:
                runs.append(runner.run(arm, k, seed, subset, real, extras.get(arm),
                                       pretrained if arm == "B" else None))
    results = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "settings": settings.to_json(),
        "network": seg_config.to_json(),
        "device": str(device),
        "data": {**data.split, "n_synthetic": int(synthetic_images.shape[0]),
                 "n_synthetic_labelled": _count(extras["C"]), "n_pairs": _count(extras["D"]),
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
            *([f"Arm E (generated pairs only, no real labels) has no K: it runs once per seed, recorded as k = "
               f"{GENERATED_ONLY_K}; 'E - A' pairs A(K, seed) with E(seed) at every K, so the pooled E - A test "
               "counts each E run once per K (those pairs are not independent)."] if "E" in arms else []),
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


def _tensors(data: LabelledSet | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    if data is None or data.labels is None:
        return None
    return torch.from_numpy(data.images), torch.from_numpy(data.labels)


def _count(data: tuple[torch.Tensor, torch.Tensor] | None) -> int:
    return int(data[0].shape[0]) if data is not None else 0


def summarise(runs: list[dict[str, Any]], arms: list[str], ks: tuple[int, ...], class_names: list[str]) -> dict[str, Any]:
    """Mean +- std over seeds for every arm and K (arm E: k = 0): class-averaged and per-class Dice and HD95."""
    summary: dict[str, Any] = {}
    for arm in arms:
        summary[arm] = {}
        for k in arm_ks(arm, ks):
            group = [r for r in runs if r["arm"] == arm and r["k"] == k]
            summary[arm][str(k)] = {
                "mean_dice": mean_std([r["mean_dice"] for r in group]),
                "mean_hd95_mm": mean_std([r["mean_hd95_mm"] for r in group]),
                "dice": {c: mean_std([r["dice"][c] for r in group]) for c in class_names},
                "hd95_mm": {c: mean_std([r["hd95_mm"][c] for r in group]) for c in class_names},
            }
    return summary


def paired_tests(runs: list[dict[str, Any]], arms: list[str], ks: tuple[int, ...]) -> list[dict[str, Any]]:
    """Treatment arm vs A on class-averaged Dice, per K and pooled over all (K, seed) pairs.

    Arm E has no K: A(K, seed) is paired with E(seed) at every K, and the pooled test uses each E run once per K.
    """
    by_key = {(r["arm"], r["k"], r["seed"]): r["mean_dice"] for r in runs}
    tests = []
    for treatment in [arm for arm in arms if arm != "A"]:
        for k in [*ks, None]:
            keys = sorted((kk, s) for (arm, kk, s) in by_key if arm == "A" and (k is None or kk == k))
            partners = {key: (treatment, GENERATED_ONLY_K if treatment == "E" else key[0], key[1]) for key in keys}
            keys = [key for key in keys if by_key[("A", *key)] is not None and by_key.get(partners[key]) is not None]
            result = paired_comparison([by_key[("A", *key)] for key in keys], [by_key[partners[key]] for key in keys])
            tests.append({"comparison": f"{treatment} - A", "k": "all" if k is None else k, **result})
    return tests
