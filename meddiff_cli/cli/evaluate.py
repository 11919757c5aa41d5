"""``meddiff evaluate``: parse flags, run :func:`meddiff_cli.evaluate.evaluate_folders`, print and write the report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from meddiff_cli.cli.app import app
from meddiff_cli.cli.common import VERBOSE_OPTION, info, print_json, progress_bar, show_settings
from meddiff_cli.errors import UsageError
from meddiff_cli.evaluate import EvaluationSettings, evaluate_folders
from meddiff_cli.evaluate.report import metric_rows, write_report


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


@app.command(
    "evaluate",
    help=(
        "Compare a synthetic set with real volumes: Fréchet distance / KID / precision-recall on features "
        "(with a REAL-vs-REAL baseline), MS-SSIM diversity, slice consistency, intensity (HU) distance, label "
        "volumes and, with --train, memorization of training volumes."
    ),
    epilog=(
        "Example: meddiff evaluate prep/ synth/ --train train/ --report report/  "
        "REAL, SYNTH and TRAIN are folders (searched recursively; any format meddiff reads) or preprocess "
        "manifest.json files. Exit codes: 0 ok, 2 bad usage (e.g. fewer than 2 volumes), 3 no volumes found, "
        "4 unreadable volume, 6 feature-extractor weights missing or invalid, 7 device unavailable."
    ),
)
def evaluate_command(
    real: Path = typer.Argument(..., help="Real (held-out) volumes: folder or manifest.json."),
    synth: Path = typer.Argument(..., help="Synthetic volumes: folder or manifest.json."),
    train: Path | None = typer.Option(
        None, "--train", help="The model's training volumes: enables the memorization check."
    ),
    features: str = typer.Option(
        "auto",
        "--features",
        help="auto (medicalnet if imported, else radiomics), radiomics, medicalnet, or PATH to an ONNX extractor "
        "([B,1,X,Y,Z] -> [B,F]).",
    ),
    modality: str = typer.Option("auto", "--modality", help="ct, mri, or auto (DICOM header, else air in HU = CT)."),
    size: str | None = typer.Option(None, "--size", help="Harmonised grid: N or N,N,N voxels (default 64)."),
    spacing: str | None = typer.Option(
        None, "--spacing", help="Harmonised voxel size: MM or MM,MM,MM (default 3 for CT, 1.5 for MRI)."
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write report.json, PNG plots and a self-contained report.html into this folder."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (MedicalNet / ONNX features)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Processes for loading and radiomics features."),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0, help="Bootstrap resamples for 95% CIs (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and the REAL-halves split."),
    json_output: bool = typer.Option(False, "--json", help="Print the JSON report on stdout (nothing else goes there)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    show_settings(verbose, quiet)
    modality = {"mr": "mri"}.get(modality.lower(), modality.lower())
    if modality not in ("ct", "mri", "auto"):
        raise UsageError(f"--modality must be ct, mri or auto, got {modality!r}")
    sizes = _numbers(size, "--size", int)
    spacings = _numbers(spacing, "--spacing", float)
    settings = EvaluationSettings(
        features=features,
        modality=modality,
        size=sizes,
        spacing=spacings,
        device=device,
        workers=workers,
        bootstrap_reps=bootstrap,
        seed=seed,
    )
    with progress_bar(quiet) as progress:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total, status="")
            progress.update(tasks[stage], completed=done, total=total)

        result = evaluate_folders(real, synth, train, settings, progress=on_progress)
    if report is not None:
        write_report(result, report)
        info(f"report written to {report / 'report.html'}", quiet)
    if json_output:
        print_json(result.summary)
    else:
        _print_table(result.summary)
    features_info = result.summary["features"]
    info(f"features: {features_info['extractor']} ran on {features_info['device']}", quiet)
    info(f"evaluated {len(result.real)} real vs {len(result.synth)} synthetic volumes in {result.summary['seconds']} s", quiet)
