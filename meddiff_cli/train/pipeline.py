"""``meddiff train``: stage 1 KL autoencoder (L1 + KL + patch GAN), stage 2 rectified-flow latent denoiser,
optionally a label decoder on the frozen latent (:mod:`.labels`).

Design notes (the why lives in docs/model.md):

* A resumed run is bit-for-bit identical to an uninterrupted one (on CPU; cuDNN kernels are not guaranteed
  deterministic): every random draw and batch is a function of (seed, stage, step) (:mod:`.loop`, :mod:`.data`)
  and the learning rate a function of the step (:mod:`.schedules`).
* A step is applied only when the global gradient norm is finite; otherwise it is skipped and counted
  (``training.skipped_steps``), which is what keeps a discriminator blow-up from poisoning the weights.
* Rank 0 writes everything; other ranks only compute (:mod:`.distributed`).
"""

from __future__ import annotations

import time

from meddiff_cli.errors import UsageError
from meddiff_cli.train import distributed as ddp
from meddiff_cli.train.autoencoder import train_autoencoder
from meddiff_cli.train.diffusion import train_diffusion
from meddiff_cli.train.labels import train_label_decoder
from meddiff_cli.train.options import LABEL_STAGE, STAGES, Reporter, TrainOptions, TrainResult
from meddiff_cli.train.setup import prepare, stage_steps

STAGE_TRAINERS = {"autoencoder": train_autoencoder, "diffusion": train_diffusion}


def train_model(options: TrainOptions, reporter: Reporter | None = None) -> TrainResult:
    """Train the requested stage(s) of model ``options.name`` and return its card and folder.

    Raises UsageError / BadInputError / InputNotFoundError / ModelError / DeviceError for user problems.
    """
    reporter = reporter or Reporter()
    if options.stage == LABEL_STAGE:
        return train_label_decoder(options, reporter)
    began = time.monotonic()
    run = prepare(options, reporter)
    steps_run: dict[str, int] = {}
    try:
        stages = STAGES if options.stage == "all" else (options.stage,)
        if run.resumes("diffusion") and options.stage == "autoencoder":
            raise UsageError("this model's autoencoder is finished and its denoiser training has started; "
                             "resume with --stage diffusion or --stage all")
        for stage in stages:
            if stage == "autoencoder" and run.resumes("diffusion"):
                continue  # resuming stage 2: stage 1 is done
            total = stage_steps(run, stage)
            run.config[f"{stage}_steps"] = total  # the card records the total trained to, not the preset's
            steps_run[stage] = STAGE_TRAINERS[stage](run, total)
    finally:
        ddp.shutdown(run.dist)
    return TrainResult(options.name, run.folder, run.card, steps_run, round(time.monotonic() - began, 3))
