"""Stage 1: the KL autoencoder, trained with L1 + KL + a patch GAN (discriminator switched on gradually)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.metrics import PSNRMetric
from monai.networks.nets import PatchDiscriminator

from meddiff_cli.io.preview import PREVIEW_DIR, save_preview
from meddiff_cli.model.networks import build_autoencoder, build_denoiser
from meddiff_cli.model.store import drop_modality_decoders, save_model
from meddiff_cli.train.checkpoint import restore_training_state, save_training_state
from meddiff_cli.train.loop import make_optimizer, optimizer_step, run_steps
from meddiff_cli.train.options import ADV_INPUTS
from meddiff_cli.train.schedules import adversarial_weight, set_lr
from meddiff_cli.train.setup import TrainRun

STAGE = "autoencoder"


def discriminator_input(decoded: torch.Tensor, mode: str) -> torch.Tensor:
    """What the discriminator sees of a decoded batch: ``raw`` the decoder's output; ``clip`` the [-1, 1]-clipped
    volume samplers write (no generator gradient where the clip is active); ``clip-st`` the clipped volume with the
    gradient passed straight through the clip.

    Why a choice: CT air is clipped at -1000 HU in real volumes, so raw air below -1 reads as fake and the GAN lifts
    it; the clipped variants judge the written volume instead. Measured in docs/model.md ("A stronger patch GAN on
    the decoder"): at weight 0.03-0.1 every variant lowered the MRI floor; raw and plain clip moved the CT air level
    (too bright, too flat), clip-st held it. Cards written before ``adv_input`` existed trained with ``raw``.
    """
    if mode not in ADV_INPUTS:
        raise ValueError(f"adv_input {mode!r}: choose {', '.join(ADV_INPUTS)}")
    if mode == "raw":
        return decoded
    clipped = decoded.clamp(-1.0, 1.0)
    return clipped if mode == "clip" else decoded + (clipped - decoded).detach()


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent voxels, averaged over the batch (as in MONAI's tutorials)."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


def train_autoencoder(run: TrainRun, total: int) -> int:
    """Train (or resume) stage 1 up to ``total`` steps; returns the steps run now."""
    config, card, device = run.config, run.card, run.device
    torch.manual_seed(run.seed)  # identical initial weights on every rank and every run
    autoencoder = build_autoencoder(card).to(device)
    discriminator = PatchDiscriminator(spatial_dims=3, channels=int(config["disc_channels"]), in_channels=1,
                                       out_channels=1, num_layers_d=int(config["disc_layers"])).to(device)
    opt_g, opt_d = make_optimizer(autoencoder, config), make_optimizer(discriminator, config)
    modules = {"autoencoder": autoencoder, "discriminator": discriminator}
    optimizers = {"optimizer_g": ("g", opt_g), "optimizer_d": ("d", opt_d)}
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    skipped = card.training["skipped_steps"]
    start, previous_duration = 0, float(card.training["duration_s"][STAGE])
    if run.resumes(STAGE):
        state = restore_training_state(run.checkpoint, modules, optimizers)
        start, previous_duration = int(state["step"]), float(state["duration_s"])
        skipped.update(state["skipped_steps"])
    if start >= total:
        run.reporter.message(f"autoencoder already trained for {start} steps")
        return 0
    drop_modality_decoders(card)  # tuned to the encoder this stage changes
    adv_input = str(config.get("adv_input", "raw"))  # validated by setup.prepare
    validation = run.validation_volumes() if run.dist.is_main else []
    untrained_denoiser = build_denoiser(card)  # keeps the model folder loadable before stage 2 runs
    began = time.monotonic()

    def step_fn(step: int, images: torch.Tensor, _: torch.Tensor) -> dict[str, float]:
        set_lr([opt_g, opt_d], config, step, total)
        with run.autocast():
            reconstruction, z_mu, z_sigma = autoencoder(images)
        reconstruction, z_mu, z_sigma = reconstruction.float(), z_mu.float(), z_sigma.float()
        l1 = F.l1_loss(reconstruction, images)
        generator_loss = l1 + float(config["kl_weight"]) * kl_divergence(z_mu, z_sigma)
        weight = adversarial_weight(step, config)
        shown = discriminator_input(reconstruction, adv_input)
        if weight > 0:  # the discriminator runs in fp32, outside autocast, and is frozen for this pass
            discriminator.requires_grad_(False)
            generator_loss = generator_loss + weight * adversarial(
                discriminator(shown)[-1], target_is_real=True, for_discriminator=False)
            discriminator.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        generator_loss.backward()
        if not optimizer_step(opt_g, autoencoder, run):
            skipped["autoencoder"] += 1
        losses = {"l1": float(l1.detach()), "loss": float(generator_loss.detach())}
        if step >= int(config["adv_warmup_steps"]) and config["adv_weight"] > 0:
            fake = discriminator(shown.detach())[-1]
            real = discriminator(images)[-1]
            disc_loss = 0.5 * (adversarial(fake, target_is_real=False, for_discriminator=True)
                               + adversarial(real, target_is_real=True, for_discriminator=True))
            opt_d.zero_grad(set_to_none=True)
            disc_loss.backward()
            if not optimizer_step(opt_d, discriminator, run):
                skipped["discriminator"] += 1
            losses["disc"] = float(disc_loss.detach())
        return losses

    def at_step_end(done: int, final: bool) -> None:
        preview_due = done % int(config["preview_every"]) == 0 or final
        if done % int(config["val_every"]) == 0 or preview_due:
            metrics, preview_pair = validate_autoencoder(run, autoencoder, validation)
            card.metrics.update(metrics)
            run.reporter.validated(STAGE, done, total, metrics)
            if preview_due:
                save_preview([list(pair) for pair in preview_pair], run.folder / PREVIEW_DIR / f"autoencoder_{done:07d}.png")
        if done % int(config["checkpoint_every"]) == 0 or final:
            duration = previous_duration + time.monotonic() - began
            card.training["steps"][STAGE] = done
            card.training["duration_s"][STAGE] = round(duration, 3)
            # Card + sampling weights first: whenever a checkpoint exists, so does a card to resume it with.
            save_model(card, autoencoder, untrained_denoiser, run.folder)
            save_training_state(run.folder, {
                "stage": STAGE, "step": done, "total_steps": total, "config": config,
                "duration_s": duration, "skipped_steps": dict(skipped),
            }, modules, optimizers)

    return run_steps(run, STAGE, start, total, step_fn, at_step_end) - start


@torch.no_grad()
def validate_autoencoder(run: TrainRun, autoencoder: torch.nn.Module, validation: list[tuple[torch.Tensor, int]]
                         ) -> tuple[dict[str, float], list[tuple[np.ndarray, np.ndarray]]]:
    """Deterministic reconstruction (decode the posterior mean) of held-out cases: L1 and PSNR over [-1, 1]."""
    autoencoder.eval()
    psnr = PSNRMetric(max_val=2.0)  # per-call values only: aggregate() would all-gather across DDP ranks
    l1_values, psnr_values, previews = [], [], []
    for image, _ in validation:
        image = image.to(run.device)
        with run.autocast():
            z_mu, _ = autoencoder.encode(image)
            reconstruction = autoencoder.decode(z_mu)
        reconstruction = reconstruction.float().clamp(-1.0, 1.0)
        l1_values.append(float(F.l1_loss(reconstruction, image)))
        psnr_values.append(float(psnr(reconstruction, image).mean()))
        if len(previews) < 2:
            previews.append((image[0, 0].cpu().numpy(), reconstruction[0, 0].cpu().numpy()))
    autoencoder.train()
    metrics = {"autoencoder_val_l1": round(float(np.mean(l1_values)), 6),
               "autoencoder_val_psnr_db": round(float(np.mean(psnr_values)), 3)}
    return metrics, previews
