"""Training loops: self-supervised restoration pre-training and supervised fine-tuning.

Budget: an *epoch* is a fixed number of optimiser steps (``steps_per_epoch`` batches drawn with
replacement from the training volumes), not one pass over them. With K = 2 a pass would be a
single step, so K = 2 and K = 8 would get 4x different compute; fixing the steps makes the number
of labelled volumes the only thing that changes with K, and every arm gets the same budget.

All randomness (batch order, augmentation, corruption) comes from explicit ``torch.Generator``s
seeded by the caller, on the CPU, so a run is reproducible and arms A and B at the same (K, seed)
see the very same batches and augmentations (the paired design).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss

from meddiff_cli.devices import inference_autocast
from meddiff_cli.segmentation.network import SegmentationNet

ProgressCallback = Callable[[str], None]


@dataclass(frozen=True)
class TrainBudget:
    epochs: int
    steps_per_epoch: int = 4
    batch_size: int = 2
    learning_rate: float = 1e-3


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (3D convs are memory-bound); full precision on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _draw(pool_size: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, pool_size, (batch_size,), generator=generator)


# ------------------------------------------------------------------------------------------ augmentation


def augment(images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Small on-the-fly augmentation: left-right flip (p = 0.5) and intensity jitter (x0.9-1.1, +-0.1).

    Only the left-right axis is flipped: mirrored anatomy stays plausible, upside-down anatomy does not.
    ``images`` [B, 1, X, Y, Z]; ``labels`` [B, X, Y, Z] or None.
    """
    images = images.clone()
    labels = labels.clone() if labels is not None else None
    batch = images.shape[0]
    flips = torch.rand(batch, generator=generator) < 0.5
    scales = 1.0 + (torch.rand(batch, generator=generator) * 0.2 - 0.1)
    shifts = torch.rand(batch, generator=generator) * 0.2 - 0.1
    for b in range(batch):
        if flips[b]:
            images[b] = torch.flip(images[b], dims=(1,))
            if labels is not None:
                labels[b] = torch.flip(labels[b], dims=(0,))
        images[b] = images[b] * scales[b] + shifts[b]
    return images, labels


# ------------------------------------------------------------------------------ self-supervised corruption


def corrupt(volume: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Models-Genesis-style corruption of one volume [1, X, Y, Z] in [-1, 1]; the network must undo it.

    * local voxel shuffling (p = 0.5): voxels permuted inside up to 50 small random blocks, so
      texture must be restored from context;
    * painting (p = 0.9): either in-painting (1-4 random cuboids replaced by uniform noise, p = 0.8)
      or out-painting (everything outside 1-3 cuboids replaced by noise), so shape and layout must
      be inferred from the surroundings;
    * Gaussian noise (sigma 0.05) on top, always.
    """
    out = volume.clone()
    shape = out.shape[1:]

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=generator))

    def randint(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    def random_box(min_frac: float, max_frac: float) -> tuple[slice, ...]:
        slices = []
        for side in shape:
            length = max(1, int(round(side * uniform(min_frac, max_frac))))
            start = randint(0, side - length)
            slices.append(slice(start, start + length))
        return tuple(slices)

    if uniform(0, 1) < 0.5:
        for _ in range(randint(10, 50)):
            box = random_box(0.04, 0.12)
            block = out[(0, *box)]
            order = torch.randperm(block.numel(), generator=generator)
            out[(0, *box)] = block.reshape(-1)[order].reshape(block.shape)
    if uniform(0, 1) < 0.9:
        noise = torch.rand(out.shape, generator=generator) * 2.0 - 1.0
        if uniform(0, 1) < 0.8:
            for _ in range(randint(1, 4)):
                box = random_box(1 / 8, 1 / 3)
                out[(0, *box)] = noise[(0, *box)]
        else:
            keep = torch.zeros(shape, dtype=torch.bool)
            for _ in range(randint(1, 3)):
                keep[random_box(1 / 3, 2 / 3)] = True
            out[0][~keep] = noise[0][~keep]
    out = out + 0.05 * torch.randn(out.shape, generator=generator)
    return out


# ------------------------------------------------------------------------------------------------ loops


def pretrain_restoration(
    net: SegmentationNet,
    volumes: torch.Tensor,
    budget: TrainBudget,
    seed: int,
    device: torch.device,
    progress: ProgressCallback | None = None,
    label: str = "pretrain",
) -> list[float]:
    """Self-supervised pre-training: restore corrupted synthetic volumes [N, X, Y, Z] (MSE loss).

    ``net`` must have a 1-channel head. Returns the mean loss of each epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=budget.learning_rate)
    net.to(device).train()
    history = []
    for epoch in range(budget.epochs):
        started, losses = time.monotonic(), []
        for _ in range(budget.steps_per_epoch):
            index = _draw(volumes.shape[0], budget.batch_size, generator)
            clean, _ = augment(volumes[index].unsqueeze(1), None, generator)
            corrupted = torch.stack([corrupt(v, generator) for v in clean])
            clean, corrupted = clean.to(device), corrupted.to(device)
            optimiser.zero_grad(set_to_none=True)
            with _autocast(device):
                restored = net(corrupted)
            loss = torch.nn.functional.mse_loss(restored.float(), clean)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        history.append(sum(losses) / len(losses))
        if progress:
            progress(f"{label} epoch {epoch + 1}/{budget.epochs} loss {history[-1]:.4f} ({time.monotonic() - started:.1f}s)")
    return history


def train_segmentation(
    net: SegmentationNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    budget: TrainBudget,
    seed: int,
    device: torch.device,
    progress: ProgressCallback | None = None,
    label: str = "train",
    extra_images: torch.Tensor | None = None,
    extra_labels: torch.Tensor | None = None,
) -> list[float]:
    """Supervised training with Dice + cross-entropy on images [K, X, Y, Z] and class-index labels [K, X, Y, Z].

    With ``extra_*`` (arm C: labelled synthetic volumes; arm D: generated image + label pairs) each
    batch item comes from the real K volumes or the extra pool with equal probability, so the real
    volumes keep half the weight however many extra volumes there are. Returns the mean loss of each epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=budget.learning_rate)
    net.to(device).train()
    history = []
    for epoch in range(budget.epochs):
        started, losses = time.monotonic(), []
        for _ in range(budget.steps_per_epoch):
            index = _draw(images.shape[0], budget.batch_size, generator)
            batch_images, batch_labels = images[index], labels[index]
            if extra_images is not None and extra_labels is not None:
                use_extra = torch.rand(budget.batch_size, generator=generator) < 0.5
                extra_index = _draw(extra_images.shape[0], budget.batch_size, generator)
                batch_images = torch.where(use_extra[:, None, None, None], extra_images[extra_index], batch_images)
                batch_labels = torch.where(use_extra[:, None, None, None], extra_labels[extra_index], batch_labels)
            x, y = augment(batch_images.unsqueeze(1), batch_labels, generator)
            x, y = x.to(device), y.unsqueeze(1).to(device)
            optimiser.zero_grad(set_to_none=True)
            with _autocast(device):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        history.append(sum(losses) / len(losses))
        if progress:
            progress(f"{label} epoch {epoch + 1}/{budget.epochs} loss {history[-1]:.4f} ({time.monotonic() - started:.1f}s)")
    return history


@torch.no_grad()
def predict(net: SegmentationNet, images: torch.Tensor, device: torch.device, batch_size: int = 2) -> torch.Tensor:
    """Class-index predictions [N, X, Y, Z] (argmax of the logits) for images [N, X, Y, Z]."""
    net.to(device).eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].unsqueeze(1).to(device)
        with inference_autocast(device):  # bf16 also on CPUs with AMX/AVX512-BF16, as sampling does
            logits = net(x)
        outputs.append(logits.float().argmax(dim=1).cpu())
    return torch.cat(outputs)
