"""``meddiff export``: write and verify the ONNX graphs of a cached model."""

from __future__ import annotations

from pathlib import Path

import typer

from meddiff_cli.cli.common import VERBOSE_OPTION, choice, complete_model, info, print_json, show_settings
from meddiff_cli.export.options import DEFAULT_OPSET, DEFAULT_PRECISION, PRECISIONS, TOLERANCE

HELP = (
    "Export a model's denoiser and decoder to ONNX (onnx/denoiser.<prec>.onnx, onnx/decoder.<prec>.onnx), "
    "verify each against PyTorch on fresh random inputs, and record their sha256 in the model card."
)
EPILOG = (
    "Example: meddiff export my-ct-model --precision fp16  (fails with exit 6 if the relative error exceeds "
    + " or ".join(f"{tolerance:g} for {name}" for name, tolerance in TOLERANCE.items())
    + ", or if the denoiser is untrained and outputs zeros)."
)


def export_command(
    name: str = typer.Argument(..., autocompletion=complete_model, help="Model name in the cache, or a model folder path."),
    precision: str = typer.Option(DEFAULT_PRECISION, "--precision", help="fp32 or fp16 (fp16 exported from a .half() model).",
                                  **choice(PRECISIONS)),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write an ONNX-only model folder here instead of into the model."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset version."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Model cache folder (default: $MEDDIFF_HOME or the user cache)."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    from meddiff_cli.export import export_model
    from meddiff_cli.model.registry import resolve_model

    show_settings(verbose, quiet)
    folder = resolve_model(name, cache_dir)
    info(f"exporting {folder} ({precision}) …", quiet)
    result = export_model(folder, precision, out=out, opset=opset)
    for file, error in result.relative_error.items():
        info(f"{result.folder / file}: relative error {error:.2e} vs torch fp32 ({result.verified_on})", quiet)
    if json_output:
        print_json(result.to_dict())


def register(app: typer.Typer) -> None:
    app.command("export", help=HELP, epilog=EPILOG)(export_command)
