"""Error types and the documented process exit codes.

Every failure a user can cause maps to one :class:`MeddiffError` subclass; the CLI prints its
message as one line on stderr and exits with its code. Anything else is a bug (exit 1).
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path


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
    INTERRUPTED = 130  # SIGINT / Ctrl-C


EXIT_CODE_HELP = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "internal error (a bug)",
    ExitCode.USAGE: "bad command-line usage",
    ExitCode.NO_INPUT: "input not found / no volumes found",
    ExitCode.BAD_INPUT: "unreadable, corrupt or unsupported input",
    ExitCode.PARTIAL: "partial success: some cases failed (see errors.json)",
    ExitCode.MODEL: "model or cache problem (missing, tampered, incompatible)",
    ExitCode.DEVICE: "requested device or provider unavailable",
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
