"""Sampling synthetic volumes from a trained model (see :mod:`meddiff_cli.sample.pipeline`)."""

from meddiff_cli.sample.pipeline import (
    DEFAULT_STEPS, SampleOptions, SampleProgress, SampleResult, initial_noise, parse_shard, sample_latents,
    sample_volumes, volume_seed,
)

__all__ = [
    "DEFAULT_STEPS", "SampleOptions", "SampleProgress", "SampleResult", "initial_noise", "parse_shard",
    "sample_latents", "sample_volumes", "volume_seed",
]
