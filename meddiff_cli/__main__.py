"""``meddiff`` and ``python -m meddiff_cli`` (also ``torchrun -m meddiff_cli``): the CLI's entry point.

The CLI is imported inside a guard: a Ctrl-C while it is still loading (typer, rich, the command modules) ends
like one at any later moment, with one line and exit 130, not a KeyboardInterrupt traceback.
"""

import sys

from meddiff_cli.errors import INTERRUPTED_MESSAGE, ExitCode


def main() -> None:
    try:
        from meddiff_cli.cli.app import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED_MESSAGE + "\n")
        sys.exit(int(ExitCode.INTERRUPTED))
    cli_main()


if __name__ == "__main__":
    main()
