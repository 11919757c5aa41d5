"""Shared CLI plumbing: stderr console, progress bars, JSON output, option types."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Everything human-facing goes to stderr so that stdout stays clean for --json in pipelines.
# soft_wrap: a message is one line however long (paths are), so `grep`/log tools see it whole.
err_console = Console(stderr=True, soft_wrap=True)


def print_json(obj: Any) -> None:
    """Write one JSON document to stdout (the only thing a --json command prints there)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        err_console.print(message, highlight=False)


@contextmanager
def progress_bar(quiet: bool = False) -> Iterator[Progress]:
    """A rich progress bar on stderr; disabled when quiet or when stderr is not a terminal."""
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err_console,
        disable=quiet or not err_console.is_terminal,
        transient=False,
    )
    with progress:
        yield progress


# --------------------------------------------------------------------------- settings, sources, --verbose

SOURCE_NAMES = {"COMMANDLINE": "flag", "ENVIRONMENT": "env", "DEFAULT_MAP": "file", "DEFAULT": "default"}
"""click's ParameterSource, in the words `meddiff config show` and `-v` print."""


def describe_parameters(ctx: Any) -> dict[str, dict[str, Any]]:
    """Effective value and source of every parameter of ``ctx.command`` as click resolved it.

    click already applies flag > env (``param.envvar``) > config file (``default_map``) > default, so
    real runs (``-v``) and ``meddiff config show`` both just read what it decided: one precedence rule.
    """
    described: dict[str, dict[str, Any]] = {}
    for param in ctx.command.params:
        if param.name is None or getattr(param, "hidden", False):
            continue
        source = ctx.get_parameter_source(param.name)
        value = ctx.params.get(param.name)
        envvar = param.envvar if isinstance(param.envvar, str) else None  # MEDDIFF_<COMMAND>_<FLAG>
        described[param.name] = {
            "flag": max(param.opts, key=len) if param.param_type_name == "option" else param.name.upper(),
            "value": [str(v) if isinstance(v, Path) else v for v in value] if isinstance(value, (list, tuple))
            else (str(value) if isinstance(value, Path) else value),
            "source": SOURCE_NAMES.get(source.name, source.name.lower()) if source is not None else "default",
            "env": envvar,
        }
    return described


def show_settings(verbose: bool, quiet: bool = False) -> None:
    """``-v``: print every setting with where it came from, and the wall time when the command ends."""
    if not verbose or quiet:
        return
    from typer._click.globals import get_current_context  # typer vendors its click

    ctx = get_current_context()
    started = time.perf_counter()
    for name, entry in describe_parameters(ctx).items():
        info(f"[dim]setting[/] {entry['flag']} = {entry['value']!r} ({entry['source']})", quiet)
    ctx.call_on_close(lambda: info(f"[dim]{ctx.command_path}: {time.perf_counter() - started:.2f} s wall time[/]"))


VERBOSE_HELP = "Extra detail on stderr: every setting with its source (flag/env/file/default), timings."
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)
