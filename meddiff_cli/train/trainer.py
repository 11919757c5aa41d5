"""``meddiff train``: stage 1 KL autoencoder (L1 + KL + patch GAN), stage 2 rectified-flow latent denoiser.

Design notes (the why lives in docs/model.md):

* Every random draw of step ``s`` comes from ``torch.manual_seed(step_seed(seed, stage, s, rank))`` and
  the batch of step ``s`` from :class:`StepBatchSampler` — so the checkpoint needs no RNG state beyond
  ``seed`` and ``step``, and a resumed run is bit-for-bit identical to an uninterrupted one (on CPU; cuDNN
  kernels are not guaranteed deterministic).
* A step is applied only when the global gradient norm is finite; otherwise it is skipped and counted
  (``training.skipped_steps``), which is what keeps a discriminator blow-up from poisoning the weights.
* Rank 0 writes everything; other ranks only compute.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.metrics import PSNRMetric
from monai.networks.nets import PatchDiscriminator
from monai.networks.schedulers import RFlowScheduler
from torch.optim import AdamW
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from meddiff_cli.cache import models_dir
from meddiff_cli.devices import cpu_has_fast_bf16, describe_device, resolve_device
from meddiff_cli.errors import MeddiffError, ModelError, UsageError
from meddiff_cli.fsutil import remove_stale_temps
from meddiff_cli.model.card import CARD_FILE, ModelCard, latent_normalization, preset_config
from meddiff_cli.model.networks import (
    DecoderForExport, build_autoencoder, build_denoiser, downsample_factor, required_divisor,
)
from meddiff_cli.model.store import AUTOENCODER_FILE, load_state_dict, save_model
from meddiff_cli.signals import ignore_interrupts_in_worker
from meddiff_cli.train import distributed as ddp
from meddiff_cli.train.checkpoint import (
    flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer,
)
from meddiff_cli.train.data import StepBatchSampler, TrainingData, VolumeDataset, load_training_data, read_case, step_seed
from meddiff_cli.train.previews import PREVIEW_DIR, save_preview

STAGES = ("autoencoder", "diffusion")
STAGE_CODES = {"autoencoder": 1, "diffusion": 2}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_VAL_CASES = 32
MAX_SCALE_CASES = 64
VAL_TIMEPOINTS = (0.125, 0.375, 0.625, 0.875)

# How samplers must use the denoiser (stored in the card; checked against MONAI's RFlowScheduler source:
# add_noise mixes (1 - t/T) * x0 + (t/T) * noise and step() moves x + v * (t - t_next) / T towards t = 0).
SAMPLING_CONVENTION: dict[str, Any] = {
    "prediction": "velocity",
    "velocity": "x0 - noise",
    "interpolation": "x_t = (1 - t/T) * x0 + (t/T) * noise, T = scheduler.num_train_timesteps",
    "time": "t runs from T (pure noise) down to 0 (data); Euler step x <- x + v * (t - t_next) / T "
            "(RFlowScheduler.set_timesteps + step)",
    "class_labels": "index of the modality in `modalities`",
    "latent_scaling": "volume = clip(autoencoder.decode(latent / latent.scale + latent.shift), -1, 1), per channel",
    "output_clip": [-1.0, 1.0],
    "default_steps": 30,
}


@dataclass
class TrainOptions:
    """What ``meddiff train`` was asked to do. ``overrides`` maps ``section.key`` (sections ``train``,
    ``autoencoder``, ``denoiser``) to values that replace the preset's."""

    data: list[Path]
    name: str
    modalities: list[str] | None = None
    preset: str = "tiny"
    stage: str = "all"
    steps: int | None = None
    ae_steps: int | None = None
    diffusion_steps: int | None = None
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    device: str = "auto"
    workers: int = 0
    cache_dir: Path | None = None


@dataclass
class TrainResult:
    name: str
    folder: Path
    card: ModelCard
    steps_run: dict[str, int]
    duration_s: float


class Reporter:
    """Progress hooks (no-ops here; the CLI shows a rich progress bar). Raising KeyboardInterrupt from
    :meth:`step_done` stops training at a clean step boundary, exactly like Ctrl-C."""

    def stage_started(self, stage: str, start_step: int, total_steps: int) -> None: ...

    def step_done(self, stage: str, step: int, total_steps: int, losses: dict[str, float]) -> None: ...

    def validated(self, stage: str, step: int, total_steps: int, metrics: dict[str, float]) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class _Run:
    """Shared state of one ``train`` invocation."""

    options: TrainOptions
    card: ModelCard
    config: dict[str, Any]
    data: TrainingData
    folder: Path
    device: torch.device
    dist: ddp.DistInfo
    reporter: Reporter
    checkpoint: tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]] | None
    stop_requested: threading.Event = field(default_factory=threading.Event)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """bf16 autocast where the hardware computes bf16 natively (``mixed_precision`` auto), or as asked;
        fp32 elsewhere (fp16 would need a GradScaler)."""
        return training_amp_dtype(self.device, str(self.config.get("mixed_precision", "auto")))

    def autocast(self) -> Any:
        dtype = self.amp_dtype
        return torch.autocast(device_type=self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


# --------------------------------------------------------------------------------------------- setup

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


def _new_card(options: TrainOptions, data: TrainingData, preset: dict[str, Any]) -> ModelCard:
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
        "sample_method": preset["train"]["timestep_sampling"], "loc": 0.0, "scale": 1.0,
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


def _prepare(options: TrainOptions, reporter: Reporter) -> _Run:
    if options.stage not in (*STAGES, "all"):
        raise UsageError(f"--stage {options.stage!r}: choose autoencoder, diffusion or all")
    if not NAME_PATTERN.match(options.name):
        raise UsageError(f"--name {options.name!r}: use letters, digits, '.', '_' or '-' (no paths)")
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
            checkpoint = load_checkpoint(folder)
            config = dict(checkpoint[0]["config"])
        else:
            config = dict(card.training["config"])
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
        card = _new_card(options, data, preset)
        config = preset["train"]
        card.training["seed"] = options.seed
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
    return _Run(options, card, config, data, folder, device, info, reporter, checkpoint)


def _stage_steps(run: _Run, stage: str) -> int:
    options = run.options
    explicit = options.ae_steps if stage == "autoencoder" else options.diffusion_steps
    if explicit is None and options.steps is not None and (options.stage == stage or
                                                            (options.stage == "all" and stage == "diffusion")):
        explicit = options.steps
    if explicit is not None:
        return explicit
    if run.checkpoint is not None and run.checkpoint[0]["stage"] == stage:
        return int(run.checkpoint[0]["total_steps"])
    return int(run.config[f"{stage}_steps"])


# ------------------------------------------------------------------------------------------ helpers

def warmup_cosine(warmup: int, total: int) -> Any:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def adversarial_weight(step: int, config: dict[str, Any]) -> float:
    """0 before ``adv_warmup_steps``, then a linear ramp to ``adv_weight`` over ``adv_ramp_steps``.

    Switching a fresh discriminator on at full weight is what produced NaNs in the seed project: its
    first gradients are large and noisy, so the generator sees them gradually."""
    start = int(config["adv_warmup_steps"])
    if step < start or config["adv_weight"] <= 0:
        return 0.0
    ramp = max(1, int(config["adv_ramp_steps"]))
    return float(config["adv_weight"]) * min(1.0, (step - start + 1) / ramp)


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent voxels, averaged over the batch (as in MONAI's tutorials)."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


class EmaWithWarmup:
    """EMA with decay ``min(decay, (1 + n) / (10 + n))``: tracks the weights closely early on, so short runs
    still sample from a sensible average. Used as ``AveragedModel(multi_avg_fn=…)``."""

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - decay)


def _optimizer_step(optimizer: torch.optim.Optimizer, module: torch.nn.Module, run: _Run) -> bool:
    """Average gradients across ranks, clip, and step only if the gradient norm is finite."""
    ddp.average_gradients(module, run.dist)
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), float(run.config["grad_clip"]))
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


def _make_optimizer(module: torch.nn.Module, config: dict[str, Any]) -> AdamW:
    return AdamW(module.parameters(), lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))


def _set_lr(optimizers: list[torch.optim.Optimizer], config: dict[str, Any], step: int, total: int) -> None:
    """The LR is a pure function of the step, so resuming needs only the step (no scheduler state)."""
    lr = float(config["lr"]) * warmup_cosine(int(config["warmup_steps"]), total)(step)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


def _loader(run: _Run, stage: str, start: int, total: int) -> DataLoader:
    patch = int(run.config.get("ae_patch_size", 0)) if stage == "autoencoder" else 0
    dataset = VolumeDataset(run.data.train, float(run.config["intensity_jitter"]), bool(run.config["flip_lr"]), patch)
    sampler = StepBatchSampler(len(run.data.train), int(run.config["batch_size"]), int(run.card.training["seed"]),
                               STAGE_CODES[stage], start, total, run.dist.rank, run.dist.world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=run.options.workers,
                      pin_memory=run.device.type == "cuda", worker_init_fn=_worker_ignores_interrupts)


def _worker_ignores_interrupts(_: int) -> None:
    """Ctrl-C / SIGTERM reach the whole process group; only the main process reacts (it finishes the step,
    writes a checkpoint, then shuts the workers down). A worker dying first would turn that into a crash."""
    ignore_interrupts_in_worker()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def _workers_shut_down(batches: Any) -> Iterator[None]:
    """Stop DataLoader workers however the loop ends. They ignore SIGTERM (see above), so a worker left
    alive by an exception (whose traceback keeps the iterator referenced) would hang interpreter exit."""
    try:
        yield
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _validation_volumes(run: _Run) -> list[tuple[torch.Tensor, int]]:
    return [(torch.from_numpy(read_case(case))[None, None], case.class_id) for case in run.data.val[:MAX_VAL_CASES]]


@contextmanager
def _sigint_stops(run: _Run) -> Iterator[None]:
    """Ctrl-C asks for a stop at the next step boundary (then a checkpoint is written) instead of tearing a step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if run.stop_requested.is_set():  # second Ctrl-C: give up immediately
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        run.stop_requested.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _clean_worker_errors() -> Iterator[None]:
    """DataLoader workers re-raise our errors with the worker traceback as the message: keep its last line."""
    try:
        yield
    except MeddiffError as error:
        if error.path is None and error.message.startswith("Caught ") and "DataLoader worker" in error.message:
            last = error.message.strip().splitlines()[-1]
            raise type(error)(last.split(": ", 1)[-1]) from None
        raise


def _should_stop(run: _Run) -> bool:
    flag = 1.0 if run.stop_requested.is_set() else 0.0
    if run.dist.active:
        tensor = torch.tensor([flag], device=run.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        flag = float(tensor.item())
    return flag > 0


def _cached_batches(run: _Run, latents: torch.Tensor, start: int, total: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of pre-encoded training latents in the same step-addressed order as the image loader."""
    class_ids = torch.tensor([case.class_id for case in run.data.train])
    sampler = StepBatchSampler(len(run.data.train), int(run.config["batch_size"]), int(run.card.training["seed"]),
                               STAGE_CODES["diffusion"], start, total, run.dist.rank, run.dist.world_size)
    for batch in sampler:
        index = torch.tensor([case for case, _ in batch])
        yield latents[index], class_ids[index]


def _loop(run: _Run, stage: str, start: int, total: int, step_fn: Any, at_step_end: Any,
          batch_source: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None) -> int:
    """Run steps ``start..total-1``; ``at_step_end(step_done_count, final)`` handles validation/checkpoints.
    Batches come from ``batch_source`` if given, else from the image DataLoader.

    Returns the number of completed steps. KeyboardInterrupt (Ctrl-C or a reporter) → checkpoint, re-raise."""
    if run.dist.is_main:
        run.reporter.stage_started(stage, start, total)
    done = start
    batches = batch_source if batch_source is not None else iter(_loader(run, stage, start, total))
    with _sigint_stops(run), _clean_worker_errors(), _workers_shut_down(batches):
        for step, (images, class_ids) in zip(range(start, total), batches):
            torch.manual_seed(step_seed(int(run.card.training["seed"]), STAGE_CODES[stage], step, run.dist.rank))
            losses = step_fn(step, images.to(run.device, non_blocking=True), class_ids.to(run.device))
            done = step + 1
            try:
                if run.dist.is_main:
                    run.reporter.step_done(stage, done, total, losses)
            except KeyboardInterrupt:
                run.stop_requested.set()
            interrupted = _should_stop(run)
            at_step_end(done, done == total or interrupted)
            if interrupted:
                raise KeyboardInterrupt
    return done


# ------------------------------------------------------------------------------- stage 1: autoencoder

def _train_autoencoder(run: _Run, total: int) -> int:
    config, card, device = run.config, run.card, run.device
    torch.manual_seed(int(card.training["seed"]))  # identical initial weights on every rank and every run
    autoencoder = build_autoencoder(card).to(device)
    discriminator = PatchDiscriminator(spatial_dims=3, channels=int(config["disc_channels"]), in_channels=1,
                                       out_channels=1, num_layers_d=int(config["disc_layers"])).to(device)
    opt_g, opt_d = _make_optimizer(autoencoder, config), _make_optimizer(discriminator, config)
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    skipped = card.training["skipped_steps"]
    start, previous_duration = 0, float(card.training["duration_s"]["autoencoder"])
    if run.checkpoint is not None and run.checkpoint[0]["stage"] == "autoencoder":
        state, groups = run.checkpoint
        autoencoder.load_state_dict(groups["autoencoder"])
        discriminator.load_state_dict(groups["discriminator"])
        opt_g.load_state_dict(unflatten_optimizer(groups["optimizer_g"], state["optimizers"]["g"]))
        opt_d.load_state_dict(unflatten_optimizer(groups["optimizer_d"], state["optimizers"]["d"]))
        start, previous_duration = int(state["step"]), float(state["duration_s"])
        skipped.update(state["skipped_steps"])
    if start >= total:
        run.reporter.message(f"autoencoder already trained for {start} steps")
        return 0
    validation = _validation_volumes(run) if run.dist.is_main else []
    untrained_denoiser = build_denoiser(card)  # keeps the model folder loadable before stage 2 runs
    began = time.monotonic()

    def step_fn(step: int, images: torch.Tensor, _: torch.Tensor) -> dict[str, float]:
        _set_lr([opt_g, opt_d], config, step, total)
        with run.autocast():
            reconstruction, z_mu, z_sigma = autoencoder(images)
        reconstruction, z_mu, z_sigma = reconstruction.float(), z_mu.float(), z_sigma.float()
        l1 = F.l1_loss(reconstruction, images)
        generator_loss = l1 + float(config["kl_weight"]) * kl_divergence(z_mu, z_sigma)
        weight = adversarial_weight(step, config)
        if weight > 0:  # the discriminator runs in fp32, outside autocast, and is frozen for this pass
            discriminator.requires_grad_(False)
            generator_loss = generator_loss + weight * adversarial(
                discriminator(reconstruction)[-1], target_is_real=True, for_discriminator=False)
            discriminator.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        generator_loss.backward()
        if not _optimizer_step(opt_g, autoencoder, run):
            skipped["autoencoder"] += 1
        losses = {"l1": float(l1.detach()), "loss": float(generator_loss.detach())}
        if step >= int(config["adv_warmup_steps"]) and config["adv_weight"] > 0:
            fake = discriminator(reconstruction.detach())[-1]
            real = discriminator(images)[-1]
            disc_loss = 0.5 * (adversarial(fake, target_is_real=False, for_discriminator=True)
                               + adversarial(real, target_is_real=True, for_discriminator=True))
            opt_d.zero_grad(set_to_none=True)
            disc_loss.backward()
            if not _optimizer_step(opt_d, discriminator, run):
                skipped["discriminator"] += 1
            losses["disc"] = float(disc_loss.detach())
        return losses

    def at_step_end(done: int, final: bool) -> None:
        if not run.dist.is_main:
            ddp.barrier(run.dist)
            return
        preview_due = done % int(config["preview_every"]) == 0 or final
        if done % int(config["val_every"]) == 0 or preview_due:
            metrics, preview_pair = _validate_autoencoder(run, autoencoder, validation)
            card.metrics.update(metrics)
            run.reporter.validated("autoencoder", done, total, metrics)
            if preview_due:
                save_preview([list(pair) for pair in preview_pair], run.folder / PREVIEW_DIR / f"autoencoder_{done:07d}.png")
        if done % int(config["checkpoint_every"]) == 0 or final:
            duration = previous_duration + time.monotonic() - began
            card.training["steps"]["autoencoder"] = done
            card.training["duration_s"]["autoencoder"] = round(duration, 3)
            # Card + sampling weights first: whenever a checkpoint exists, so does a card to resume it with.
            save_model(card, autoencoder, untrained_denoiser, run.folder)
            tensors_g, meta_g = flatten_optimizer(opt_g.state_dict())
            tensors_d, meta_d = flatten_optimizer(opt_d.state_dict())
            save_checkpoint(run.folder, {
                "stage": "autoencoder", "step": done, "total_steps": total, "config": config,
                "duration_s": duration, "skipped_steps": dict(skipped),
                "optimizers": {"g": meta_g, "d": meta_d},
            }, {"autoencoder": autoencoder.state_dict(), "discriminator": discriminator.state_dict(),
                "optimizer_g": tensors_g, "optimizer_d": tensors_d})
        ddp.barrier(run.dist)

    done = _loop(run, "autoencoder", start, total, step_fn, at_step_end)
    return done - start


@torch.no_grad()
def _validate_autoencoder(run: _Run, autoencoder: torch.nn.Module, validation: list[tuple[torch.Tensor, int]]
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


# --------------------------------------------------------------------------------- stage 2: diffusion

def _frozen_autoencoder(run: _Run) -> torch.nn.Module:
    run.card.files.update(ModelCard.load(run.folder).files)  # other ranks never wrote it: learn its sha256
    autoencoder = build_autoencoder(run.card)
    autoencoder.load_state_dict(load_state_dict(run.folder / AUTOENCODER_FILE, run.card.files.get(AUTOENCODER_FILE)))
    return autoencoder.to(run.device).eval().requires_grad_(False)


@torch.no_grad()
def _encode(run: _Run, autoencoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Posterior mean (deterministic; with kl_weight ~1e-6 the posterior sigma is tiny anyway)."""
    with run.autocast():
        z_mu, _ = autoencoder.encode(images)
    return z_mu.float()


def _latent_statistics(run: _Run, latents: torch.Tensor) -> tuple[list[float], list[float]]:
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


def _encode_cases(run: _Run, autoencoder: torch.nn.Module, cases: list[Any]) -> torch.Tensor:
    """Posterior means of whole cases, [N, C, ...] on the CPU."""
    return torch.cat([_encode(run, autoencoder, torch.from_numpy(read_case(case))[None, None].to(run.device)).cpu()
                      for case in cases])


@torch.no_grad()
def euler_sample(denoiser: torch.nn.Module, scheduler_kwargs: dict[str, Any], noise: torch.Tensor,
                 class_ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate the learned velocity from t = T (noise) to t = 0 with MONAI's RFlowScheduler Euler steps."""
    scheduler = RFlowScheduler(**scheduler_kwargs)
    scheduler.set_timesteps(num_inference_steps=steps, device=noise.device)
    timesteps = scheduler.timesteps
    latent = noise
    for index, t in enumerate(timesteps):
        next_t = timesteps[index + 1] if index + 1 < len(timesteps) else torch.zeros_like(t)
        velocity = denoiser(latent, timesteps=t.expand(latent.shape[0]).float(), class_labels=class_ids)
        latent, _ = scheduler.step(velocity.float(), t, latent, next_t)
    return latent


def _train_diffusion(run: _Run, total: int) -> int:
    config, card, device = run.config, run.card, run.device
    autoencoder = _frozen_autoencoder(run)
    use_cache = bool(config.get("latent_cache", False)) and not bool(config["flip_lr"])
    cached = _encode_cases(run, autoencoder, run.data.train) if use_cache else None
    if card.latent.get("scale") is None and card.latent.get("scale_factor") is None:
        sample = cached if cached is not None else _encode_cases(run, autoencoder, run.data.train[:MAX_SCALE_CASES])
        shift, scale_values = _latent_statistics(run, sample) if run.dist.is_main else ([0.0], [0.0])
        channels = int(card.latent["channels"])
        card.latent["shift"] = [ddp.broadcast_from_main(shift[c] if run.dist.is_main else 0.0, run.dist, device)
                                for c in range(channels)]
        card.latent["scale"] = [ddp.broadcast_from_main(scale_values[c] if run.dist.is_main else 0.0, run.dist, device)
                                for c in range(channels)]
    shift_list, scale_list = latent_normalization(card)
    shift = torch.tensor(shift_list, device=device).view(1, -1, 1, 1, 1)
    scale = torch.tensor(scale_list, device=device).view(1, -1, 1, 1, 1)
    if cached is not None:
        cached = (cached - shift.cpu()) * scale.cpu()
    torch.manual_seed(int(card.training["seed"]) + 1)
    denoiser = build_denoiser(card).to(device)
    ema = AveragedModel(denoiser, multi_avg_fn=EmaWithWarmup(float(config["ema_decay"])), use_buffers=True)
    optimizer = _make_optimizer(denoiser, config)
    scheduler = RFlowScheduler(**card.scheduler)
    skipped = card.training["skipped_steps"]
    start, previous_duration = 0, float(card.training["duration_s"]["diffusion"])
    if run.checkpoint is not None and run.checkpoint[0]["stage"] == "diffusion":
        state, groups = run.checkpoint
        denoiser.load_state_dict(groups["denoiser"])
        ema.load_state_dict(groups["ema"])
        optimizer.load_state_dict(unflatten_optimizer(groups["optimizer"], state["optimizers"]["denoiser"]))
        start, previous_duration = int(state["step"]), float(state["duration_s"])
        skipped.update(state["skipped_steps"])
    if start >= total:
        run.reporter.message(f"denoiser already trained for {start} steps")
        return 0
    validation = ([((_encode(run, autoencoder, image.to(device)) - shift) * scale, class_id)
                   for image, class_id in _validation_volumes(run)] if run.dist.is_main else [])
    began = time.monotonic()

    def step_fn(step: int, batch: torch.Tensor, class_ids: torch.Tensor) -> dict[str, float]:
        _set_lr([optimizer], config, step, total)
        latents = batch if cached is not None else (_encode(run, autoencoder, batch) - shift) * scale
        noise = torch.randn_like(latents)
        timesteps = scheduler.sample_timesteps(latents)
        noisy = scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)
        with run.autocast():
            velocity = denoiser(noisy, timesteps=timesteps, class_labels=class_ids)
        loss = F.mse_loss(velocity.float(), latents - noise)  # MONAI RFlow convention: v = x0 - noise
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if _optimizer_step(optimizer, denoiser, run):
            ema.update_parameters(denoiser)
        else:
            skipped["diffusion"] += 1
        return {"loss": float(loss.detach())}

    def at_step_end(done: int, final: bool) -> None:
        if not run.dist.is_main:
            ddp.barrier(run.dist)
            return
        if done % int(config["val_every"]) == 0 or final:
            card.metrics["diffusion_val_loss"] = round(_validate_diffusion(run, ema.module, scheduler, validation), 6)
            run.reporter.validated("diffusion", done, total, {"diffusion_val_loss": card.metrics["diffusion_val_loss"]})
        if done % int(config["preview_every"]) == 0 or final:
            _preview_samples(run, ema.module, autoencoder, run.folder / PREVIEW_DIR / f"diffusion_{done:07d}.png")
        if done % int(config["checkpoint_every"]) == 0 or final:
            duration = previous_duration + time.monotonic() - began
            card.training["steps"]["diffusion"] = done
            card.training["duration_s"]["diffusion"] = round(duration, 3)
            save_model(card, autoencoder, ema.module, run.folder)  # EMA weights are the ones samplers use
            tensors, meta = flatten_optimizer(optimizer.state_dict())
            save_checkpoint(run.folder, {
                "stage": "diffusion", "step": done, "total_steps": total, "config": config,
                "duration_s": duration, "skipped_steps": dict(skipped),
                "optimizers": {"denoiser": meta},
            }, {"denoiser": denoiser.state_dict(), "ema": ema.state_dict(), "optimizer": tensors})
        ddp.barrier(run.dist)

    source = _cached_batches(run, cached, start, total) if cached is not None else None
    done = _loop(run, "diffusion", start, total, step_fn, at_step_end, source)
    return done - start


@torch.no_grad()
def _validate_diffusion(run: _Run, denoiser: torch.nn.Module, scheduler: RFlowScheduler,
                        validation: list[tuple[torch.Tensor, int]]) -> float:
    """Velocity MSE of the EMA denoiser on held-out latents at fixed timepoints and fixed noise."""
    generator = torch.Generator().manual_seed(int(run.card.training["seed"]))
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


def _preview_samples(run: _Run, denoiser: torch.nn.Module, autoencoder: torch.nn.Module, path: Path) -> None:
    """One decoded sample per modality (few Euler steps, fixed noise) — a quick visual check, not a metric."""
    generator = torch.Generator().manual_seed(int(run.card.training["seed"]))
    shape = (len(run.card.modalities), run.card.latent["channels"], *run.card.latent["shape"])
    noise = torch.randn(shape, generator=generator).to(run.device)
    class_ids = torch.arange(len(run.card.modalities), device=run.device)
    denoiser.eval()
    with run.autocast():
        latents = euler_sample(denoiser, run.card.scheduler, noise, class_ids, int(run.config["preview_sampling_steps"]))
        volumes = DecoderForExport(autoencoder, *latent_normalization(run.card)).to(run.device)(latents)
    denoiser.train()
    volumes = volumes.float().cpu().numpy()
    save_preview([[volume[0]] for volume in volumes], path)


# -------------------------------------------------------------------------------------------- driver

def train_model(options: TrainOptions, reporter: Reporter | None = None) -> TrainResult:
    """Train the requested stage(s) of model ``options.name`` and return its card and folder.

    Raises UsageError / BadInputError / InputNotFoundError / ModelError / DeviceError for user problems.
    """
    reporter = reporter or Reporter()
    began = time.monotonic()
    run = _prepare(options, reporter)
    steps_run: dict[str, int] = {}
    try:
        stages = STAGES if options.stage == "all" else (options.stage,)
        if run.checkpoint is not None and run.checkpoint[0]["stage"] == "diffusion" and options.stage == "autoencoder":
            raise UsageError("this model's autoencoder is finished and its denoiser training has started; "
                             "resume with --stage diffusion or --stage all")
        for stage in stages:
            if stage == "autoencoder" and run.checkpoint is not None and run.checkpoint[0]["stage"] == "diffusion":
                continue  # resuming stage 2: stage 1 is done
            total = _stage_steps(run, stage)
            steps_run[stage] = (_train_autoencoder if stage == "autoencoder" else _train_diffusion)(run, total)
    finally:
        ddp.shutdown(run.dist)
    return TrainResult(options.name, run.folder, run.card, steps_run, round(time.monotonic() - began, 3))
