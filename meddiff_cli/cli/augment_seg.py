"""``meddiff augment-seg``: parse flags, run :func:`meddiff_cli.segmentation.run_experiment`, print the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from meddiff_cli.cli.common import VERBOSE_OPTION, choice, complete_device, default, info, print_json, show_settings
from meddiff_cli.errors import UsageError
from meddiff_cli.modality import ALIASES, AUTO, MODALITIES
from meddiff_cli.segmentation.options import (
    GENERATED_ONLY_K,
    PLOT_NAME,
    PRETRAIN_METHODS,
    RESULTS_NAME,
    ExperimentSettings,
    arm_ks,
)

HELP = (
    "Does synthetic data help segmentation when labels are scarce? Trains a MONAI 3D UNet on K labelled "
    "volumes from scratch (arm A) and after self-supervised pre-training on synthetic volumes (arm B; "
    "optionally C: real + labelled synthetic; with --pairs, D: real + generated image+label pairs and "
    "E: generated pairs only, once per seed), for each K and seed, and compares test Dice/HD95."
)
EPILOG = (
    "Example: meddiff augment-seg --images ct/images --labels ct/labels --synthetic synth/ "
    "--n-labelled 2,4,8 --seeds 3 --out seg-exp/  "
    f"(writes seg-exp/{RESULTS_NAME}, seg-exp/{PLOT_NAME} and seg-exp/models/*.safetensors; "
    "an epoch is --steps-per-epoch batches, whatever K is). "
    "Add --pairs pairs/ (from meddiff sample --with-labels) for arms D and E; arm E uses no real label, "
    f"so it is reported as K = {GENERATED_ONLY_K} and compared with A at every K. See docs/augment-seg.md."
)


def _default(name: str):
    return default(ExperimentSettings, name)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} needs at least one value")
    return values


def _cell(entry: dict[str, Any], digits: int = 3) -> str:
    mean, std = entry.get("mean"), entry.get("std")
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def results_table(results: dict[str, Any]) -> Table:
    """One row per (K, arm): class-averaged and per-class test Dice, mean HD95; mean ± std over seeds.

    Arm E (generated pairs only) has no K: its row comes first, as K = 0.
    """
    class_names = [c["name"] for c in results["data"]["classes"]]
    seeds = results["settings"]["seeds"]
    table = Table(title=f"augment-seg: test Dice (mean ± std over {seeds} seed(s); "
                        f"{results['data']['n_test']} test volumes)")
    for column in ["K", "arm", "mean Dice", *class_names, "HD95 mm"]:
        table.add_column(column, justify="right" if column != "arm" else "left")
    ks = tuple(results["settings"]["n_labelled"])
    rows = sorted((k, arm) for arm in results["summary"] for k in arm_ks(arm, ks))
    for k, arm in rows:
        entry = results["summary"][arm][str(k)]
        arm_name = f"{arm} (generated only)" if arm == "E" else arm
        table.add_row(str(k), arm_name, _cell(entry["mean_dice"]), *(_cell(entry["dice"][c]) for c in class_names),
                      _cell(entry["mean_hd95_mm"], 1))
    return table


def paired_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for test in results["paired"]:
        if test["mean_difference"] is None:
            continue
        p_t = "n/a" if test["t_p_value"] is None else f"{test['t_p_value']:.3g}"
        p_w = "n/a" if test["wilcoxon_p_value"] is None else f"{test['wilcoxon_p_value']:.3g}"
        lines.append(f"{test['comparison']} (K={test['k']}, n={test['n']}): mean Dice difference "
                     f"{test['mean_difference']:+.3f}; better in {test['treatment_better']}/{test['n']}; "
                     f"paired t p={p_t}, Wilcoxon p={p_w}")
    return lines


def augment_seg_command(
    images: Path = typer.Option(..., "--images", help="Folder of training images (any format meddiff reads)."),
    labels: Path = typer.Option(..., "--labels", help="Folder of label maps, paired with images by case id (file name)."),
    synthetic: Path = typer.Option(
        ..., "--synthetic", help="Synthetic volumes: a folder of images, or images/ (+ labels/ for --arm-c)."
    ),
    test_images: Path | None = typer.Option(None, "--test-images", help="Held-out test images (with --test-labels)."),
    test_labels: Path | None = typer.Option(None, "--test-labels", help="Label maps of the test images."),
    test_fraction: float = typer.Option(
        _default("test_fraction"), "--test-fraction", help="Without --test-images: fraction of cases held out (fixed split)."
    ),
    n_labelled: str = typer.Option(",".join(map(str, _default("n_labelled"))), "--n-labelled", help="Numbers of labelled training volumes K, comma-separated."),
    seeds: int = typer.Option(_default("seeds"), "--seeds", help="Repetitions per K (seeds 0..N-1: subset, init, batches)."),
    pretrain: str = typer.Option(_default("pretrain"), "--pretrain", help="Arm B pre-training: ssl (Models-Genesis-style "
                                 "restoration).", **choice(PRETRAIN_METHODS)),
    epochs: int = typer.Option(_default("epochs"), "--epochs", help="Supervised epochs per model (same for every arm)."),
    pretrain_epochs: int = typer.Option(_default("pretrain_epochs"), "--pretrain-epochs", help="Self-supervised epochs (arm B)."),
    steps_per_epoch: int = typer.Option(_default("steps_per_epoch"), "--steps-per-epoch", help="Optimiser steps per epoch."),
    batch_size: int = typer.Option(_default("batch_size"), "--batch-size", "-b", help="Volumes per step."),
    lr: float = typer.Option(_default("learning_rate"), "--lr", help="Adam learning rate (pre-training and training)."),
    size: int = typer.Option(_default("size"), "--size", help="Volumes are harmonised to SIZE^3 (a multiple of 8)."),
    spacing: float | None = typer.Option(
        _default("spacing"), "--spacing", help="Isotropic voxel size in mm (default: the largest scan's field of view fits SIZE)."
    ),
    modality: str = typer.Option(_default("modality"), "--modality", "-m", help="ct, mri, or auto (phantom/preprocess "
                                 "manifest or DICOM header).", **choice((*MODALITIES, AUTO), ALIASES)),
    device: str = typer.Option(_default("device"), "--device", autocompletion=complete_device,
                               help="auto, cpu, cuda or cuda:N (bf16 autocast on CUDA)."),
    out: Path = typer.Option(Path("augment-seg"), "--out", "-o", help="Output folder: results.json, dice_vs_k.png, models/."),
    arm_c: bool = typer.Option(_default("arm_c"), "--arm-c", help="Also train arm C: real + labelled synthetic volumes (needs SYNTHETIC/labels)."),
    pairs: Path | None = typer.Option(
        _default("pairs"), "--pairs", help="Generated image+label pairs (meddiff sample --with-labels: images at the "
        "top, labels/ beside them; or images/ + labels/): adds arms D (real + pairs) and E (pairs only, "
        f"K = {GENERATED_ONLY_K})."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print results.json on stdout instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    from meddiff_cli.segmentation import run_experiment

    show_settings(verbose, quiet)
    settings = ExperimentSettings(
        images=images, labels=labels, synthetic=synthetic, test_images=test_images, test_labels=test_labels,
        test_fraction=test_fraction, n_labelled=_int_list(n_labelled, "--n-labelled"), seeds=seeds,
        pretrain=pretrain, epochs=epochs, pretrain_epochs=pretrain_epochs, steps_per_epoch=steps_per_epoch,
        batch_size=batch_size, learning_rate=lr, size=size, spacing=spacing,
        modality=modality, device=device, arm_c=arm_c, pairs=pairs,
    )
    results = run_experiment(settings, out, progress=lambda message: info(message, quiet))
    if json_output:
        print_json(results)
    else:
        stdout = Console()
        if not stdout.is_terminal:  # piped: keep "mean ± std" cells and result lines unwrapped
            stdout = Console(width=200)
        stdout.print(results_table(results))
        for line in paired_lines(results):
            stdout.print(line, highlight=False, soft_wrap=True)
    info(f"wrote {out / RESULTS_NAME}, {out / PLOT_NAME} and {len(results['runs'])} models in {out / 'models'}", quiet)


def register(app: typer.Typer) -> None:
    app.command("augment-seg", help=HELP, epilog=EPILOG)(augment_seg_command)
