"""The ``meddiff`` Typer application: registers every command and turns errors into one line and an exit code.

Start-up must stay fast (``--help``, ``--version`` and every TAB completion run this module): command modules
import their stage (torch, MONAI, ONNX Runtime) inside the command function, never at module level, and
``tests/test_cli_startup.py`` checks that resolving ``meddiff --help`` imports none of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from meddiff_cli import __version__
from meddiff_cli.cli import augment_seg, config, evaluate, export, models, phantom, preprocess, sample, train
from meddiff_cli.cli.common import err_console
from meddiff_cli.errors import EXIT_CODE_HELP, ExitCode, MeddiffError
from meddiff_cli.paths import CONFIG_ENV
from meddiff_cli.signals import install_sigterm_handler

INTERRUPTED_MESSAGE = "interrupted: finished outputs are kept, temp files removed; rerun the same command to resume"
EPILOG = "Exit codes: " + "; ".join(f"{int(code)} {text}" for code, text in EXIT_CODE_HELP.items()) + "."
# In pipeline order: that is the order `meddiff --help` lists them in.
COMMAND_MODULES = (phantom, preprocess, train, sample, evaluate, augment_seg, export, models, config)
VERSION_DISTRIBUTIONS = ("torch", "monai", ("onnxruntime-gpu", "onnxruntime"))

app = typer.Typer(
    name="meddiff",
    help="3D latent diffusion for CT and MRI: make phantoms, preprocess scans, train, sample and evaluate synthetic volumes.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,  # tracebacks must never print patient paths or data
    rich_markup_mode="rich",
)


def version_lines() -> list[str]:
    """meddiff, Python and the installed torch, MONAI and ONNX Runtime versions, from package metadata (no
    import: ``--version`` answers at once); ``meddiff config devices`` says which GPUs they can use."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"meddiff {__version__}", f"python {platform.python_version()} ({platform.platform(terse=True)})"]
    for names in VERSION_DISTRIBUTIONS:
        for name in (names,) if isinstance(names, str) else names:
            try:
                lines.append(f"{name} {version(name)}")
                break
            except PackageNotFoundError:
                continue
        else:
            lines.append(f"{names if isinstance(names, str) else names[-1]} not installed")
    return lines


def _version_callback(value: bool) -> None:
    if value:
        typer.echo("\n".join(version_lines()))
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True,
        help="Print meddiff, python, torch, MONAI and ONNX Runtime versions and exit "
             "(GPUs and ORT providers: meddiff config devices).",
    ),
    config_file: Path | None = typer.Option(
        None, "--config", envvar=CONFIG_ENV, callback=config.apply_config, is_eager=True,
        help="TOML file with a [COMMAND] table of option values (flag > env MEDDIFF_* > file > default).",
    ),
) -> None:
    """meddiff — synthetic 3D CT/MRI from latent diffusion models."""


for _module in COMMAND_MODULES:
    _module.register(app)


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
