"""Before the first step: validate options, load or create the model card, read the data, pick device and ranks.

:func:`prepare` returns the :class:`TrainRun` every stage works on; nothing is written before every rank has
validated its inputs, so a bad flag or DATA folder leaves an existing model untouched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddiff_cli.devices import cpu_has_fast_bf16, describe_device, resolve_device
from meddiff_cli.errors import ModelError, UsageError
from meddiff_cli.fsutil import remove_stale_temps
from meddiff_cli.io.preview import PREVIEW_DIR
from meddiff_cli.model.card import CARD_FILE, ModelCard
from meddiff_cli.model.networks import build_autoencoder, build_denoiser, downsample_factor, required_divisor
from meddiff_cli.model.presets import PRESETS, preset_config
from meddiff_cli.model.registry import validate_name
from meddiff_cli.model.scheduler import SAMPLING_CONVENTION
from meddiff_cli.paths import models_dir
from meddiff_cli.train import distributed as ddp
from meddiff_cli.train.checkpoint import Checkpoint, load_checkpoint
from meddiff_cli.train.data import TrainingData, load_training_data, read_case
from meddiff_cli.train.options import ADV_INPUTS, STAGE_CHOICES, Reporter, TrainOptions

MAX_VAL_CASES = 32


@dataclass
class TrainRun:
    """Shared state of one ``train`` invocation."""

    options: TrainOptions
    card: ModelCard
    config: dict[str, Any]
    data: TrainingData
    folder: Path
    device: torch.device
    dist: ddp.DistInfo
    reporter: Reporter
    checkpoint: Checkpoint | None
    stop_requested: threading.Event = field(default_factory=threading.Event)

    @property
    def seed(self) -> int:
        return int(self.card.training["seed"])

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """bf16 autocast where the hardware computes bf16 natively (``mixed_precision`` auto), or as asked;
        fp32 elsewhere (fp16 would need a GradScaler)."""
        return training_amp_dtype(self.device, str(self.config.get("mixed_precision", "auto")))

    def autocast(self) -> Any:
        dtype = self.amp_dtype
        return torch.autocast(device_type=self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def resumes(self, stage: str) -> bool:
        """Whether the checkpoint being resumed is one of ``stage``."""
        return self.checkpoint is not None and self.checkpoint[0]["stage"] == stage

    def validation_volumes(self) -> list[tuple[torch.Tensor, int]]:
        """Held-out cases as [1, 1, X, Y, Z] tensors with their class id (at most MAX_VAL_CASES)."""
        return [(torch.from_numpy(read_case(case))[None, None], case.class_id) for case in self.data.val[:MAX_VAL_CASES]]


def training_amp_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """``auto``: bf16 on CUDA GPUs with bf16 and on CPUs with AMX/AVX512-BF16 (2.4-2.6x faster there);
    ``bf16``: always; ``none``: fp32."""
    if mode not in ("auto", "bf16", "none"):
        raise UsageError(f"train.mixed_precision {mode!r}: choose auto, bf16 or none")
    if mode == "none":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any], sections: tuple[str, ...]) -> None:
    """Replace ``config[section][key]`` for ``section.key`` overrides, refusing unknown keys."""
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in sections:
            continue
        if key not in config[section]:
            raise UsageError(f"unknown setting {dotted!r}; known {section} settings: {', '.join(sorted(config[section]))}")
        config[section][key] = value


def timestep_distribution(config: dict[str, Any]) -> dict[str, Any]:
    """The scheduler keywords that say how training draws timesteps, from ``train.timestep_sampling`` and
    ``train.timestep_loc``; the card's ``scheduler`` records them when a denoiser starts from step 0."""
    try:
        loc = float(config.get("timestep_loc", 0.0))
    except (TypeError, ValueError):
        loc = float("nan")
    if not np.isfinite(loc) or (loc != 0.0 and config["timestep_sampling"] != "logit-normal"):
        raise UsageError(f"train.timestep_loc {config.get('timestep_loc')!r}: a finite number, and 0 unless "
                         "train.timestep_sampling is logit-normal")
    return {"sample_method": config["timestep_sampling"], "loc": loc}


def new_card(options: TrainOptions, data: TrainingData, preset: dict[str, Any]) -> ModelCard:
    card = ModelCard(
        name=options.name, preset=options.preset, modalities=data.modalities,
        volume={"shape": data.size, "spacing": data.spacing[data.modalities[0]],
                "spacing_by_modality": data.spacing}, intensity=data.intensity,
        autoencoder=preset["autoencoder"], denoiser=preset["denoiser"], objective="rectified_flow",
        sampling=dict(SAMPLING_CONVENTION),
    )
    factor = downsample_factor(card)
    latent_shape = [side // factor for side in data.size]
    card.latent = {"channels": int(card.autoencoder["latent_channels"]), "shape": latent_shape, "shift": None, "scale": None}
    # Every RFlowScheduler keyword, so samplers rebuild it exactly with RFlowScheduler(**card.scheduler).
    # Discrete timesteps: RFlowScheduler.step() casts next_timestep to int, so with continuous timesteps
    # the Euler increments would not sum to 1 and samples would overshoot the data by up to ~0.5 %.
    card.scheduler = {
        "num_train_timesteps": 1000, "use_discrete_timesteps": True,
        **timestep_distribution(preset["train"]), "scale": 1.0,
        "use_timestep_transform": False, "transform_scale": 1.0, "steps_offset": 0,
        "base_img_size_numel": int(np.prod(latent_shape)), "spatial_dim": 3,
    }
    card.training = {"cases": data.counts(), "steps": {"autoencoder": 0, "diffusion": 0},
                     "duration_s": {"autoencoder": 0.0, "diffusion": 0.0},
                     "skipped_steps": {"autoencoder": 0, "discriminator": 0, "diffusion": 0}}
    return card


def _check_data_matches(card: ModelCard, data: TrainingData, folder: Path) -> None:
    if data.modalities != card.modalities or data.size != card.volume["shape"]:
        raise UsageError(f"DATA (modalities {data.modalities}, size {data.size}) does not match model "
                         f"{card.name!r} (modalities {card.modalities}, size {card.volume['shape']})", folder)


def prepare(options: TrainOptions, reporter: Reporter) -> TrainRun:
    """Validate everything, then create the model folder (rank 0) and return the run's shared state."""
    if options.stage not in STAGE_CHOICES:
        raise UsageError(f"--stage {options.stage!r}: choose {', '.join(STAGE_CHOICES)}")
    validate_name(options.name, "--name")
    for label, value in (("--steps", options.steps), ("--ae-steps", options.ae_steps),
                         ("--diffusion-steps", options.diffusion_steps)):
        if value is not None and value < 1:
            raise UsageError(f"{label} must be at least 1")
    device = resolve_device(options.device)  # the shared --device rules (meddiff_cli.devices)
    info = ddp.init_distributed(device)
    folder = models_dir(options.cache_dir) / options.name
    exists = (folder / CARD_FILE).is_file()
    checkpoint = None
    if options.resume or (options.stage == "diffusion" and exists):
        card = ModelCard.load(folder) if exists else None
        if card is None:
            raise ModelError(f"no model named {options.name!r} to continue", folder)
        if any(k.split(".")[0] in ("autoencoder", "denoiser") for k in options.overrides):
            raise UsageError("the architecture of an existing model cannot change; train a new --name")
        if options.resume:
            fixed = sorted(k for k in ("train.timestep_sampling", "train.timestep_loc") if k in options.overrides)
            if fixed:
                raise UsageError(f"{', '.join(fixed)} cannot change on --resume (the card's scheduler keeps the "
                                 "run's); continue a denoiser with other timesteps: scripts/continue_denoiser.py "
                                 "--timestep-loc")
            checkpoint = load_checkpoint(folder)
            config = dict(checkpoint[0]["config"])
        else:
            config = dict(card.training["config"])
        defaults = preset_config(card.preset)["train"] if card.preset in PRESETS else {}
        for dotted in options.overrides:  # a setting newer than the model can be set: its preset default comes in
            section, _, key = dotted.partition(".")
            if section == "train" and key not in config and key in defaults:
                config[key] = defaults[key]
        train_section = {"train": config}
        apply_overrides(train_section, options.overrides, ("train",))
        config = train_section["train"]
        data = load_training_data(options.data, options.modalities, required_divisor(card),
                                  config["val_fraction"], int(card.training["seed"]))
        _check_data_matches(card, data, Path(options.data[0]))
        if options.stage == "diffusion" and not options.resume:
            if card.training["steps"]["autoencoder"] < 1:
                raise ModelError(f"model {options.name!r} has no trained autoencoder; run --stage autoencoder first", folder)
            if card.training["steps"]["diffusion"] > 0:
                raise UsageError(f"model {options.name!r} already has a trained denoiser; pass --resume to "
                                 "continue it or choose another --name")
            card.training["cases"] = data.counts()  # the denoiser's data (the autoencoder's may differ)
            card.scheduler.update(timestep_distribution(config))  # the denoiser's own settings, not stage 1's
    else:
        if options.stage == "diffusion":
            raise ModelError(f"no model named {options.name!r}: train its autoencoder first (--stage autoencoder or all)", folder)
        if exists:
            raise UsageError(f"model {options.name!r} already exists in {folder}; pass --resume to continue "
                             "training it or choose another --name")
        preset = preset_config(options.preset)
        apply_overrides(preset, options.overrides, ("train", "autoencoder", "denoiser"))
        probe = ModelCard(options.name, options.preset, ["ct"], {}, {}, preset["autoencoder"], preset["denoiser"])
        try:  # overridden network settings must still build
            build_autoencoder(probe), build_denoiser(probe), required_divisor(probe)
        except (TypeError, ValueError, KeyError, IndexError, AssertionError) as error:
            raise UsageError(f"invalid network settings for preset {options.preset!r}: {error}") from None
        data = load_training_data(options.data, options.modalities, required_divisor(probe),
                                  preset["train"]["val_fraction"], options.seed)
        card = new_card(options, data, preset)
        config = preset["train"]
        card.training["seed"] = options.seed
    if str(config.get("adv_input", "raw")) not in ADV_INPUTS:
        raise UsageError(f"train.adv_input {config['adv_input']!r}: choose {', '.join(ADV_INPUTS)}")
    for key in ("batch_size", "val_every", "preview_every", "checkpoint_every"):
        if int(config[key]) < 1:
            raise UsageError(f"{key.replace('_', '-')} must be at least 1")
    card.training.update({
        "config": config, "batch_size": config["batch_size"], "lr": config["lr"], "world_size": info.world_size,
        "global_batch_size": config["batch_size"] * info.world_size, "device_type": device.type,
        "mixed_precision": "bf16" if training_amp_dtype(device, str(config.get("mixed_precision", "auto"))) else "none",
    })
    ddp.barrier(info)  # every rank has validated the inputs before rank 0 writes anything
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)
        remove_stale_temps(folder / PREVIEW_DIR)
    ranks = f" x {info.world_size} ranks" if info.world_size > 1 else ""
    reporter.message(f"running on {describe_device(device)}{ranks}")  # after the data checks: errors stay one line
    return TrainRun(options, card, config, data, folder, device, info, reporter, checkpoint)


def stage_steps(run: TrainRun, stage: str) -> int:
    """Steps of ``stage``: explicit flags, else the checkpoint's total when resuming it, else the config's."""
    options = run.options
    explicit = options.ae_steps if stage == "autoencoder" else options.diffusion_steps
    if explicit is None and options.steps is not None and (options.stage == stage or
                                                            (options.stage == "all" and stage == "diffusion")):
        explicit = options.steps
    if explicit is not None:
        return explicit
    if run.resumes(stage):
        return int(run.checkpoint[0]["total_steps"])
    return int(run.config[f"{stage}_steps"])

