"""meddiff: 3D latent diffusion for CT and MRI — preprocess, train, sample, evaluate.

The library never imports Typer; the command-line layer lives in :mod:`meddiff_cli.cli`.
"""

__version__ = "0.1.0"
