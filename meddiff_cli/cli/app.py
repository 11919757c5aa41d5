"""The ``meddiff`` Typer application and its error-handling entry point."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer
from rich.markup import escape

from meddiff_cli import __version__
from meddiff_cli.cli.common import err_console
from meddiff_cli.errors import EXIT_CODE_HELP, ExitCode, MeddiffError
from meddiff_cli.signals import install_sigterm_handler

INTERRUPTED_MESSAGE = "interrupted: finished outputs are kept, temp files removed; rerun the same command to resume"
EPILOG = "Exit codes: " + "; ".join(f"{int(code)} {text}" for code, text in EXIT_CODE_HELP.items()) + "."

app = typer.Typer(
    name="meddiff",
    help="3D latent diffusion for CT and MRI: make phantoms, preprocess scans, train, sample and evaluate synthetic volumes.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,  # tracebacks must never print patient paths or data
    rich_markup_mode="rich",
)

# Each module registers its command(s) on ``app`` when imported. Only working commands are listed.
COMMAND_MODULES: list[str] = [
    "meddiff_cli.cli.evaluate",
    "meddiff_cli.cli.train",
    "meddiff_cli.cli.augment_seg",
    "meddiff_cli.cli.export",
    "meddiff_cli.cli.sample",
    "meddiff_cli.cli.models",
    "meddiff_cli.cli.preprocess",
    "meddiff_cli.cli.phantom",
    "meddiff_cli.cli.config",
]


def version_lines() -> list[str]:
    """What a bug report needs: meddiff, Python, torch (+CUDA), ONNX Runtime and its execution providers."""
    import platform

    import onnxruntime
    import torch

    cuda = (f"yes, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}"
            if torch.cuda.is_available() else "no")
    return [
        f"meddiff {__version__}",
        f"python {platform.python_version()} ({platform.platform(terse=True)})",
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}; CUDA available: {cuda})",
        f"onnxruntime {onnxruntime.__version__} (providers: {', '.join(onnxruntime.get_available_providers())})",
    ]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo("\n".join(version_lines()))
        raise typer.Exit()


def _config_callback(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    from meddiff_cli.cli.config import apply_config  # imported late: that module registers on ``app``

    return apply_config(ctx, param, value)


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True,
        help="Print meddiff, python, torch and onnxruntime versions, CUDA availability and ORT providers; exit.",
    ),
    config: Path | None = typer.Option(
        None, "--config", envvar="MEDDIFF_CONFIG", callback=_config_callback, is_eager=True,
        help="TOML file with a [COMMAND] table of option values (flag > env MEDDIFF_* > file > default).",
    ),
) -> None:
    """meddiff — synthetic 3D CT/MRI from latent diffusion models."""


for _module in COMMAND_MODULES:
    importlib.import_module(_module)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and a documented exit code."""
    install_sigterm_handler()
    try:
        # prog_name: `python -m meddiff_cli` and torchrun runs complete and print usage as `meddiff` too.
        result = app(standalone_mode=False, prog_name="meddiff")
    except MeddiffError as error:
        err_console.print(f"[bold red]error:[/] {escape(error.one_line())}", highlight=False)
        sys.exit(int(error.exit_code))
    except KeyboardInterrupt:
        err_console.print(INTERRUPTED_MESSAGE, highlight=False)
        sys.exit(int(ExitCode.INTERRUPTED))
    except typer.Exit as done:
        result = done.exit_code
    except Exception as error:
        if isinstance(error, typer.exceptions.TyperException) and hasattr(error, "show"):
            error.show()  # click-style usage error: message + hint, exit 2
            sys.exit(int(ExitCode.USAGE))
        if type(error).__name__ == "Abort":  # click turns a KeyboardInterrupt during parsing/prompts into Abort
            err_console.print(INTERRUPTED_MESSAGE, highlight=False)
            sys.exit(int(ExitCode.INTERRUPTED))
        err_console.print(
            f"[bold red]internal error:[/] {type(error).__name__}: {escape(' '.join(str(error).split()))} (please report this bug)",
            highlight=False,
        )
        sys.exit(int(ExitCode.INTERNAL))
    if result == ExitCode.INTERRUPTED:  # typer turns KeyboardInterrupt into a silent exit code 130
        err_console.print(INTERRUPTED_MESSAGE, highlight=False)
    sys.exit(result if isinstance(result, int) else 0)
