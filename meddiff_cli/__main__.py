"""``python -m meddiff_cli`` — same as the ``meddiff`` console script (used by ``torchrun -m``)."""

from meddiff_cli.cli.app import main

if __name__ == "__main__":
    main()
