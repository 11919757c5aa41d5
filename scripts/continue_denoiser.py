"""Continue a committed (e.g. bundled) model's denoiser training although its training checkpoint is gone.

    python scripts/continue_denoiser.py meddiff_cli/bundled/default "$MEDDIFF_HOME/models/default" --total 7000
    meddiff train prep_ct prep_mri --name default --stage diffusion --resume --diffusion-steps 7000

Why: a bundled model carries only its sampling weights (the EMA denoiser, fp16), not the online weights or the
optimiser moments, so a later session cannot ``meddiff train --resume`` it. This writes the model into TARGET with
a stage-2 checkpoint at the card's step, rebuilt from what is there: the EMA weights as both the online and the
averaged weights (the EMA keeps its decay: its count is the card's step), fresh AdamW moments (Adam's bias
correction makes the first updates about one learning rate in size, and the learning rate at that point of the
cosine is already small), the card's training config. ``meddiff train --resume`` then runs the learning-rate
cosine on from that step to ``--total`` as if the run had not stopped; the data split comes from the card's seed.
The modalities' own decoders and the intensity calibration stay: they belong to the autoencoder, which stage 2
does not change.

``--timestep-loc`` moves the centre of the logit-normal training-timestep distribution for the continued steps
(the card's ``scheduler.loc``; 0 is the median t = 0.5, 0.5 puts it at t = 0.62, towards noise, where the global
layout is decided). It changes training only: sampling timesteps do not depend on it. Every continuation, with
the loc it trained with, is appended to the card's ``training.continuations``, so the card says which steps used
which distribution.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.store import DENOISER_FILE, decoder_file, load_model, save_model
from meddiff_cli.model.labels import LABEL_DECODER_FILE
from meddiff_cli.train.checkpoint import save_training_state
from meddiff_cli.train.diffusion import STAGE
from meddiff_cli.train.loop import make_optimizer
from meddiff_cli.train.schedules import EmaWithWarmup


def earlier_continuations(training: dict) -> list[dict]:
    """The source's own continuations (cards before ``continuations`` kept only the last, as ``continued_from``)."""
    if "continued_from" in training:
        return [training.pop("continued_from")]
    return list(training.get("continuations", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="model folder with a trained denoiser, e.g. meddiff_cli/bundled/default")
    parser.add_argument("target", type=Path, help="new model folder, e.g. $MEDDIFF_HOME/models/default")
    parser.add_argument("--total", type=int, required=True, help="the continued run's last step (its cosine ends there)")
    parser.add_argument("--timestep-loc", type=float, default=None,
                        help="logit-normal location of the training timesteps from here on (default: the card's)")
    args = parser.parse_args()
    if args.target.exists():
        sys.exit(f"{args.target} already exists: refusing to replace it")
    card, autoencoder, denoiser = load_model(args.source)
    step = int(card.training["steps"][STAGE])
    if step < 1:
        sys.exit(f"{args.source}: its denoiser is untrained; train it with meddiff train --stage diffusion")
    if args.total <= step:
        sys.exit(f"--total {args.total} must exceed the denoiser's {step} steps")
    config = {**card.training["config"], "diffusion_steps": args.total}
    source_name, source_files = card.name, dict(card.files)
    card.name = args.target.name
    card.training["config"] = config
    card.training.pop("bundled_weights_dtype", None)
    if args.timestep_loc is not None:
        if card.scheduler.get("sample_method") != "logit-normal":
            sys.exit(f"--timestep-loc: {args.source} samples training timesteps "
                     f"{card.scheduler.get('sample_method')!r}, not logit-normal")
        card.scheduler["loc"] = config["timestep_loc"] = args.timestep_loc
    card.training["continuations"] = [*earlier_continuations(card.training), {
        "model": source_name, "step": step, "total": args.total,
        "denoiser_sha256": source_files[DENOISER_FILE], "timestep_loc": float(card.scheduler["loc"])}]
    denoiser = denoiser.float().train()
    ema = AveragedModel(denoiser, multi_avg_fn=EmaWithWarmup(float(config["ema_decay"])), use_buffers=True)
    ema.n_averaged.fill_(step)
    args.target.mkdir(parents=True)
    for name in (LABEL_DECODER_FILE, *map(decoder_file, card.modality_decoders)):
        if name in card.files:
            shutil.copy2(args.source / name, args.target / name)
    save_model(card, autoencoder.float(), ema.module, args.target)
    save_training_state(args.target, {
        "stage": STAGE, "step": step, "total_steps": args.total, "config": config,
        "duration_s": float(card.training["duration_s"][STAGE]), "skipped_steps": dict(card.training["skipped_steps"]),
    }, {"denoiser": denoiser, "ema": ema}, {"optimizer": ("denoiser", make_optimizer(denoiser, config))})
    ModelCard.load(args.target)
    print(f"{args.target}: denoiser at step {step} of {args.total}, from {args.source}; continue with "
          f"meddiff train DATA... --name {args.target.name} --stage diffusion --resume --diffusion-steps {args.total}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
