"""Shared CLI plumbing: stderr console, progress bars, JSON output, defaults, choices and completion.

Imported at start-up by every command module, so it must stay light: no torch, MONAI or ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import json
import os
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


json_printed = False
"""Whether this run already wrote its JSON document (a failure after it, e.g. partial success, adds none)."""
config_map: dict[str, Any] = {}
"""The ``--config`` file's settings as click's ``default_map`` (set by the root callback), for :func:`json_requested`."""

TRUE_WORDS = ("1", "true", "t", "yes", "y", "on")  # what click reads as true in an env var


def print_json(obj: Any) -> None:
    """Write one JSON document to stdout (the only thing a --json command prints there)."""
    global json_printed
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()
    json_printed = True


def json_requested(argv: Sequence[str]) -> bool:
    """Whether this run asked for ``--json``: the flag, ``MEDDIFF_<COMMAND>_JSON``, or ``json = true`` in the
    command's ``--config`` table (flag and env win over the file, as click decides).

    Read from the raw arguments because a failure may come before click has parsed them (a bad value, say);
    ``--`` ends the options, and ``--config FILE`` takes a value that is no command name.
    """
    args = list(argv[:argv.index("--")] if "--" in argv else argv)
    if "--json" in args:
        return True
    words: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--config":
            next(rest, None)
        elif not arg.startswith("-") and len(words) < 2:
            words.append(arg)
    for n in (2, 1):  # `models list` before `models`: the deeper table or variable is the command's own
        env = os.environ.get(f"MEDDIFF_{'_'.join(words[:n]).upper().replace('-', '_')}_JSON")
        if len(words) >= n and env is not None:
            return env.strip().lower() in TRUE_WORDS
    table: Any = config_map
    for word in words:
        table = table.get(word, {}) if isinstance(table, dict) else {}
        if isinstance(table, dict) and "json_output" in table:
            return bool(table["json_output"])
    return False


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


def duration_text(seconds: float) -> str:
    """An ETA for progress lines: ``1h05m``, ``3m07s``; ``?`` before there is a rate (NaN)."""
    if seconds != seconds:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


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
