"""Model definition: card (config that travels train -> export -> sample), presets, MONAI networks, weight
store, the local model registry and the rectified-flow sampler (``scheduler``)."""

from meddiff_cli.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "card": ["ModelCard", "intensity_calibration", "latent_normalization"],
    "presets": ["PRESETS", "preset_config"],
    "networks": ["build_autoencoder", "build_denoiser"],
})
