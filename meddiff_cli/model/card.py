"""The model card: the single config object that travels from ``train`` through ``export`` to ``sample``.

It is stored as ``model.json`` beside the weights. It holds everything needed to rebuild the networks,
run the sampler and map samples back to physical units — and nothing identifying about training data.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meddiff_cli import __version__
from meddiff_cli.errors import ModelError
from meddiff_cli.fsutil import atomic_write_json

CARD_FILE = "model.json"
CARD_FORMAT = "meddiff-model"
CARD_VERSION = 1

# Training settings shared by every preset (each one overridable, see ``meddiff train --set``).
_COMMON_TRAIN: dict[str, Any] = {
    "weight_decay": 0.01,  # AdamW
    "grad_clip": 1.0,  # max global gradient norm, generator/denoiser and discriminator alike
    "timestep_sampling": "logit-normal",  # RFlowScheduler sample_method (SD3/MAISI-v2 favour mid-range t)
    "intensity_jitter": 0.05,  # x * (1 + a) + b, a, b ~ U(-j, j), then clipped to [-1, 1]
    "flip_lr": False,  # random left-right flips change laterality (heart, liver): opt in for symmetric anatomy
    "val_fraction": 0.1,  # of each modality's cases, at least 1 held out for validation
    "ae_patch_size": 0,  # >0: the autoencoder trains on random cubic crops of this side (it is fully convolutional)
    "preview_sampling_steps": 10,  # Euler steps for the decoded-sample preview PNGs
    "mixed_precision": "auto",  # auto: bf16 autocast on bf16-capable GPUs and on CPUs with AMX/AVX512-BF16; or bf16/none
    "latent_norm": "channel",  # channel: standardise each latent channel (shift + scale); global: one scale factor
    "latent_cache": True,  # stage 2 encodes every training case once (posterior mean) instead of every step
}

# Network widths per preset. Volume shape and spacing come from the training data, not the preset.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {  # CPU tests: a few steps on 32^3 volumes in seconds
        "autoencoder": {
            "channels": [8, 16, 16], "num_res_blocks": 1, "latent_channels": 4, "norm_num_groups": 4,
            "attention_levels": [False, False, False],
        },
        "denoiser": {
            "channels": [16, 32, 32], "num_res_blocks": 1, "attention_levels": [False, False, True],
            "num_head_channels": 8, "norm_num_groups": 8,
        },
        "train": {"autoencoder_steps": 20, "diffusion_steps": 20, "batch_size": 2, "lr": 2e-4,
                  "adv_warmup_steps": 10, "adv_weight": 0.01, "kl_weight": 1e-6, "adv_ramp_steps": 5,
                  "disc_channels": 8, "disc_layers": 2, "warmup_steps": 2, "ema_decay": 0.99,
                  "val_every": 10, "preview_every": 10, "checkpoint_every": 10, **_COMMON_TRAIN},
    },
    "compact": {  # trainable on a laptop CPU in ~30 min at 64^3 (the interim bundled default); fast to sample
        "autoencoder": {
            "channels": [16, 32, 64], "num_res_blocks": 1, "latent_channels": 4, "norm_num_groups": 8,
            "attention_levels": [False, False, False],
        },
        "denoiser": {
            "channels": [32, 64, 128], "num_res_blocks": 1, "attention_levels": [False, True, True],
            "num_head_channels": 16, "norm_num_groups": 16,
        },
        "train": {"autoencoder_steps": 600, "diffusion_steps": 1000, "batch_size": 4, "lr": 2e-4,
                  "adv_warmup_steps": 300, "adv_weight": 0.01, "kl_weight": 1e-6, "adv_ramp_steps": 100,
                  "disc_channels": 16, "disc_layers": 2, "warmup_steps": 30, "ema_decay": 0.995,
                  "val_every": 200, "preview_every": 200, "checkpoint_every": 100,
                  **{**_COMMON_TRAIN, "ae_patch_size": 32}},
    },
    "small": {  # one GPU, minutes to an hour; 64^3-128^3 volumes
        "autoencoder": {
            "channels": [32, 64, 64], "num_res_blocks": 1, "latent_channels": 4, "norm_num_groups": 16,
            "attention_levels": [False, False, False],
        },
        "denoiser": {
            "channels": [64, 128, 256], "num_res_blocks": 1, "attention_levels": [False, True, True],
            "num_head_channels": 32, "norm_num_groups": 32,
        },
        "train": {"autoencoder_steps": 3000, "diffusion_steps": 6000, "batch_size": 4, "lr": 1e-4,
                  "adv_warmup_steps": 1000, "adv_weight": 0.01, "kl_weight": 1e-6, "adv_ramp_steps": 300,
                  "disc_channels": 32, "disc_layers": 3, "warmup_steps": 100, "ema_decay": 0.999,
                  "val_every": 250, "preview_every": 500, "checkpoint_every": 500, **_COMMON_TRAIN},
    },
    "base": {  # several GPU hours; 128^3 volumes
        "autoencoder": {
            "channels": [64, 128, 128], "num_res_blocks": 2, "latent_channels": 4, "norm_num_groups": 32,
            "attention_levels": [False, False, False],
        },
        "denoiser": {
            "channels": [128, 256, 512], "num_res_blocks": 2, "attention_levels": [False, True, True],
            "num_head_channels": 64, "norm_num_groups": 32,
        },
        "train": {"autoencoder_steps": 20000, "diffusion_steps": 50000, "batch_size": 4, "lr": 1e-4,
                  "adv_warmup_steps": 5000, "adv_weight": 0.01, "kl_weight": 1e-6, "adv_ramp_steps": 500,
                  "disc_channels": 64, "disc_layers": 3, "warmup_steps": 500, "ema_decay": 0.9999,
                  "val_every": 1000, "preview_every": 2000, "checkpoint_every": 1000, **_COMMON_TRAIN},
    },
}


def latent_normalization(card: ModelCard) -> tuple[list[float], list[float]]:
    """Per-channel ``(shift, scale)`` of the diffusion latents: the denoiser sees ``(z - shift) * scale``.

    Unset means the diffusion stage never ran, so there is nothing to sample."""
    latent = card.latent
    channels = int(latent.get("channels") or 0)
    if latent.get("scale") is not None and latent.get("shift") is not None:
        return [float(v) for v in latent["shift"]], [float(v) for v in latent["scale"]]
    if latent.get("scale_factor") is not None and channels:
        return [0.0] * channels, [float(latent["scale_factor"])] * channels
    raise ModelError(f"model {card.name!r} has no trained denoiser yet (latent normalisation unset): "
                     "run `meddiff train` through the diffusion stage first")


def preset_config(name: str) -> dict[str, Any]:
    """A deep copy of a named preset (so callers can override fields freely)."""
    if name not in PRESETS:
        raise ModelError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


@dataclass
class ModelCard:
    """Everything about a trained model except its weights.

    * ``modalities``: class labels of the denoiser, index = class id (e.g. ``["ct", "mri"]``).
    * ``volume``: ``{"shape": [X, Y, Z], "spacing": [sx, sy, sz]}`` of generated volumes (RAS+), plus
      ``"spacing_by_modality": {modality: [sx, sy, sz]}`` when modalities were trained at different spacings
      (one network serves a chest CT at 6 mm and a brain MRI at 3.5 mm: same grid, different field of view).
    * ``intensity``: per modality, how model space [-1, 1] maps back to physical units, e.g.
      ``{"ct": {"kind": "ct_window", "window": [-1000, 1000], "unit": "HU"}}`` or
      ``{"mri": {"kind": "percentile", "unit": "a.u.", "output_range": [0, 1000]}}``.
    * ``autoencoder`` / ``denoiser``: keyword arguments of the MONAI networks (see networks.py).
    * ``objective``: ``"rectified_flow"`` (velocity prediction, Euler sampling); ``scheduler`` its settings.
    * ``latent``: ``{"channels": C, "shape": [x, y, z], "shift": [C], "scale": [C]}`` — the denoiser works on
      ``(z - shift) * scale`` per channel (training latents standardised to mean 0, std 1), decoding inverts it.
      Older cards hold one ``"scale_factor": s`` instead (shift 0, the same scale for every channel).
    * ``training``: counts, steps, seeds and settings — never paths or identifiers.
    * ``sampling``: the rectified-flow convention the denoiser was trained with (velocity definition,
      time direction, class labels, output clipping, a sensible default step count) — see docs/model.md.
    * ``files``: weight/ONNX file name → sha256, checked before anything is loaded.
    """

    name: str
    preset: str
    modalities: list[str]
    volume: dict[str, Any]
    intensity: dict[str, dict[str, Any]]
    autoencoder: dict[str, Any]
    denoiser: dict[str, Any]
    objective: str = "rectified_flow"
    scheduler: dict[str, Any] = field(default_factory=lambda: {"num_train_timesteps": 1000})
    latent: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    meddiff_version: str = __version__
    format: str = CARD_FORMAT
    format_version: int = CARD_VERSION

    def class_id(self, modality: str) -> int:
        """Denoiser class index of a modality; a clear error if the model was not trained on it."""
        if modality not in self.modalities:
            raise ModelError(f"model {self.name!r} was trained on {', '.join(self.modalities)}, not {modality!r}")
        return self.modalities.index(modality)

    def spacing(self, modality: str) -> list[float]:
        """Voxel size (mm) of generated volumes of ``modality``."""
        by_modality = self.volume.get("spacing_by_modality") or {}
        return [float(v) for v in by_modality.get(modality, self.volume["spacing"])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> ModelCard:
        if data.get("format") != CARD_FORMAT:
            raise ModelError("not a meddiff model card (missing format: meddiff-model)", source)
        if int(data.get("format_version", 0)) > CARD_VERSION:
            raise ModelError(
                f"model card format {data.get('format_version')} is newer than this meddiff understands "
                f"({CARD_VERSION}); upgrade meddiff", source,
            )
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as error:
            raise ModelError(f"incomplete model card: {error}", source) from None

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CARD_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder_or_file: str | Path) -> ModelCard:
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / CARD_FILE
        if not path.is_file():
            raise ModelError("model card not found", path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelError(f"unreadable model card ({error})", path) from None
        if not isinstance(data, dict):
            raise ModelError("model card is not a JSON object", path)
        return cls.from_dict(data, path)
