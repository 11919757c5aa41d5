"""``meddiff export``: write and verify the ONNX graphs of a cached model."""

from __future__ import annotations

from pathlib import Path

import typer

from meddiff_cli.cli.app import app
from meddiff_cli.cli.common import VERBOSE_OPTION, info, print_json, show_settings
from meddiff_cli.export import DEFAULT_OPSET, export_model
from meddiff_cli.models import resolve_model


@app.command(
    "export",
    help=(
        "Export a model's denoiser and decoder to ONNX (onnx/denoiser.<prec>.onnx, onnx/decoder.<prec>.onnx), "
        "verify each against PyTorch on fresh random inputs, and record their sha256 in the model card."
    ),
    epilog=(
        "Example: meddiff export my-ct-model --precision fp16  (fails with exit 6 if the relative error exceeds "
        "1e-3 for fp32 or 1e-2 for fp16, or if the denoiser is untrained and outputs zeros)."
    ),
)
def export_command(
    name: str = typer.Argument(..., help="Model name in the cache, or a model folder path."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (fp16 exported from a .half() model)."),
    out: Path | None = typer.Option(None, "--out", help="Write an ONNX-only model folder here instead of into the model."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset version."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Model cache folder (default: $MEDDIFF_HOME or the user cache)."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    show_settings(verbose, quiet)
    folder = resolve_model(name, cache_dir)
    info(f"exporting {folder} ({precision}) …", quiet)
    result = export_model(folder, precision.lower(), out=out, opset=opset)
    for file, error in result.relative_error.items():
        info(f"{result.folder / file}: relative error {error:.2e} vs torch fp32 ({result.verified_on})", quiet)
    if json_output:
        print_json(result.to_dict())
