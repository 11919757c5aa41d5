"""What ``meddiff train`` is asked to do and what it reports (no torch here: the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meddiff_cli.model.card import ModelCard

STAGES = ("autoencoder", "diffusion")
LABEL_STAGE = "labels"  # optional, after the denoiser: the label decoder (image + label pairs)
STAGE_CHOICES = (*STAGES, "all", LABEL_STAGE)  # all: the autoencoder, then the denoiser
ADV_INPUTS = ("raw", "clip", "clip-st")  # train.adv_input: see train.autoencoder.discriminator_input


@dataclass
class TrainOptions:
    """What ``meddiff train`` was asked to do. ``overrides`` maps ``section.key`` (sections ``train``,
    ``autoencoder``, ``denoiser``) to values that replace the preset's; ``steps`` sets the steps of the stage
    being trained (with ``stage`` all: the diffusion steps)."""

    data: list[Path]
    name: str
    modalities: list[str] | None = None
    preset: str = "compact"  # the CPU preset meant for real use (tiny is for tests)
    stage: str = "all"
    steps: int | None = None
    ae_steps: int | None = None
    diffusion_steps: int | None = None
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    device: str = "auto"
    workers: int = 2  # DataLoader worker processes (0: load in the main process)
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
