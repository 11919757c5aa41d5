"""Everything that changes with the step: learning rate, adversarial weight, EMA decay.

Each is a pure function of the step (and the config), so a resumed run needs only the step, not scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def set_lr(optimizers: list[torch.optim.Optimizer], config: dict[str, Any], step: int, total: int) -> None:
    """Peak ``lr`` times :func:`warmup_cosine` of the step, for every parameter group."""
    lr = float(config["lr"]) * warmup_cosine(int(config["warmup_steps"]), total)(step)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


def adversarial_weight(step: int, config: dict[str, Any]) -> float:
    """0 before ``adv_warmup_steps``, then a linear ramp to ``adv_weight`` over ``adv_ramp_steps``.

    Switching a fresh discriminator on at full weight is what produced NaNs in the seed project: its
    first gradients are large and noisy, so the generator sees them gradually."""
    start = int(config["adv_warmup_steps"])
    if step < start or config["adv_weight"] <= 0:
        return 0.0
    ramp = max(1, int(config["adv_ramp_steps"]))
    return float(config["adv_weight"]) * min(1.0, (step - start + 1) / ramp)


class EmaWithWarmup:
    """EMA with decay ``min(decay, (1 + n) / (10 + n))``: tracks the weights closely early on, so short runs
    still sample from a sensible average. Used as ``AveragedModel(multi_avg_fn=…)``."""

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
