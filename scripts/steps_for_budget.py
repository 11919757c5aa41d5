"""How many training steps of one stage fit in a time budget on this device: times the stage's step (forward,
backward, optimiser; the discriminator too for the autoencoder) on random inputs and prints the step count.

    python scripts/steps_for_budget.py --stage autoencoder --preset compact --size 64 --batch-size 8 --seconds 150

Why: a GPU lease is a fixed number of minutes, and the learning rate follows a cosine to zero at the last
step, so the step count must be fixed before a run starts; a run cut by the clock instead would end at a high
learning rate. ``--fraction`` leaves room for what the micro-benchmark does not see (data loading, validation,
checkpoints). The timed step mirrors ``meddiff_cli.train.autoencoder`` / ``.diffusion`` (same networks, bf16
autocast where training uses it); it prints the measured seconds per step to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator

from meddiff_cli.devices import resolve_device
from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.networks import build_autoencoder, build_denoiser, downsample_factor
from meddiff_cli.model.presets import preset_config
from meddiff_cli.train.setup import training_amp_dtype


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(stage: str, preset: str, size: int, batch_size: int, device: torch.device, repeats: int,
                     patch: int | None = None) -> float:
    config = preset_config(preset)
    card = ModelCard("budget", preset, ["ct", "mri"], {}, {}, config["autoencoder"], config["denoiser"])
    amp = training_amp_dtype(device, str(config["train"].get("mixed_precision", "auto")))
    autocast = torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None)
    if stage == "autoencoder":
        patch = (int(config["train"].get("ae_patch_size", 0)) if patch is None else patch) or size
        network = build_autoencoder(card).to(device)
        discriminator = PatchDiscriminator(spatial_dims=3, channels=int(config["train"]["disc_channels"]),
                                           in_channels=1, out_channels=1,
                                           num_layers_d=int(config["train"]["disc_layers"])).to(device)
        optimizers = [torch.optim.AdamW(network.parameters()), torch.optim.AdamW(discriminator.parameters())]
        inputs = torch.rand(batch_size, 1, patch, patch, patch, device=device) * 2 - 1

        def step() -> None:
            with autocast:
                reconstruction, _, _ = network(inputs)
            reconstruction = reconstruction.float()
            loss = F.l1_loss(reconstruction, inputs) + 0.01 * discriminator(reconstruction)[-1].float().square().mean()
            optimizers[0].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[0].step()
            disc = discriminator(reconstruction.detach())[-1].float().square().mean() + \
                (discriminator(inputs)[-1].float() - 1).square().mean()
            optimizers[1].zero_grad(set_to_none=True)
            disc.backward()
            optimizers[1].step()
            float(loss.detach())  # the trainer reads the loss every step (a device sync)
    else:
        side = size // downsample_factor(card)
        network = build_denoiser(card).to(device)
        optimizers = [torch.optim.AdamW(network.parameters())]
        channels = int(config["autoencoder"]["latent_channels"])
        latents = torch.randn(batch_size, channels, side, side, side, device=device)
        classes = torch.randint(0, 2, (batch_size,), device=device)

        def step() -> None:
            timesteps = torch.rand(batch_size, device=device) * 1000
            with autocast:
                velocity = network(latents, timesteps=timesteps, class_labels=classes)
            loss = F.mse_loss(velocity.float(), latents)
            optimizers[0].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[0].step()
            float(loss.detach())
    for _ in range(3):
        step()
    _synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    _synchronize(device)
    return (time.perf_counter() - began) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("autoencoder", "diffusion"), required=True)
    parser.add_argument("--preset", default="compact")
    parser.add_argument("--size", type=int, default=64, help="volume side (the latent side is size / 4)")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--patch-size", type=int, default=None,
                        help="autoencoder crop side (0: whole volumes; default: the preset's ae_patch_size)")
    parser.add_argument("--seconds", type=float, required=True, help="time budget of the stage")
    parser.add_argument("--fraction", type=float, default=0.8, help="share of the budget spent in timed steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = resolve_device(args.device)
    per_step = seconds_per_step(args.stage, args.preset, args.size, args.batch_size, device, args.repeats,
                                args.patch_size)
    steps = max(1, int(args.seconds * args.fraction / per_step))
    print(f"{args.stage}: {per_step * 1000:.1f} ms/step at batch {args.batch_size} on {device} -> {steps} steps "
          f"in {args.seconds:.0f} s", file=sys.stderr)
    print(steps)


if __name__ == "__main__":
    main()
