"""The ``meddiff`` Typer application and its error-handling entry point."""

from __future__ import annotations

import importlib
import sys

import typer

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
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"meddiff {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """meddiff — synthetic 3D CT/MRI from latent diffusion models."""


for _module in COMMAND_MODULES:
    importlib.import_module(_module)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and a documented exit code."""
    install_sigterm_handler()
    try:
        result = app(standalone_mode=False)
    except MeddiffError as error:
        err_console.print(f"[bold red]error:[/] {error.one_line()}", highlight=False, markup=True)
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
            f"[bold red]internal error:[/] {type(error).__name__}: {error} (please report this bug)",
            highlight=False,
        )
        sys.exit(int(ExitCode.INTERNAL))
    if result == ExitCode.INTERRUPTED:  # typer turns KeyboardInterrupt into a silent exit code 130
        err_console.print(INTERRUPTED_MESSAGE, highlight=False)
    sys.exit(result if isinstance(result, int) else 0)
