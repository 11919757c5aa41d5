"""Network and training presets: named starting points for ``meddiff train --preset`` (each value can be
overridden with ``--set SECTION.KEY=VALUE``). Volume shape and spacing come from the training data."""

from __future__ import annotations

import copy
from typing import Any

from meddiff_cli.errors import ModelError

# Training settings shared by every preset (each one overridable, see ``meddiff train --set``).
_COMMON_TRAIN: dict[str, Any] = {
    "weight_decay": 0.01,  # AdamW
    "grad_clip": 1.0,  # max global gradient norm, generator/denoiser and discriminator alike
    "timestep_sampling": "logit-normal",  # RFlowScheduler sample_method (SD3/MAISI-v2 favour mid-range t)
    "timestep_loc": 0.0,  # logit-normal centre: 0 is median t = 0.5; 0.5 draws more t near noise (median 0.62)
    "intensity_jitter": 0.05,  # x * (1 + a) + b, a, b ~ U(-j, j), then clipped to [-1, 1]
    "flip_lr": False,  # random left-right flips change laterality (heart, liver): opt in for symmetric anatomy
    "val_fraction": 0.1,  # of each modality's cases, at least 1 held out for validation
    "ae_patch_size": 0,  # >0: the autoencoder trains on random cubic crops of this side (it is fully convolutional)
    "adv_input": "clip-st",  # what the patch discriminator sees of a reconstruction: raw | clip | clip-st
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
                  "val_every": 10, "preview_every": 10, "checkpoint_every": 10,
                  # fp32: tests check bit-for-bit resume, and a few-step bf16 run on a tiny net can skip every step
                  # on non-finite gradients (bf16 CPU kernels are not bit-deterministic either)
                  **{**_COMMON_TRAIN, "mixed_precision": "none"}},
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


def preset_config(name: str) -> dict[str, Any]:
    """A deep copy of a named preset (so callers can override fields freely)."""
    if name not in PRESETS:
        raise ModelError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
