"""The exit-code table is pinned: code values, `meddiff --help`'s epilog and docs/exit-codes.md agree."""

from __future__ import annotations

import re
from pathlib import Path

from meddiff_cli.errors import (
    EXIT_CODE_HELP,
    BadInputError,
    DeviceError,
    ExitCode,
    InputNotFoundError,
    ModelError,
    OutputError,
    PartialFailure,
    UsageError,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "exit-codes.md"


def test_codes_are_pinned():
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0, "INTERNAL": 1, "USAGE": 2, "NO_INPUT": 3, "BAD_INPUT": 4, "PARTIAL": 5, "MODEL": 6, "DEVICE": 7,
        "OUTPUT": 8, "INTERRUPTED": 130,
    }
    errors = (UsageError, InputNotFoundError, BadInputError, PartialFailure, ModelError, DeviceError, OutputError)
    assert [int(error("x").exit_code) for error in errors] == [2, 3, 4, 5, 6, 7, 8]
    assert set(EXIT_CODE_HELP) == set(ExitCode)


def test_help_epilog_lists_every_code(run_meddiff):
    code, stdout, _ = run_meddiff("--help")
    assert code == 0
    text = " ".join(stdout.replace("│", " ").split())
    for exit_code, meaning in EXIT_CODE_HELP.items():
        assert f"{int(exit_code)} {meaning}" in text, meaning


def test_docs_table_matches_the_code():
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", DOC.read_text(), flags=re.MULTILINE)
    assert {int(code): meaning for code, meaning in rows} == {int(c): m for c, m in EXIT_CODE_HELP.items()}
