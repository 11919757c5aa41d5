"""``meddiff train``: thin CLI over :func:`meddiff_cli.train.train_model`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from meddiff_cli.cli.common import (
    VERBOSE_OPTION, choice, complete_device, default, duration_text, info, print_json, progress_bar, show_settings,
)
from meddiff_cli.errors import UsageError
from meddiff_cli.modality import ALIASES, MODALITIES
from meddiff_cli.model.presets import PRESETS
from meddiff_cli.paths import torchrun_launch
from meddiff_cli.train.options import STAGE_CHOICES, Reporter, TrainOptions

HELP = (
    "Train a 3D latent diffusion model on `meddiff preprocess` output: stage 1 a KL autoencoder "
    "(4x per axis), stage 2 a modality-conditioned rectified-flow denoiser. The model folder "
    "(model.json, safetensors weights, checkpoint/, previews/) goes to the cache's models/NAME/. "
    "Multi-GPU: torchrun --nproc_per_node=N -m meddiff_cli train ..."
)
EPILOG = (
    "Example: meddiff train prep_ct/ prep_mri/ --name body --preset small --device cuda  "
    "|  resume: meddiff train prep_ct/ prep_mri/ --name body --resume"
)


class ProgressReporter(Reporter):
    """One rich progress task per stage on a terminal; elsewhere (a log file, a cluster job) one plain line at
    most every ``LOG_INTERVAL_S`` seconds: step, losses, it/s and ETA."""

    LOG_INTERVAL_S = 30.0

    def __init__(self, progress: Any, quiet: bool) -> None:
        self.progress, self.quiet = progress, quiet
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, tuple[float, int]] = {}
        self.last_line = 0.0

    def stage_started(self, stage: str, start_step: int, total_steps: int) -> None:
        self.tasks[stage] = self.progress.add_task(stage, total=total_steps, completed=start_step, status="")
        self.started[stage] = (time.monotonic(), start_step)
        self.last_line = time.monotonic()

    def step_done(self, stage: str, step: int, total_steps: int, losses: dict[str, float]) -> None:
        began, first = self.started[stage]
        now = time.monotonic()
        rate = (step - first) / max(now - began, 1e-9)
        status = " ".join(f"{k} {v:.4f}" for k, v in losses.items()) + f" {rate:.2f} it/s"
        self.progress.update(self.tasks[stage], completed=step, status=status)
        if self.progress.disable and (now - self.last_line >= self.LOG_INTERVAL_S or step == total_steps):
            self.last_line = now
            eta = (total_steps - step) / rate if rate > 0 else float("nan")
            info(f"{stage} step {step}/{total_steps}: {status}, ETA {duration_text(eta)}", self.quiet)

    def validated(self, stage: str, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        """A log line per validation, so runs whose stderr is a file (clusters) still show progress."""
        values = ", ".join(f"{k} {v}" for k, v in metrics.items())
        info(f"{stage} step {step}/{total_steps}: {values}", self.quiet)

    def message(self, text: str) -> None:
        info(text, self.quiet)


def _parse_set(values: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise UsageError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.adv_weight=0.005")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw  # bare strings such as train.timestep_sampling=uniform
    return overrides


def train_command(
    data: list[Path] = typer.Argument(..., help="One or more preprocess output folders (each with manifest.json)."),
    name: str = typer.Option(..., "--name", help="Model name: folder models/NAME/ in the cache."),
    modality: Optional[list[str]] = typer.Option(
        None, "--modality", "-m", help="Class label per DATA folder (default: the manifest's modality). Repeat per folder.",
        **choice(MODALITIES, ALIASES)),
    preset: str = typer.Option(default(TrainOptions, "preset"), "--preset", help="Network/training preset: compact (trains "
                               "on a CPU in ~30 min at 64^3), small, base (GPU); tiny is for tests (seconds, no quality).", **choice(tuple(PRESETS))),
    stage: str = typer.Option(default(TrainOptions, "stage"), "--stage", help="autoencoder, diffusion or all "
                              "(autoencoder then diffusion); labels: add a label decoder to a trained model (DATA: "
                              "preprocess folders with label maps), so `sample --with-labels` writes image + label pairs.", **choice(STAGE_CHOICES)),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="Steps of the stage being trained; with --stage all it sets the diffusion steps."),
    ae_steps: Optional[int] = typer.Option(None, "--ae-steps", help="Autoencoder steps (default: preset)."),
    diffusion_steps: Optional[int] = typer.Option(None, "--diffusion-steps", help="Diffusion steps (default: preset)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Volumes per step per process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW, warm-up + cosine)."),
    seed: int = typer.Option(default(TrainOptions, "seed"), "--seed", help="Seed of weights, data order, augmentation and noise."),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every K steps."),
    preview_every: Optional[int] = typer.Option(None, "--preview-every", help="Write a preview PNG every K steps."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Checkpoint every K steps."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="EMA decay of the denoiser weights."),
    flip_lr: Optional[bool] = typer.Option(
        None, "--flip-lr/--no-flip-lr", help="Random left-right flips (only for left-right symmetric anatomy)."),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", help="Override any preset value: SECTION.KEY=JSON, e.g. --set train.adv_weight=0.005 "
                            "--set autoencoder.channels=[16,32,32]. Repeatable."),
    workers: int = typer.Option(default(TrainOptions, "workers"), "--workers", "-w",
                                help="DataLoader worker processes (0: load in the main process)."),
    resume: bool = typer.Option(default(TrainOptions, "resume"), "--resume", help="Continue bit-for-bit from the model's last checkpoint."),
    device: str = typer.Option(default(TrainOptions, "device"), "--device", autocompletion=complete_device,
                               help="auto, cpu, cuda or cuda:N."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache folder (default: MEDDIFF_HOME or the user cache)."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    from meddiff_cli.train import train_model

    if workers < 0:
        raise UsageError("--workers must be 0 or more")
    overrides = _parse_set(settings or [])
    for key, value in (("batch_size", batch_size), ("lr", lr), ("val_every", val_every),
                       ("preview_every", preview_every), ("checkpoint_every", checkpoint_every),
                       ("ema_decay", ema_decay), ("flip_lr", flip_lr)):
        if value is not None:
            overrides[f"train.{key}"] = value
    options = TrainOptions(
        data=list(data), name=name, modalities=list(modality) if modality else None, preset=preset, stage=stage,
        steps=steps, ae_steps=ae_steps, diffusion_steps=diffusion_steps, seed=seed, overrides=overrides,
        resume=resume, device=device, workers=workers, cache_dir=cache_dir,
    )
    is_worker = torchrun_launch().rank != 0
    quiet = quiet or is_worker
    show_settings(verbose, quiet)  # rank 0 only under torchrun
    with progress_bar(quiet) as progress:
        result = train_model(options, ProgressReporter(progress, quiet))
    if is_worker:
        return
    card = result.card
    summary = {
        "name": result.name, "folder": str(result.folder), "preset": card.preset, "modalities": card.modalities,
        "steps": card.training["steps"], "steps_this_run": result.steps_run, "metrics": card.metrics,
        "latent": card.latent, "duration_s": result.duration_s,
    }
    if json_output:
        print_json(summary)
    else:
        metrics = ", ".join(f"{k} {v}" for k, v in card.metrics.items()) or "none yet"
        info(f"model {result.name!r} in {result.folder}: steps {card.training['steps']}; {metrics}", quiet)


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP, epilog=EPILOG)(train_command)
