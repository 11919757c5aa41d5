"""The rectified-flow sampler: one Euler/Heun loop for training previews and ``meddiff sample``.

The loop only needs a ``denoise(latent, timesteps, class_ids) -> velocity`` callable, so the same code drives
a MONAI UNet during training and any :mod:`meddiff_cli.runtime` backend (ONNX Runtime, PyTorch) when sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meddiff_cli.errors import ModelError, UsageError

if TYPE_CHECKING:  # torch and MONAI load when sampling starts: the CLI reads SAMPLERS from here at start-up
    import torch
    from monai.networks.schedulers import RFlowScheduler

    from meddiff_cli.model.card import ModelCard

SAMPLERS = ("euler", "heun")

# How samplers must use the denoiser; stored as the card's ``sampling`` section by ``train`` (checked against
# MONAI's RFlowScheduler: add_noise mixes (1 - t/T) * x0 + (t/T) * noise and step() moves x + v * (t - t_next) / T
# towards t = 0).
SAMPLING_CONVENTION: dict[str, Any] = {
    "prediction": "velocity",
    "velocity": "x0 - noise",
    "interpolation": "x_t = (1 - t/T) * x0 + (t/T) * noise, T = scheduler.num_train_timesteps",
    "time": "t runs from T (pure noise) down to 0 (data); Euler step x <- x + v * (t - t_next) / T "
            "(RFlowScheduler.set_timesteps + step)",
    "class_labels": "index of the modality in `modalities`",
    "latent_scaling": "volume = repair_box_edges(clip(autoencoder.decode(latent / latent.scale + latent.shift), "
                      "-1, 1)), per channel",
    "output_clip": [-1.0, 1.0],
    "default_steps": 30,
}

Denoise = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""``(latent [B, C, ...], timesteps [B] float, class_ids [B] int64) -> velocity`` like ``latent``."""


def default_steps(card: ModelCard) -> int:
    """The step count the model was released with (card ``sampling.default_steps``); cards written before
    the field existed get the convention's value."""
    return int(card.sampling.get("default_steps") or SAMPLING_CONVENTION["default_steps"])


def build_scheduler(card: ModelCard) -> RFlowScheduler:
    """MONAI's RFlowScheduler exactly as the model was trained with (``RFlowScheduler(**card.scheduler)``)."""
    from monai.networks.schedulers import RFlowScheduler

    if card.objective != "rectified_flow":
        raise ModelError(f"model objective {card.objective!r} is not supported by this sampler (rectified_flow only)")
    try:
        return RFlowScheduler(**card.scheduler)
    except (TypeError, ValueError) as error:
        raise ModelError(f"model card has invalid scheduler settings ({error})") from None


def check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown --sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return sampler


def sample_latents(denoise: Denoise, scheduler: RFlowScheduler, noise: torch.Tensor, class_ids: torch.Tensor,
                   steps: int, sampler: str = "euler", on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """Integrate the learned velocity from noise (t = T) to data (t = 0); ``noise`` sets device and dtype.

    ``euler`` is ``RFlowScheduler.step``; ``heun`` adds a corrector evaluation at the next timestep (2 network
    calls per step; the final step to t = 0 stays Euler, as in EDM's Heun sampler).
    """
    import torch

    check_sampler(sampler)
    scheduler.set_timesteps(steps, input_img_size_numel=int(math.prod(noise.shape[2:])))
    timesteps = [float(t) for t in scheduler.timesteps.cpu()]
    latent = noise
    classes = class_ids.to(device=noise.device, dtype=torch.int64)
    batch = latent.shape[0]
    with torch.no_grad():
        for position, t in enumerate(timesteps):
            next_t = timesteps[position + 1] if position + 1 < len(timesteps) else 0.0
            velocity = denoise(latent, torch.full((batch,), t, device=noise.device), classes).to(latent.dtype)
            predicted, _ = scheduler.step(velocity, t, latent, next_t)
            if sampler == "heun" and next_t > 0:
                dt = (t - int(next_t)) / scheduler.num_train_timesteps  # the same dt RFlowScheduler.step uses
                corrector = denoise(predicted, torch.full((batch,), next_t, device=noise.device), classes)
                predicted = latent + 0.5 * (velocity + corrector.to(latent.dtype)) * dt
            latent = predicted
            if on_step is not None:
                on_step()
    return latent
