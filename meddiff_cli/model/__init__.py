"""Model definition: the model card (config that travels train → export → sample) and MONAI networks."""

from meddiff_cli.model.card import ModelCard, PRESETS, preset_config
from meddiff_cli.model.networks import build_autoencoder, build_denoiser

__all__ = ["ModelCard", "PRESETS", "preset_config", "build_autoencoder", "build_denoiser"]
