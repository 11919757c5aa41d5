"""Shared CLI plumbing: stderr console, progress bars, JSON output, option types."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
