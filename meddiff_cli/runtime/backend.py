"""What a sampling backend offers: the seam where ONNX Runtime, PyTorch (or a future backend) plug in."""

from __future__ import annotations

from typing import Protocol

import torch


class Backend(Protocol):
    """The denoiser and decoder of one model, ready to run on one device.

    Inputs and outputs are float32 torch tensors on ``torch_device``; precision casts happen inside.
    """

    name: str
    provider: str  # what really runs, e.g. CUDAExecutionProvider or torch-cpu
    device_label: str  # for messages and the manifest, e.g. cuda:0 or cpu
    precision: str  # fp32 | fp16 | bf16
    precision_label: str  # what really runs, e.g. "bf16 autocast"
    torch_device: torch.device

    def denoise(self, latent: torch.Tensor, timestep: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        """Velocity for ``latent`` [B, C, x, y, z] at ``timestep`` [B] for modality ``class_id`` [B]."""

    def decode(self, latent: torch.Tensor, volume_shape: tuple[int, ...]) -> torch.Tensor:
        """Normalised latent -> volume [B, 1, X, Y, Z] in model intensity space [-1, 1]."""
