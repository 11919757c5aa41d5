#!/usr/bin/env python3
"""Write the shell completion scripts shipped in ``completions/`` (bash, zsh, fish, PowerShell).

They are Typer's completion scripts for the ``meddiff`` program: at TAB time the shell runs ``meddiff`` with
``_MEDDIFF_COMPLETE=complete_<shell>``, so commands, options and their values always match the installed
version. Regenerate after upgrading Typer (``tests/test_cli_completions.py`` fails when the files are stale):

    python scripts/gen_completions.py            # rewrite completions/
    python scripts/gen_completions.py --check    # exit 1 if completions/ differs from what would be written
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from typer._completion_shared import get_completion_script

PROG_NAME = "meddiff"
COMPLETE_VAR = "_MEDDIFF_COMPLETE"  # what click derives from the program name; main() passes prog_name="meddiff"
FILES = {"bash": "meddiff.bash", "zsh": "_meddiff", "fish": "meddiff.fish", "pwsh": "meddiff.ps1"}
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "completions"


def completion_scripts() -> dict[str, str]:
    """File name -> script text, one per shell."""
    return {
        name: get_completion_script(prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=shell) + "\n"
        for shell, name in FILES.items()
    }


def write_completions(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in completion_scripts().items():
        (folder / name).write_text(text, encoding="utf-8", newline="\n")
        written.append(folder / name)
    return written


def stale_files(folder: Path) -> list[str]:
    """Names of shipped scripts that are missing or differ from a fresh generation."""
    return [name for name, text in completion_scripts().items()
            if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder to write (default: completions/)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files(args.out)
        for name in stale:
            print(f"stale: {args.out / name} (run python scripts/gen_completions.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_completions(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
