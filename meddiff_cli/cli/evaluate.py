"""``meddiff evaluate``: parse flags, run :func:`meddiff_cli.evaluate.evaluate_folders`, print and write the report."""

from __future__ import annotations

from pathlib import Path

import typer

from meddiff_cli.cli.common import (
    VERBOSE_OPTION, choice, complete_device, default, info, print_json, progress_bar, show_settings,
)
from meddiff_cli.errors import UsageError
from meddiff_cli.evaluate.options import EvaluateOptions
from meddiff_cli.modality import ALIASES, AUTO, MODALITIES

HELP = (
    "Compare a synthetic set with real volumes on the synthetic set's own grid: Fréchet distance / KID / "
    "precision-recall on features (FRD with --features frd), each with a REAL-vs-REAL baseline, MS-SSIM "
    "diversity, slice consistency, intensity (HU) distance, an anatomy check (structures found by a segmenter "
    "trained on REAL's labels), memorization of --train volumes, and a verdict line."
)
EPILOG = (
    "Example: meddiff evaluate heldout/ synth/ --train train/ --report report/  "
    "REAL, SYNTH and TRAIN are folders (searched recursively; any format meddiff reads) or preprocess "
    "manifest.json files. Exit codes: 0 ok, 2 bad usage (e.g. fewer than 2 volumes), 3 no volumes found, "
    "4 unreadable volume, 6 feature extractor / FRD packages / segmenter missing or invalid, 7 device unavailable."
)


def _numbers(text: str | None, flag: str, kind: type) -> tuple | None:
    if text is None:
        return None
    try:
        values = tuple(kind(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes one or three comma-separated numbers, got {text!r}") from None
    if len(values) not in (1, 3):
        raise UsageError(f"{flag} takes one or three comma-separated numbers, got {text!r}")
    return values


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from meddiff_cli.evaluate.report import metric_rows

    table = Table(title=f"SYNTH vs REAL ({summary['features']['extractor']} features)", show_lines=False)
    for column in ("Metric", "Value", "95% CI", "REAL vs REAL"):
        table.add_column(column, overflow="fold")
    for name, value, ci, baseline, _ in metric_rows(summary):
        table.add_row(name, value, ci, baseline)
    console = Console()  # stdout: the table is the command's result
    console.print(table)
    memo = summary.get("memorization")
    if memo is not None:
        for flagged in memo["flagged"]:
            console.print(
                f"[bold red]memorized?[/] {flagged['synthetic']} ~ {flagged['nearest_train']} (NCC {flagged['score']:.4f})",
                highlight=False,
            )


def evaluate_command(
    real: Path = typer.Argument(..., help="Real (held-out) volumes: folder or manifest.json."),
    synth: Path = typer.Argument(..., help="Synthetic volumes: folder or manifest.json."),
    train: Path | None = typer.Option(
        None, "--train", help="The model's training volumes: enables the memorization check."
    ),
    features: str = typer.Option(
        default(EvaluateOptions, "features"),
        "--features",
        help="auto (medicalnet if imported, else radiomics), radiomics, frd (FRDv1 as frd-score computes it; "
        "pip install 'meddiff\\[frd]'), medicalnet, or PATH to an ONNX extractor ([B,1,X,Y,Z] -> [B,F]).",
    ),
    modality: str = typer.Option(default(EvaluateOptions, "modality"), "--modality",
                                 help="ct, mri, or auto (DICOM header, else air in HU = CT).",
                                 **choice((*MODALITIES, AUTO), ALIASES)),
    size: str | None = typer.Option(None, "--size", show_default="the synthetic set's grid",
                                    help="Harmonised grid: N or N,N,N voxels (alone: keeps the field of view)."),
    spacing: str | None = typer.Option(None, "--spacing", show_default="the synthetic set's grid",
                                       help="Harmonised voxel size: MM or MM,MM,MM (alone: keeps the field of view)."),
    anatomy: bool | None = typer.Option(
        default(EvaluateOptions, "anatomy"), "--anatomy/--no-anatomy", show_default="on when REAL has label maps",
        help="Segment REAL and SYNTH and compare structure presence, volumes and components."),
    anatomy_model: Path | None = typer.Option(
        default(EvaluateOptions, "anatomy_model"), "--anatomy-model",
        help="Your ONNX segmenter ([B,1,X,Y,Z] -> [B,C+1,X,Y,Z] logits; names in PATH.json) instead of one "
        "trained on REAL's labels."),
    anatomy_steps: int = typer.Option(default(EvaluateOptions, "anatomy_steps"), "--anatomy-steps", min=1,
                                      help="Training steps of the REAL-trained segmenter (cached per REAL set)."),
    report: Path | None = typer.Option(
        None, "--report", help="Write report.json, PNG plots and a self-contained report.html into this folder: a "
        "new or empty one, or an earlier report's (only meddiff's own files there are replaced)."
    ),
    device: str = typer.Option(default(EvaluateOptions, "device"), "--device", autocompletion=complete_device,
                               help="auto, cpu, cuda or cuda:N (MedicalNet / ONNX features, anatomy segmenter)."),
    workers: int = typer.Option(default(EvaluateOptions, "workers"), "--workers", "-w", min=1,
                                help="Processes for loading and per-volume (radiomics, FRD) features."),
    bootstrap: int = typer.Option(default(EvaluateOptions, "bootstrap_reps"), "--bootstrap", min=0,
                                  help="Bootstrap resamples for 95% CIs (0: none)."),
    seed: int = typer.Option(default(EvaluateOptions, "seed"), "--seed",
                             help="Seed of the bootstrap, the REAL-halves split and the anatomy segmenter."),
    json_output: bool = typer.Option(False, "--json", help="Print the JSON report on stdout (nothing else goes there)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    from rich.markup import escape

    from meddiff_cli.evaluate import evaluate_folders
    from meddiff_cli.evaluate.report import check_report_folder, write_report

    show_settings(verbose, quiet)
    if report is not None:
        check_report_folder(report)  # a file or someone else's folder is refused before minutes of work
    options = EvaluateOptions(
        features=features, modality=modality, size=_numbers(size, "--size", int),
        spacing=_numbers(spacing, "--spacing", float), device=device, workers=workers, bootstrap_reps=bootstrap,
        seed=seed, anatomy=anatomy, anatomy_model=anatomy_model, anatomy_steps=anatomy_steps,
    )
    with progress_bar(quiet) as progress:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total, status="")
            progress.update(tasks[stage], completed=done, total=total)

        result = evaluate_folders(real, synth, train, options, progress=on_progress)
    summary = result.summary
    if report is not None:
        write_report(result, report)
        info(f"report written to {escape(str(report / 'report.html'))}", quiet)
    if json_output:
        print_json(summary)
    else:
        _print_table(summary)
    grid = summary["harmonisation"]["grid"]
    info(f"grid: {'x'.join(map(str, grid['size']))} voxels at {'/'.join(f'{s:g}' for s in grid['spacing_mm'])} mm "
         f"({escape(grid['reason'])})", quiet)
    for warning in summary["warnings"]:
        info(f"[yellow]warning:[/] {escape(warning)}", quiet)
    features_info = summary["features"]
    info(f"features: {features_info['extractor']} ran on {features_info['device']}", quiet)
    info(f"evaluated {len(result.real)} real vs {len(result.synth)} synthetic volumes in {summary['seconds']} s", quiet)
    info(f"[bold]verdict:[/] {escape(summary['verdict']['line'])}", quiet)


def register(app: typer.Typer) -> None:
    app.command("evaluate", help=HELP, epilog=EPILOG)(evaluate_command)
