"""Stage 2: the rectified-flow denoiser on standardised latents of the frozen autoencoder (EMA weights sample).

With ``latent_cache`` (and no flips) every training case is encoded once (posterior mean) instead of every
step; the per-channel latent statistics that standardise the latents are stored in the card (``latent``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.schedulers import RFlowScheduler
from torch.optim.swa_utils import AveragedModel

from meddiff_cli.errors import ModelError
from meddiff_cli.io.preview import PREVIEW_DIR, save_preview
from meddiff_cli.model.card import ModelCard, latent_normalization
from meddiff_cli.model.networks import DecoderForExport, build_autoencoder, build_denoiser
from meddiff_cli.model.scheduler import build_scheduler, sample_latents
from meddiff_cli.model.store import AUTOENCODER_FILE, load_state_dict, save_model
from meddiff_cli.train import distributed as ddp
from meddiff_cli.train.checkpoint import restore_training_state, save_training_state
from meddiff_cli.train.data import read_case
from meddiff_cli.train.loop import cached_batches, make_optimizer, optimizer_step, run_steps
from meddiff_cli.train.schedules import EmaWithWarmup, set_lr
from meddiff_cli.train.setup import TrainRun

STAGE = "diffusion"
MAX_SCALE_CASES = 64
VAL_TIMEPOINTS = (0.125, 0.375, 0.625, 0.875)


def frozen_autoencoder(run: TrainRun) -> torch.nn.Module:
    run.card.files.update(ModelCard.load(run.folder).files)  # other ranks never wrote it: learn its sha256
    autoencoder = build_autoencoder(run.card)
    autoencoder.load_state_dict(load_state_dict(run.folder / AUTOENCODER_FILE, run.card.files.get(AUTOENCODER_FILE)))
    return autoencoder.to(run.device).eval().requires_grad_(False)


@torch.no_grad()
def encode(run: TrainRun, autoencoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Posterior mean (deterministic; with kl_weight ~1e-6 the posterior sigma is tiny anyway)."""
    with run.autocast():
        z_mu, _ = autoencoder.encode(images)
    return z_mu.float()


def latent_statistics(run: TrainRun, latents: torch.Tensor) -> tuple[list[float], list[float]]:
    """``(shift, scale)`` that standardise the (unaugmented) training latents [N, C, ...]: per channel
    (``latent_norm`` channel — a weak channel is not drowned in unit noise) or one global scale."""
    channels = latents.shape[1]
    if run.config.get("latent_norm", "global") == "channel":
        flat = latents.transpose(0, 1).reshape(channels, -1).double()
        shift, std = flat.mean(dim=1), flat.std(dim=1)
    else:
        shift, std = torch.zeros(channels, dtype=torch.float64), latents.double().std().expand(channels)
    if not torch.isfinite(std).all() or bool((std <= 0).any()):
        raise ModelError("the autoencoder produced constant or non-finite latents; retrain it", run.folder)
    return [float(v) for v in shift], [float(v) for v in 1.0 / std]


def encode_cases(run: TrainRun, autoencoder: torch.nn.Module, cases: list[Any]) -> torch.Tensor:
    """Posterior means of whole cases, [N, C, ...] on the CPU."""
    return torch.cat([encode(run, autoencoder, torch.from_numpy(read_case(case))[None, None].to(run.device)).cpu()
                      for case in cases])


def _set_latent_normalization(run: TrainRun, autoencoder: torch.nn.Module, cached: torch.Tensor | None) -> None:
    """Rank 0 measures the training latents once; every rank gets the same card ``latent.shift``/``scale``."""
    card = run.card
    if card.latent.get("scale") is not None or card.latent.get("scale_factor") is not None:
        return
    sample = cached if cached is not None else encode_cases(run, autoencoder, run.data.train[:MAX_SCALE_CASES])
    shift, scale = latent_statistics(run, sample) if run.dist.is_main else ([0.0], [0.0])
    channels = range(int(card.latent["channels"]))
    card.latent["shift"] = [ddp.broadcast_from_main(shift[c] if run.dist.is_main else 0.0, run.dist, run.device)
                            for c in channels]
    card.latent["scale"] = [ddp.broadcast_from_main(scale[c] if run.dist.is_main else 0.0, run.dist, run.device)
                            for c in channels]


def train_diffusion(run: TrainRun, total: int) -> int:
    """Train (or resume) stage 2 up to ``total`` steps; returns the steps run now."""
    config, card, device = run.config, run.card, run.device
    autoencoder = frozen_autoencoder(run)
    use_cache = bool(config.get("latent_cache", False)) and not bool(config["flip_lr"])
    cached = encode_cases(run, autoencoder, run.data.train) if use_cache else None
    _set_latent_normalization(run, autoencoder, cached)
    shift_list, scale_list = latent_normalization(card)
    shift = torch.tensor(shift_list, device=device).view(1, -1, 1, 1, 1)
    scale = torch.tensor(scale_list, device=device).view(1, -1, 1, 1, 1)
    if cached is not None:
        cached = (cached - shift.cpu()) * scale.cpu()
    torch.manual_seed(run.seed + 1)
    denoiser = build_denoiser(card).to(device)
    ema = AveragedModel(denoiser, multi_avg_fn=EmaWithWarmup(float(config["ema_decay"])), use_buffers=True)
    optimizer = make_optimizer(denoiser, config)
    modules = {"denoiser": denoiser, "ema": ema}
    optimizers = {"optimizer": ("denoiser", optimizer)}
    scheduler = RFlowScheduler(**card.scheduler)
    skipped = card.training["skipped_steps"]
    start, previous_duration = 0, float(card.training["duration_s"][STAGE])
    if run.resumes(STAGE):
        state = restore_training_state(run.checkpoint, modules, optimizers)
        start, previous_duration = int(state["step"]), float(state["duration_s"])
        skipped.update(state["skipped_steps"])
    if start >= total:
        run.reporter.message(f"denoiser already trained for {start} steps")
        return 0
    validation = ([((encode(run, autoencoder, image.to(device)) - shift) * scale, class_id)
                   for image, class_id in run.validation_volumes()] if run.dist.is_main else [])
    began = time.monotonic()

    def step_fn(step: int, batch: torch.Tensor, class_ids: torch.Tensor) -> dict[str, float]:
        set_lr([optimizer], config, step, total)
        latents = batch if cached is not None else (encode(run, autoencoder, batch) - shift) * scale
        noise = torch.randn_like(latents)
        timesteps = scheduler.sample_timesteps(latents)
        noisy = scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)
        with run.autocast():
            velocity = denoiser(noisy, timesteps=timesteps, class_labels=class_ids)
        loss = F.mse_loss(velocity.float(), latents - noise)  # MONAI RFlow convention: v = x0 - noise
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer_step(optimizer, denoiser, run):
            ema.update_parameters(denoiser)
        else:
            skipped["diffusion"] += 1
        return {"loss": float(loss.detach())}

    def at_step_end(done: int, final: bool) -> None:
        if done % int(config["val_every"]) == 0 or final:
            card.metrics["diffusion_val_loss"] = round(validate_diffusion(run, ema.module, scheduler, validation), 6)
            run.reporter.validated(STAGE, done, total, {"diffusion_val_loss": card.metrics["diffusion_val_loss"]})
        if done % int(config["preview_every"]) == 0 or final:
            preview_samples(run, ema.module, autoencoder, run.folder / PREVIEW_DIR / f"diffusion_{done:07d}.png")
        if done % int(config["checkpoint_every"]) == 0 or final:
            duration = previous_duration + time.monotonic() - began
            card.training["steps"][STAGE] = done
            card.training["duration_s"][STAGE] = round(duration, 3)
            save_model(card, autoencoder, ema.module, run.folder)  # EMA weights are the ones samplers use
            save_training_state(run.folder, {
                "stage": STAGE, "step": done, "total_steps": total, "config": config,
                "duration_s": duration, "skipped_steps": dict(skipped),
            }, modules, optimizers)

    source = cached_batches(run, cached, start, total) if cached is not None else None
    return run_steps(run, STAGE, start, total, step_fn, at_step_end, source) - start


@torch.no_grad()
def validate_diffusion(run: TrainRun, denoiser: torch.nn.Module, scheduler: RFlowScheduler,
                       validation: list[tuple[torch.Tensor, int]]) -> float:
    """Velocity MSE of the EMA denoiser on held-out latents at fixed timepoints and fixed noise."""
    generator = torch.Generator().manual_seed(run.seed)
    denoiser.eval()
    losses = []
    for latent, class_id in validation:
        for point in VAL_TIMEPOINTS:
            noise = torch.randn(latent.shape, generator=generator).to(run.device)
            timesteps = torch.full((1,), point * scheduler.num_train_timesteps, device=run.device)
            noisy = scheduler.add_noise(latent, noise, timesteps)
            with run.autocast():
                velocity = denoiser(noisy, timesteps=timesteps, class_labels=torch.tensor([class_id], device=run.device))
            losses.append(float(F.mse_loss(velocity.float(), latent - noise)))
    denoiser.train()
    return float(np.mean(losses))


@torch.no_grad()
def preview_samples(run: TrainRun, denoiser: torch.nn.Module, autoencoder: torch.nn.Module, path: Path) -> None:
    """One decoded sample per modality (``preview_sampling_steps`` Euler steps of the same sampler as
    ``meddiff sample``, fixed noise) — a quick visual check, not a metric."""
    card = run.card
    generator = torch.Generator().manual_seed(run.seed)
    shape = (len(card.modalities), card.latent["channels"], *card.latent["shape"])
    noise = torch.randn(shape, generator=generator).to(run.device)
    class_ids = torch.arange(len(card.modalities), device=run.device)

    def denoise(latent: torch.Tensor, timesteps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return denoiser(latent, timesteps=timesteps, class_labels=classes).float()

    denoiser.eval()
    with run.autocast():
        latents = sample_latents(denoise, build_scheduler(card), noise, class_ids, int(run.config["preview_sampling_steps"]))
        volumes = DecoderForExport(autoencoder, *latent_normalization(card)).to(run.device)(latents)
    denoiser.train()
    save_preview([[volume[0]] for volume in volumes.float().cpu().numpy()], path)
