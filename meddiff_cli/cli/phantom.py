"""``meddiff phantom``: parse flags, run :func:`meddiff_cli.phantom.write_phantom_corpus`, report."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from meddiff_cli.cli.common import VERBOSE_OPTION, choice, info, print_json, progress_bar, show_settings
from meddiff_cli.modality import ALIASES, MODALITIES
from meddiff_cli.phantom.options import CONTRASTS, DEFAULTS, FORMATS

HELP = (
    "Generate a labelled corpus of procedural phantoms: chest CT (lungs with vessel trees, heart, spine, "
    "ribs, table, nodules; HU) or brain MRI (folded cortex, ventricles, deep grey nuclei; T1 or T2). "
    "Each case varies in anatomy; the same seed gives the same corpus. Resumable."
)
EPILOG = (
    "Example: meddiff phantom --modality ct --count 20 --out phantoms/ct  "
    "(writes images/<case>.nii.gz, labels/<case>.nii.gz and manifest.json, which lists the label values). "
    "Default spacing: the modality's field of view (chest CT or head MRI, docs/formats.md) divided by --size."
)


def phantom_command(
    modality: str = typer.Option(..., "--modality", "-m", help="ct (chest, HU) or mri (brain).", **choice(MODALITIES, ALIASES)),
    count: int = typer.Option(..., "--count", "-n", min=1, help="Number of cases."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (images/, labels/, manifest.json)."),
    size: int = typer.Option(DEFAULTS.size, "--size", min=8, help="Voxels per axis (cubic volume)."),
    spacing: float | None = typer.Option(DEFAULTS.spacing, "--spacing", help="Voxel size in mm (default: field of view / size)."),
    seed: int = typer.Option(DEFAULTS.seed, "--seed", help="Corpus seed; case i uses a seed derived from (seed, i)."),
    image_format: str = typer.Option(DEFAULTS.fmt, "--format", help="nifti, or dicom (a synthetic-marked series per case).",
                                     **choice(FORMATS)),
    contrast: str = typer.Option(DEFAULTS.contrast, "--contrast", help="MRI contrast.", **choice(CONTRASTS)),
    no_nodules: bool = typer.Option(not DEFAULTS.nodules, "--no-nodules", help="CT: no lung nodules."),
    workers: int = typer.Option(DEFAULTS.workers, "--workers", "-w", min=1, help="Parallel worker processes."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout (nothing else goes there)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    from meddiff_cli.phantom import write_phantom_corpus

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
            modality, count, out, size=size, spacing=spacing, seed=seed, fmt=image_format,
            contrast=contrast, workers=workers, on_case_done=on_case_done, nodules=not no_nodules,
        )
    if json_output:
        print_json(summary)
    spacing_text = "x".join(f"{v:g}" for v in summary["spacing"])
    info(
        f"{summary['generated']} generated, {summary['skipped']} skipped: {summary['count']} {summary['modality']} "
        f"phantoms of {size}^3 at {spacing_text} mm in {summary['seconds']:.1f}s -> {out}",
        quiet,
    )


def register(app: typer.Typer) -> None:
    app.command("phantom", help=HELP, epilog=EPILOG)(phantom_command)
