"""``meddiff phantom``: parse flags, run :func:`meddiff_cli.phantom.write_phantom_corpus`, report."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from meddiff_cli.cli.app import app
from meddiff_cli.cli.common import VERBOSE_OPTION, info, print_json, progress_bar, show_settings
from meddiff_cli.phantom import LABELS, write_phantom_corpus


@app.command(
    "phantom",
    help=(
        "Generate a labelled corpus of procedural phantoms: chest CT (lungs with vessel trees, heart, spine, "
        "ribs, table, nodules; HU) or brain MRI (folded cortex, ventricles, deep grey nuclei; T1 or T2). "
        "Each case varies in anatomy; the same seed gives the same corpus. Resumable."
    ),
    epilog=(
        "Example: meddiff phantom --modality ct --count 20 --out phantoms/ct  "
        "(writes images/<case>.nii.gz, labels/<case>.nii.gz and manifest.json; "
        f"CT labels {LABELS['ct']}, MRI labels {LABELS['mri']}). "
        "Default spacing: 380 mm (CT) or 220 mm (MRI) field of view divided by --size."
    ),
)
def phantom_command(
    modality: str = typer.Option(..., "--modality", "-m", help="ct (chest, HU) or mri (brain)."),
    count: int = typer.Option(..., "--count", "-n", min=1, help="Number of cases."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (images/, labels/, manifest.json)."),
    size: int = typer.Option(64, "--size", min=8, help="Voxels per axis (cubic volume)."),
    spacing: float | None = typer.Option(None, "--spacing", help="Voxel size in mm (default: field of view / size)."),
    seed: int = typer.Option(0, "--seed", help="Corpus seed; case i uses a seed derived from (seed, i)."),
    image_format: str = typer.Option("nifti", "--format", help="nifti, or dicom (a synthetic-marked series per case)."),
    contrast: str = typer.Option("t1", "--contrast", help="MRI contrast: t1 or t2."),
    no_nodules: bool = typer.Option(False, "--no-nodules", help="CT: no lung nodules."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Parallel worker processes."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout (nothing else goes there)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    show_settings(verbose, quiet)
    with progress_bar(quiet) as progress:
        task = progress.add_task(f"phantom {modality}", total=count, status="")

        last = [time.perf_counter()]

        def on_case_done(case_id: str) -> None:
            progress.advance(task)
            progress.update(task, status=case_id)
            if verbose:  # time since the previous case finished (with --workers: completion order)
                now = time.perf_counter()
                info(f"{case_id} written (+{now - last[0]:.2f} s)", quiet)
                last[0] = now

        summary = write_phantom_corpus(
            modality.lower(), count, out, size=size, spacing=spacing, seed=seed, fmt=image_format.lower(),
            contrast=contrast.lower(), workers=workers, on_case_done=on_case_done, nodules=not no_nodules,
        )
    if json_output:
        print_json(summary)
    spacing_text = "x".join(f"{v:g}" for v in summary["spacing"])
    info(
        f"{summary['generated']} generated, {summary['skipped']} skipped: {summary['count']} {summary['modality']} "
        f"phantoms of {size}^3 at {spacing_text} mm in {summary['seconds']:.1f}s -> {out}",
        quiet,
    )
