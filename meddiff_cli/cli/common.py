"""Shared CLI plumbing: stderr console, progress bars, JSON output, defaults, choices and completion.

Imported at start-up by every command module, so it must stay light: no torch, MONAI or ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

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
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

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


# --------------------------------------------------------------------------- defaults, choices, completion

def default(options: type, name: str) -> Any:
    """The default of field ``name`` of a library options dataclass: the CLI shows and uses that one value."""
    field = {f.name: f for f in dataclasses.fields(options)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"{options.__name__}.{name} has no default")


def choice(values: Sequence[str], aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``typer.Option`` keywords for a case-insensitive choice: help shows the values, TAB completion offers
    them, ``aliases`` map other spellings (``mr`` -> ``mri``), anything else is a usage error (exit 2)."""
    aliases = dict(aliases or {})

    def one(value: Any) -> str:
        key = str(value).strip().lower()
        key = aliases.get(key, key)
        if key not in values:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(values)}")
        return key

    def check(value: Any) -> Any:
        if value is None:
            return None
        return [one(v) for v in value] if isinstance(value, (list, tuple)) else one(value)

    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete.lower())]

    return {"callback": check, "autocompletion": complete, "metavar": "[" + "|".join(values) + "]"}


DEVICE_WORDS = ("auto", "cpu", "cuda")


def complete_device(incomplete: str) -> list[str]:
    """``--device`` takes auto, cpu, cuda or cuda:N; completion offers the words (N depends on the machine)."""
    return [word for word in DEVICE_WORDS if word.startswith(incomplete.lower())]


def complete_model(ctx: typer.Context, incomplete: str) -> list[str]:
    """Model names in the cache (``--cache-dir`` if given before, else ``$MEDDIFF_HOME``) and bundled ones."""
    from meddiff_cli.model.registry import model_names

    return [name for name in model_names(ctx.params.get("cache_dir")) if name.startswith(incomplete)]
