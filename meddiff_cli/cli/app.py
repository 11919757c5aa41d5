"""The ``meddiff`` Typer application: registers every command and turns errors into one line and an exit code.

Start-up must stay fast (``--help``, ``--version`` and every TAB completion run this module): command modules
import their stage (torch, MONAI, ONNX Runtime) inside the command function, never at module level, and
``tests/test_cli_startup.py`` checks that resolving ``meddiff --help`` imports none of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape

from meddiff_cli import __version__
from meddiff_cli.cli import augment_seg, config, evaluate, export, models, phantom, preprocess, sample, train
from meddiff_cli.cli import common
from meddiff_cli.cli.common import err_console
from meddiff_cli.errors import EXIT_CODE_HELP, INTERRUPTED_MESSAGE, ExitCode, MeddiffError, error_document
from meddiff_cli.fsutil import OUTPUT_PROBLEMS, output_error
from meddiff_cli.paths import CONFIG_ENV
from meddiff_cli.signals import exit_at_next_interrupt, install_sigterm_handler

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
    ctx: typer.Context,
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
    common.config_map = ctx.default_map or {}  # a failure's JSON document honours `json = true` in the file


for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    """Entry point (via :mod:`meddiff_cli.__main__`): every failure is one line on stderr and a documented exit
    code; with ``--json`` also one JSON document on stdout (:func:`meddiff_cli.errors.error_document`)."""
    install_sigterm_handler()
    common.json_printed, common.config_map = False, {}
    try:
        # prog_name: `python -m meddiff_cli` and torchrun runs complete and print usage as `meddiff` too.
        result = app(standalone_mode=False, prog_name="meddiff")
    except MeddiffError as error:
        _fail(error.exit_code, error.one_line(), error.document())
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as done:
        result = done.exit_code
    except OSError as error:
        if error.errno not in OUTPUT_PROBLEMS:
            _internal(error)
        mapped = output_error(error)  # a path the file system refused (full disk, read-only, ...): not a bug
        _fail(mapped.exit_code, mapped.one_line(), mapped.document())
    except Exception as error:
        if isinstance(error, typer.exceptions.TyperException) and hasattr(error, "show"):
            error.show()  # click-style usage error: message + hint, exit 2
            _fail(ExitCode.USAGE, None, error_document(ExitCode.USAGE, error.format_message()))
        if type(error).__name__ == "Abort":  # click turns a KeyboardInterrupt during parsing/prompts into Abort
            _interrupted()
        _internal(error)
    if result == ExitCode.INTERRUPTED:  # typer turns KeyboardInterrupt into a silent exit code 130
        _interrupted()
    sys.exit(result if isinstance(result, int) else 0)


def _fail(code: ExitCode, line: str | None, document: dict, label: str = "error") -> NoReturn:
    """Print the error line (unless already shown) and, for --json, the document unless a result is on stdout."""
    if line is not None:
        err_console.print(f"[bold red]{label}:[/] {escape(line)}", highlight=False)
    if not common.json_printed and common.json_requested(sys.argv[1:]):
        common.print_json(document)
    sys.exit(int(code))


def _interrupted() -> NoReturn:
    exit_at_next_interrupt()  # a second Ctrl-C while cleaning up ends at once, without a traceback
    err_console.print(INTERRUPTED_MESSAGE, highlight=False)
    _fail(ExitCode.INTERRUPTED, None, error_document(ExitCode.INTERRUPTED, INTERRUPTED_MESSAGE))


def _internal(error: BaseException) -> NoReturn:
    message = f"{type(error).__name__}: {' '.join(str(error).split())} (please report this bug)"
    _fail(ExitCode.INTERNAL, message, error_document(ExitCode.INTERNAL, message), "internal error")
