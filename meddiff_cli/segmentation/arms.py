"""The arms of the augment-seg experiment, and one trained model: an arm at one (k, seed), trained, scored, saved.

Every arm trains the same network from the same seeded initial weights (see docs/augment-seg.md):

* A: from scratch on the K real labelled volumes;
* B: self-supervised restoration pre-training on the synthetic volumes, every weight but the head
  transferred, then trained as A;
* C: from scratch on the K real volumes + the labelled synthetic volumes;
* D: as C, with the generated image + label pairs (``--pairs``) in place of the synthetic volumes;
* E: from scratch on the generated pairs alone. No real label is used, so E has no K: it runs once
  per seed and is recorded with k = 0 (:data:`~meddiff_cli.segmentation.options.GENERATED_ONLY_K`).

C and D share one code path: ``train_segmentation``'s extra pool, each batch item real or extra with p = 1/2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meddiff_cli.segmentation.metrics import score_predictions
from meddiff_cli.segmentation.network import SegmentationNet, save_network, transfer_body
from meddiff_cli.segmentation.options import GENERATED_ONLY_K, ExperimentSettings, NetworkConfig
from meddiff_cli.segmentation.training import ProgressCallback, TrainBudget, predict, train_segmentation

MODELS_DIR = "models"

LabelledTensors = tuple[torch.Tensor, torch.Tensor]


def budget(settings: ExperimentSettings, epochs: int) -> TrainBudget:
    return TrainBudget(epochs, settings.steps_per_epoch, settings.batch_size, settings.learning_rate)


def fresh_network(config: NetworkConfig, seed: int) -> SegmentationNet:
    """Initial weights depend on the seed only, so arms at the same seed start from the same head."""
    torch.manual_seed(seed)
    return SegmentationNet(config)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@dataclass
class ArmRunner:
    """What every arm shares: settings, network shape, device, the test set and where models go."""

    settings: ExperimentSettings
    config: NetworkConfig
    device: torch.device
    test: LabelledTensors
    class_names: list[str]
    spacing: tuple[float, float, float]
    models_dir: Path
    sidecar: dict[str, Any]
    say: ProgressCallback

    def run(self, arm: str, k: int, seed: int, subset: list[int], train: LabelledTensors,
            extra: LabelledTensors | None = None, pretrained: SegmentationNet | None = None) -> dict[str, Any]:
        """Train arm ``arm`` on ``train`` (+ ``extra``, mixed half and half), score it on the test set, save it.

        The batch seed depends on (seed, k) only, so arms at the same (K, seed) draw the same batches.
        """
        started = time.monotonic()
        net = fresh_network(self.config, seed)
        if pretrained is not None:
            transfer_body(pretrained, net)
        extra_images, extra_labels = extra if extra is not None else (None, None)
        label = f"seed {seed} arm E (generated only)" if k == GENERATED_ONLY_K else f"seed {seed} K={k} arm {arm}"
        losses = train_segmentation(net, *train, budget(self.settings, self.settings.epochs), seed * 1000 + k,
                                    self.device, self.say, label=label,
                                    extra_images=extra_images, extra_labels=extra_labels)
        prediction = predict(net, self.test[0], self.device, self.settings.batch_size)
        scores = score_predictions(prediction, self.test[1], self.class_names, self.spacing)
        name = f"arm-{arm}_k{k}_seed{seed}.safetensors"
        save_network(net.cpu(), self.models_dir / name, {**self.sidecar, "arm": arm, "k": k, "seed": seed,
                                                         "train_case_indices": subset,
                                                         "test_mean_dice": scores["mean_dice"]})
        self.say(f"{label}: test mean Dice {_fmt(scores['mean_dice'])}")
        return {"arm": arm, "k": k, "seed": seed, "train_case_indices": subset,
                "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1],
                "seconds": round(time.monotonic() - started, 2), "model": f"{MODELS_DIR}/{name}", **scores}
