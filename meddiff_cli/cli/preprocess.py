"""``meddiff preprocess``: parse flags, run :func:`meddiff_cli.preprocess.preprocess_cases`, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from meddiff_cli.cli.common import VERBOSE_OPTION, choice, default, info, print_json, progress_bar, show_settings
from meddiff_cli.errors import BadInputError, PartialFailure, UsageError
from meddiff_cli.modality import ALIASES, AUTO, MODALITIES
from meddiff_cli.preprocess.settings import DEFAULT_SIZE, DEFAULT_SPACING_MM, DEFAULT_WINDOW_HU, PreprocessSettings

HELP = (
    "Put scans (NIfTI, NRRD, MHA/MHD, DICOM folders; a `meddiff phantom` folder as is) onto one RAS grid "
    "and a -1..1 intensity scale, ready for training. Resumable: finished cases are skipped."
)
EPILOG = (
    "Example: meddiff preprocess phantoms/ --out prep/ --size 64  "
    f"(defaults: spacing {DEFAULT_SPACING_MM['ct']} mm for CT, {DEFAULT_SPACING_MM['mri']} mm for MRI; "
    f"size {DEFAULT_SIZE}; CT window {DEFAULT_WINDOW_HU[0]:g},{DEFAULT_WINDOW_HU[1]:g} HU). "
    "Exit codes: 0 all done, 3 no input found, 4 every case failed, 5 some cases failed (see errors.json)."
)


def _numbers(text: str | None, flag: str, count: tuple[int, ...]) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if len(values) not in count:
        raise UsageError(f"{flag} takes {' or '.join(str(c) for c in count)} value(s), got {text!r}")
    return values


def preprocess_command(
    inputs: list[Path] = typer.Argument(..., help="Files or folders (mixed formats; folders searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: images/, labels/, manifest.json, errors.json."),
    modality: str = typer.Option(default(PreprocessSettings, "modality"), "--modality", "-m",
                                 help="ct, mri, or auto (DICOM header / phantom manifest).",
                                 **choice((*MODALITIES, AUTO), ALIASES)),
    spacing: str | None = typer.Option(
        None, "--spacing", help="Output voxel size in mm: MM or MM,MM,MM (default: "
        f"{DEFAULT_SPACING_MM['ct']:g} for CT, {DEFAULT_SPACING_MM['mri']:g} for MRI)."
    ),
    size: str = typer.Option(str(DEFAULT_SIZE), "--size", help="Output shape: N or N,N,N (centre crop/pad)."),
    window: str | None = typer.Option(
        None, "--window", help="CT window LO,HI in HU mapped to -1..1 (default: "
        f"{DEFAULT_WINDOW_HU[0]:g},{DEFAULT_WINDOW_HU[1]:g})."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Folder of label maps paired with cases by case id (nearest-neighbour resampled)."
    ),
    volume_index: int | None = typer.Option(
        None, "--volume-index", min=0,
        help="Take volume K (0-based) of each 4D DICOM series (fMRI, DWI, multi-echo); without it they are refused.",
    ),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Parallel worker processes (one volume each in memory)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo finished cases (and allow changed settings)."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout (nothing else goes there)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    from rich.markup import escape

    from meddiff_cli.preprocess import ERRORS_NAME, preprocess_cases

    show_settings(verbose, quiet)
    if window is not None and modality == "mri":
        raise UsageError("--window applies to CT only")
    size_values = _numbers(size, "--size", (1, 3))
    if size_values is not None and any(v != int(v) for v in size_values):
        raise UsageError(f"--size takes whole numbers, got {size!r}")
    settings = PreprocessSettings(
        modality=modality,
        spacing=_numbers(spacing, "--spacing", (1, 3)),
        size=tuple(int(v) for v in size_values or [DEFAULT_SIZE]),
        window=tuple(_numbers(window, "--window", (2,)) or DEFAULT_WINDOW_HU),
        **({} if volume_index is None else {"volume_index": volume_index}),  # the default lives in PreprocessSettings
    )
    with progress_bar(quiet) as progress:
        task = progress.add_task("preprocess", total=None, status="")

        def on_case_done(case: dict[str, Any], finished: int, total: int) -> None:
            progress.update(task, completed=finished, total=total, status=f"{case['case_id']} {case['status']}")
            if case["status"] == "failed":
                info(f"[yellow]failed[/] {case['source']}: {case['error']}", quiet)
            elif verbose:
                info(f"{case['case_id']}: {case['status']} ({finished}/{total})", quiet)

        result = preprocess_cases(
            inputs, out, settings, labels_dir=labels, workers=workers, overwrite=overwrite, on_case_done=on_case_done
        )
    summary = result.to_json()
    if json_output:
        print_json(summary)
    for note in summary["notes"] if verbose else []:
        info(f"note: {escape(note)}", quiet)
    notes = f" ({len(summary['notes'])} note(s) on inputs set aside in manifest.json)" if summary["notes"] else ""
    info(f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed -> {out}{notes}", quiet)
    if summary["failed"]:
        message = f"{summary['failed']} of {len(result.cases)} case(s) failed; reasons in {ERRORS_NAME}"
        if len(result.cases) == 1:  # one input: the error line itself names the file and the problem
            raise BadInputError(result.failed[0]["error"], result.failed[0]["source"])
        if summary["failed"] == len(result.cases):
            raise BadInputError(message, out)
        raise PartialFailure(message, out)


def register(app: typer.Typer) -> None:
    app.command("preprocess", help=HELP, epilog=EPILOG)(preprocess_command)
