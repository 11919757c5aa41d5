"""What ``meddiff augment-seg`` is asked to do: experiment and network settings (no torch here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meddiff_cli.errors import ModelError, UsageError

RESULTS_NAME = "results.json"
PLOT_NAME = "dice_vs_k.png"
PRETRAIN_METHODS = ("ssl",)
GENERATED_ONLY_K = 0
"""The k recorded for arm E: it trains on generated pairs only, so it has no K and runs once per seed."""
ARM_TITLES = {"A": "A baseline", "B": "B synthetic SSL pre-training", "C": "C real + synthetic labels",
              "D": "D real + generated pairs", "E": f"E generated pairs only (K = {GENERATED_ONLY_K})"}


def arm_ks(arm: str, n_labelled: tuple[int, ...]) -> tuple[int, ...]:
    """The k values an arm is run and summarised at: every K, except arm E's single k = 0."""
    return (GENERATED_ONLY_K,) if arm == "E" else n_labelled


@dataclass(frozen=True)
class NetworkConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    features: int = 16
    """Channels the UNet hands to the head."""
    out_channels: int = 2

    @property
    def divisor(self) -> int:
        """Volume sides must be multiples of this (each stride halves them, the decoder doubles back)."""
        divisor = 1
        for stride in self.strides:
            divisor *= stride
        return divisor

    def with_out_channels(self, out_channels: int) -> NetworkConfig:
        return NetworkConfig(self.channels, self.strides, self.num_res_units, self.features, out_channels)

    def to_json(self) -> dict[str, Any]:
        return {"architecture": "monai.networks.nets.UNet(spatial_dims=3) + Conv3d 1x1x1 head",
                **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkConfig:
        try:
            return cls(tuple(data["channels"]), tuple(data["strides"]), int(data["num_res_units"]),
                       int(data["features"]), int(data["out_channels"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"network config is incomplete ({error})") from None


@dataclass(frozen=True)
class ExperimentSettings:
    images: Path
    labels: Path
    synthetic: Path
    test_images: Path | None = None
    test_labels: Path | None = None
    test_fraction: float = 0.25
    n_labelled: tuple[int, ...] = (2, 4, 8)
    seeds: int = 3
    pretrain: str = "ssl"
    epochs: int = 30
    pretrain_epochs: int = 30
    steps_per_epoch: int = 4
    batch_size: int = 2
    learning_rate: float = 1e-3
    size: int = 48
    spacing: float | None = None
    modality: str = "auto"
    device: str = "auto"
    arm_c: bool = False
    pairs: Path | None = None
    """Generated image + label pairs (``meddiff sample --with-labels``): adds arms D and E."""
    network: NetworkConfig = field(default_factory=NetworkConfig)

    @property
    def arms(self) -> list[str]:
        return ["A", "B", *(["C"] if self.arm_c else []), *(["D", "E"] if self.pairs is not None else [])]

    def validate(self) -> None:
        if (self.test_images is None) != (self.test_labels is None):
            raise UsageError("--test-images and --test-labels go together")
        if not self.n_labelled or min(self.n_labelled) < 1:
            raise UsageError("--n-labelled needs positive integers, e.g. 2,4,8")
        if self.seeds < 1 or self.epochs < 1 or self.pretrain_epochs < 1 or self.steps_per_epoch < 1:
            raise UsageError("--seeds, --epochs, --pretrain-epochs and --steps-per-epoch must be at least 1")
        if self.batch_size < 1 or not self.learning_rate > 0:
            raise UsageError("--batch-size must be at least 1 and --lr positive")
        if self.pretrain not in PRETRAIN_METHODS:
            raise UsageError(f"--pretrain must be one of {', '.join(PRETRAIN_METHODS)}, got {self.pretrain!r}")
        divisor = self.network.divisor
        if self.size < divisor or self.size % divisor:
            raise UsageError(f"--size must be a multiple of {divisor} (the UNet halves it {len(self.network.strides)} times)")
        if self.spacing is not None and not self.spacing > 0:
            raise UsageError("--spacing must be positive millimetres")

    def to_json(self) -> dict[str, Any]:
        """Everything that shapes the numbers; folder paths are left out (they may name patients)."""
        skip = {"images", "labels", "synthetic", "test_images", "test_labels", "pairs", "network"}
        data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k not in skip}
        data["pairs"] = self.pairs is not None
        data["test_split"] = "folders" if self.test_images is not None else f"fraction {self.test_fraction}"
        return data
