"""Error types and the documented process exit codes.

Every failure a user can cause maps to one :class:`MeddiffError` subclass; the CLI prints its
message as one line on stderr and exits with its code. Anything else is a bug (exit 1). With ``--json`` the
same failure is also one JSON document on stdout, shaped by :func:`error_document`.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes shared by every ``meddiff`` command (pinned by tests)."""

    OK = 0
    INTERNAL = 1  # a bug: please report it
    USAGE = 2  # bad flags or arguments
    NO_INPUT = 3  # input path missing or no volumes found
    BAD_INPUT = 4  # unreadable, corrupt or unsupported input
    PARTIAL = 5  # some cases failed, the others were written
    MODEL = 6  # model/cache problem (missing, tampered, incompatible)
    DEVICE = 7  # requested device/provider unavailable
    OUTPUT = 8  # cannot write the output: a file in the way, not meddiff's, permission, read-only, disk full
    INTERRUPTED = 130  # SIGINT / Ctrl-C


INTERRUPTED_MESSAGE = "interrupted: finished outputs are kept, temp files removed; rerun the same command to resume"

EXIT_CODE_HELP = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "internal error (a bug)",
    ExitCode.USAGE: "bad command-line usage",
    ExitCode.NO_INPUT: "input not found / no volumes found",
    ExitCode.BAD_INPUT: "unreadable, corrupt or unsupported input",
    ExitCode.PARTIAL: "partial success: some cases failed (see errors.json)",
    ExitCode.MODEL: "model or cache problem (missing, tampered, incompatible)",
    ExitCode.DEVICE: "requested device or provider unavailable",
    ExitCode.OUTPUT: "cannot write output (path is a file or not meddiff's, no permission, read-only, disk full)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class MeddiffError(Exception):
    """A user-facing failure: one readable line, one exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.path}: {self.message}" if self.path is not None else self.message
        return " ".join(text.split())

    def document(self) -> dict[str, Any]:
        return error_document(self.exit_code, self.message, self.path)


def error_document(code: ExitCode, message: str, path: str | Path | None = None) -> dict[str, Any]:
    """What ``--json`` prints on stdout when a command fails (docs/cli.md): ``{"error": {...}, "exit_code": N}``.

    ``kind`` is the exit code's name (``usage``, ``output``, ...), so scripts need not know the numbers.
    """
    return {
        "error": {"kind": code.name.lower(), "message": " ".join(message.split()),
                  "path": str(path) if path is not None else None},
        "exit_code": int(code),
    }


class UsageError(MeddiffError):
    exit_code = ExitCode.USAGE


class InputNotFoundError(MeddiffError):
    exit_code = ExitCode.NO_INPUT


class BadInputError(MeddiffError):
    exit_code = ExitCode.BAD_INPUT


class PartialFailure(MeddiffError):
    exit_code = ExitCode.PARTIAL


class ModelError(MeddiffError):
    exit_code = ExitCode.MODEL


class DeviceError(MeddiffError):
    exit_code = ExitCode.DEVICE


class OutputError(MeddiffError):
    exit_code = ExitCode.OUTPUT
