"""Fine-tune a model's decoder with its encoder frozen: sharper volumes, same latents.

    python scripts/finetune_decoder.py MODEL_FOLDER prep_ct prep_mri --steps 3000 --work build/decoder_ft

Why: an autoencoder trained on L1 alone averages away what it cannot encode — scanner noise, thin bone
edges — so decoded volumes are smoother than real ones, and texture statistics (radiomics, the Fréchet
distance) separate them completely however good the denoiser is. With the encoder frozen the latent space
does not move, so the denoiser trained on it stays valid and this can run beside (or after) stage 2 — the
decoder-only fine-tuning Stable Diffusion used for its "ft-MSE" VAE. Loss: L1 + a least-squares patch-GAN
term, on whole volumes: the decoder's GroupNorm statistics span the whole latent, so a decoder tuned on crops
decodes whole volumes differently (measured on the bundled v1 decoder: tuned on crops, with GAN weight 0.05, it
fell from 27.1 to 22.5 dB on whole CT volumes after 400 steps; tuned on whole volumes it rose to 28.8 dB).

Resumable: ``--work`` holds the state (weights, optimiser moments, step) as safetensors + JSON; rerunning the
same command continues. Rerun with a larger ``--steps``, it goes on from where it stopped, the learning-rate
cosine restarted towards the new total (``origin.json`` lists the totals; the card's record copies them).
``--write MODEL_FOLDER`` puts the fine-tuned decoder into a model's autoencoder weights (the encoder's tensors
must be identical to those the run started from); with ``--modality M`` it becomes M's own decoder instead (card
``modality_decoders``; the other modalities keep the shared one) — for a run tuned on M's data only:

    python scripts/finetune_decoder.py MODEL prep_mri --work build/dec_mri --steps 2000 --adv-weight 0.05 \
        --adv-start 100 --disc-input clip-st
    python scripts/finetune_decoder.py MODEL --work build/dec_mri --write MODEL --modality mri
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from safetensors.torch import load_file, save_file

from meddiff_cli.fsutil import atomic_path, atomic_write_json
from meddiff_cli.model.card import ModelCard, latent_normalization
from meddiff_cli.model.networks import downsample_factor
from meddiff_cli.model.scheduler import build_scheduler, default_steps, sample_latents
from meddiff_cli.model.store import (
    AUTOENCODER_FILE, DECODER_PREFIXES, load_model, load_state_dict, save_model, save_modality_decoder,
)
from meddiff_cli.sample.seeds import initial_noise
from meddiff_cli.train.autoencoder import discriminator_input
from meddiff_cli.train.data import load_training_data, read_case
from meddiff_cli.train.options import ADV_INPUTS


def _flat_optimizer(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    state = optimizer.state_dict()
    for name, value in tensors.items():
        head, index, key = name.split(".", 2)
        if head == prefix:
            state["state"].setdefault(int(index), {})[key] = value
    optimizer.load_state_dict(state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model folder whose autoencoder is fine-tuned")
    parser.add_argument("data", type=Path, nargs="*", help="preprocess output folders (one per modality)")
    parser.add_argument("--work", type=Path, required=True, help="state folder (created; rerun to resume)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--adv-weight", type=float, default=0.02)
    parser.add_argument("--adv-start", type=int, default=300, help="steps of L1 only before the GAN term ramps in")
    parser.add_argument("--exclude", default="", help="case indices per modality to keep out, e.g. 100-179")
    parser.add_argument("--border-weight", type=float, default=1.0,
                        help="L1 weight of the volume's edge and corner voxels (1: uniform L1)")
    parser.add_argument("--border", type=int, default=1, help="how many voxel layers from a face count as its edge")
    parser.add_argument("--disc-input", choices=ADV_INPUTS, default="raw",
                        help="what the discriminator sees: the raw decoder output, the clipped volume, or the clipped "
                             "volume with a straight-through gradient (see discriminator_input)")
    parser.add_argument("--sampled", type=int, default=0,
                        help="latents per modality generated by the model's own denoiser, decoded for the GAN term "
                             "(0: only encoded latents; see sampled_latents)")
    parser.add_argument("--sampled-per-step", type=int, default=1, help="generated latents per step's GAN batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, default=None, help="write the decoder into this model folder and exit")
    parser.add_argument("--modality", default=None,
                        help="start from this modality's own decoder where MODEL has one (else the shared one); "
                             "with --write: write the result as this modality's own decoder")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.write is not None:
        _write(work, args.write, args.modality)
        return

    if not args.data:
        parser.error("give the preprocess folders to train on")
    card, autoencoder, denoiser = load_model(args.model, modality=args.modality)
    autoencoder = autoencoder.float().train()
    factor = downsample_factor(card)
    for name, parameter in autoencoder.named_parameters():
        parameter.requires_grad_(name.startswith(DECODER_PREFIXES))
    decoder_params = [p for n, p in autoencoder.named_parameters() if n.startswith(DECODER_PREFIXES)]
    torch.manual_seed(args.seed)
    discriminator = PatchDiscriminator(spatial_dims=3, channels=16, in_channels=1, out_channels=1, num_layers_d=3)
    opt_g = torch.optim.AdamW(decoder_params, lr=args.lr, weight_decay=0.0, betas=(0.5, 0.9))
    opt_d = torch.optim.AdamW(discriminator.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.5, 0.9))
    adversarial = PatchAdversarialLoss(criterion="least_squares")

    state_file = work / "state.json"
    step, previous_s = 0, 0.0
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        step, previous_s = int(state["step"]), float(state.get("duration_s", 0.0))
        autoencoder.load_state_dict(load_file(str(work / "autoencoder.safetensors")))
        discriminator.load_state_dict(load_file(str(work / "discriminator.safetensors")))
        optim = load_file(str(work / "optimizers.safetensors"))
        _load_optimizer(opt_g, optim, "g")
        _load_optimizer(opt_d, optim, "d")
        origin = json.loads((work / "origin.json").read_text())
        totals = origin.get("totals") or [int(origin["settings"]["steps"])]
        if args.steps != totals[-1]:  # a continuation: its cosine restarts from this step towards the new total
            atomic_write_json(work / "origin.json", {**origin, "totals": [*totals, args.steps]})
    else:
        settings = {k: v for k, v in vars(args).items() if k not in ("model", "data", "work", "write", "modality")}
        atomic_write_json(work / "origin.json", {"model": str(args.model), "encoder_sha256": card.files[AUTOENCODER_FILE],
                                                 "decoder": (card.own_decoder(args.modality) if args.modality else None)
                                                 or "shared",
                                                 "settings": settings})

    excluded: set[int] = set()
    if args.exclude:
        low, _, high = args.exclude.partition("-")
        excluded = set(range(int(low), int(high or low) + 1))
    data = load_training_data(args.data, None, factor * 4, 0.0001, args.seed)
    by_class: dict[int, int] = {}
    cases = []
    for case in sorted(data.train + data.val, key=lambda c: (c.class_id, str(c.image))):
        index = by_class.get(case.class_id, 0)
        by_class[case.class_id] = index + 1
        if index not in excluded:
            cases.append(case)
    print(f"encoding {len(cases)} cases (posterior means, encoder frozen)", file=sys.stderr, flush=True)
    images, latents = [], []
    with torch.no_grad():
        for case in cases:
            image = torch.from_numpy(read_case(case))[None, None]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z_mu, _ = autoencoder.encode(image)
            images.append(image.half())
            latents.append(z_mu.float())
    generated = sampled_latents(card, denoiser, args.sampled, work) if args.sampled else None
    rng = np.random.default_rng([args.seed, step])
    voxel_weight = border_weights(tuple(images[0].shape[2:]), args.border, args.border_weight)
    began, last = time.monotonic(), 0.0
    start = step
    while step < args.steps:
        picks = rng.integers(0, len(cases), args.batch_size)
        z, x = torch.cat([latents[p] for p in picks]), torch.cat([images[p] for p in picks]).float()
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in (*opt_g.param_groups, *opt_d.param_groups):
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16):
            decoded = autoencoder.decode(z)
        decoded = decoded.float()
        l1 = ((decoded - x).abs() * voxel_weight).mean()
        if generated is not None:  # no target for these: they are judged by the discriminator alone
            chosen = rng.integers(0, len(generated), args.sampled_per_step)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                decoded_generated = autoencoder.decode(generated[torch.from_numpy(chosen)])
            decoded = torch.cat([decoded, decoded_generated.float()])
        shown = discriminator_input(decoded, args.disc_input)
        weight = args.adv_weight * min(1.0, max(0.0, (step - args.adv_start) / 200))
        loss = l1
        if weight > 0:
            discriminator.requires_grad_(False)
            loss = loss + weight * adversarial(discriminator(shown)[-1], target_is_real=True, for_discriminator=False)
            discriminator.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder_params, 1.0)
        opt_g.step()
        disc = float("nan")
        if step >= args.adv_start - 100:  # the discriminator gets a head start before the generator hears it
            d_loss = 0.5 * (adversarial(discriminator(shown.detach())[-1], target_is_real=False, for_discriminator=True)
                            + adversarial(discriminator(x)[-1], target_is_real=True, for_discriminator=True))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(discriminator.parameters(), 1.0)
            opt_d.step()
            disc = float(d_loss.detach())
        step += 1
        now = time.monotonic()
        if now - last > 30 or step == args.steps:
            last = now
            rate = (step - start) / (now - began)
            print(f"decoder step {step}/{args.steps}: l1 {float(l1.detach()):.4f} disc {disc:.4f} "
                  f"adv_w {weight:.3f} {rate:.2f} it/s", file=sys.stderr, flush=True)
        if step % 200 == 0 or step == args.steps:
            _save(work, step, previous_s + time.monotonic() - began, autoencoder, discriminator, opt_g, opt_d)


@torch.no_grad()
def sampled_latents(card: ModelCard, denoiser: torch.nn.Module, count: int, work: Path) -> torch.Tensor:
    """``count`` latents per modality from the model's own denoiser (the card's default steps, Euler, bf16
    autocast), in the autoencoder's latent space; cached in ``work`` so a resumed run decodes the same ones.

    Why: the decoder is tuned on encoded latents, but at sampling time it decodes generated ones, which sit
    slightly off the encoder's manifold; measured (docs/model.md), a GAN-tuned decoder held CT air at -1000 HU on
    encoded latents yet lifted it on generated ones. Showing the discriminator decoded generated latents too
    tunes the decoder on what it decodes in ``meddiff sample``. The noise comes from run seed 7, not the seed
    ``benchmarks/quality_default.sh`` samples with.
    """
    cache = work / "sampled_latents.safetensors"
    if cache.is_file():
        return load_file(str(cache))["latents"]
    shape = (int(card.latent["channels"]), *card.latent["shape"])
    shift, scale = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in latent_normalization(card))
    scheduler = build_scheduler(card)
    steps = default_steps(card)

    def denoise(latent: torch.Tensor, timesteps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return denoiser(latent, timesteps=timesteps, class_labels=classes).float()

    batches = []
    for class_id in range(len(card.modalities)):
        for first in range(0, count, 8):
            indices = range(class_id * count + first, class_id * count + min(count, first + 8))
            noise = torch.stack([initial_noise(7, i, shape) for i in indices])
            classes = torch.full((len(indices),), class_id, dtype=torch.int64)
            batches.append(sample_latents(denoise, scheduler, noise, classes, steps) / scale + shift)
            print(f"generated {sum(len(b) for b in batches)}/{count * len(card.modalities)} latents",
                  file=sys.stderr, flush=True)
    latents = torch.cat(batches).float().contiguous()
    with atomic_path(cache) as temp:
        save_file({"latents": latents}, str(temp))
    return latents


def border_weights(shape: tuple[int, ...], border: int, weight: float) -> torch.Tensor:
    """Per-voxel L1 weights: ``weight`` on the volume's edges and corners (voxels within ``border`` layers of two
    or three faces), 1 elsewhere, normalised to mean 1.

    Why: the decoder's zero-padded convolutions leave bright lines along the 12 edges of the volume box (mean
    error 160 HU there against 30-45 HU elsewhere, up to -300 HU where real air is -1000): 0.3 % of the voxels,
    which a uniform L1 and a patch GAN barely see, yet every sample shows them and they set the foreground
    extent features of the evaluation to the whole box. Measured (docs/model.md): 400 steps shrank the edge
    error but smoothed the rest, so the bundled model repairs its edges at inference (``repair_box_edges``).
    """
    at_face = [torch.zeros(n, dtype=torch.int64) for n in shape]
    for flags in at_face:
        flags[:border] = 1
        flags[len(flags) - border:] = 1
    faces = at_face[0].view(-1, 1, 1) + at_face[1].view(1, -1, 1) + at_face[2].view(1, 1, -1)
    weights = torch.where(faces >= 2, float(weight), 1.0)[None, None]
    return weights / weights.mean()


def _save(work: Path, step: int, duration_s: float, autoencoder: torch.nn.Module, discriminator: torch.nn.Module,
          opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer) -> None:
    for name, tensors in (("autoencoder", autoencoder.state_dict()), ("discriminator", discriminator.state_dict()),
                          ("optimizers", {**_flat_optimizer(opt_g, "g"), **_flat_optimizer(opt_d, "d")})):
        with atomic_path(work / f"{name}.safetensors") as temp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(temp))
    atomic_write_json(work / "state.json", {"step": step, "duration_s": round(duration_s, 1)})


def _write(work: Path, model: Path, modality: str | None) -> None:
    """Replace the decoder tensors of ``model``'s autoencoder with the fine-tuned ones (encoder unchanged), or
    save them as ``modality``'s own decoder."""
    card, autoencoder, denoiser = load_model(model)
    tuned = load_file(str(work / "autoencoder.safetensors"))
    current = load_state_dict(model / AUTOENCODER_FILE, card.files[AUTOENCODER_FILE])
    for key, value in current.items():
        if not key.startswith(DECODER_PREFIXES) and not torch.equal(value.float(), tuned[key].float()):
            sys.exit(f"encoder tensor {key} differs from the fine-tuning run's: its latents would not match")
    autoencoder.load_state_dict(tuned)
    state = json.loads((work / "state.json").read_text())
    steps = int(state["step"])
    if modality is not None:
        own = card.training.setdefault("modality_decoders", {})
        origin = json.loads((work / "origin.json").read_text())
        record = {"steps": steps, "duration_s": float(state.get("duration_s", 0.0)), "settings": origin.get("settings", {})}
        if "totals" in origin:
            record["totals"] = origin["totals"]
        if origin.get("decoder") == modality:  # this run went on from the origin model's own decoder: keep its record
            record["continued"] = ModelCard.load(Path(origin["model"])).training["modality_decoders"][modality]
        own[modality] = record
        save_modality_decoder(card, autoencoder.float(), modality, model)
        ModelCard.load(model)
        print(f"{model}: {modality}'s own decoder ({steps} fine-tuning steps) written", file=sys.stderr)
        return
    # A run that continued an already fine-tuned decoder adds to what the origin model's card records.
    origin = ModelCard.load(Path(json.loads((work / "origin.json").read_text())["model"]))
    before = origin.training.get("decoder_finetune") or {"steps": 0, "duration_s": 0.0}
    runs = before.get("runs") or ([int(before["steps"])] if before["steps"] else [])
    duration = float(before["duration_s"]) + float(state.get("duration_s", 0.0))
    card.training["decoder_finetune"] = {"steps": sum(runs) + steps, "duration_s": round(duration, 1),
                                         "runs": [*runs, steps]}
    save_model(card, autoencoder.float(), denoiser, model)
    ModelCard.load(model)
    print(f"{model}: decoder fine-tuned for {steps} steps written", file=sys.stderr)


if __name__ == "__main__":
    main()
