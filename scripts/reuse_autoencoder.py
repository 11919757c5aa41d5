"""Start a model from another model's trained autoencoder; its denoiser (stage 2) then trains from scratch.

    python scripts/reuse_autoencoder.py meddiff_cli/bundled/default "$MEDDIFF_HOME/models/default" \
        --preset compact --set train.diffusion_steps=6000
    meddiff train prep_ct prep_mri --name default --stage diffusion

Why: the recipe of the bundled model found the denoiser, not the autoencoder, to be the limit (a phantom
encoded and decoded keeps its spine; sampled latents did not), so a new recipe can spend its CPU hours on
stage 2. The new card takes the network settings of ``--preset`` for the denoiser and its ``train`` section
(with ``--set`` overrides) as the training config; the autoencoder's architecture must match the source's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.presets import preset_config
from meddiff_cli.model.networks import build_denoiser
from meddiff_cli.model.store import drop_modality_decoders, load_model, save_model
from meddiff_cli.train.setup import apply_overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="model folder whose autoencoder is reused")
    parser.add_argument("target", type=Path, help="new model folder, e.g. $MEDDIFF_HOME/models/default")
    parser.add_argument("--preset", default="compact", help="preset of the new denoiser and training config")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the new model (data split, noise)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help="override a train.* or denoiser.* value of the preset")
    args = parser.parse_args()
    if args.target.exists():
        sys.exit(f"{args.target} already exists: refusing to replace it")

    card, autoencoder, _ = load_model(args.source)
    preset = preset_config(args.preset)
    overrides = {}
    for item in args.settings:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    apply_overrides(preset, overrides, ("train", "denoiser"))
    if preset["autoencoder"] != card.autoencoder:
        print(f"note: the reused autoencoder keeps its own settings {card.autoencoder}", file=sys.stderr)
    source_files = dict(card.files)
    card.name = args.target.name
    card.preset = args.preset
    card.denoiser = preset["denoiser"]
    card.latent = {"channels": card.latent["channels"], "shape": card.latent["shape"], "shift": None, "scale": None}
    card.scheduler["sample_method"] = preset["train"]["timestep_sampling"]
    card.metrics = {k: v for k, v in card.metrics.items() if k.startswith("autoencoder")}
    drop_modality_decoders(card)  # not copied: the new model starts from the shared decoder
    card.files = {}
    card.training.update({
        "config": preset["train"], "seed": args.seed,
        "steps": {"autoencoder": card.training["steps"]["autoencoder"], "diffusion": 0},
        "duration_s": {"autoencoder": card.training["duration_s"]["autoencoder"], "diffusion": 0.0},
        "skipped_steps": {**card.training["skipped_steps"], "diffusion": 0},
        "autoencoder_from": {"model": ModelCard.load(args.source).name,
                             "sha256": source_files.get("autoencoder.safetensors")},
    })
    card.training.pop("bundled_weights_dtype", None)
    torch.manual_seed(args.seed + 1)
    autoencoder = autoencoder.float()
    args.target.mkdir(parents=True)
    save_model(card, autoencoder, build_denoiser(card), args.target)
    print(f"{args.target}: autoencoder from {args.source} ({card.training['steps']['autoencoder']} steps), "
          f"denoiser untrained ({args.preset})")


if __name__ == "__main__":
    main()
