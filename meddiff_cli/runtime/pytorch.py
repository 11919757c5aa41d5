"""The PyTorch sampling backend: the reference path (the MONAI networks, ``torch.compile`` on CUDA when asked).

Precisions: fp32; fp16 (``.half()`` networks, as the fp16 ONNX graphs are exported); bf16 (autocast: weights
stay fp32, convolutions and matmuls run in bf16, GroupNorm and the sampler's arithmetic in fp32). On CPUs with
AMX/AVX512-BF16 bf16 autocast gave bit-identical outputs for every batch size and thread count (oneDNN's bf16
kernels do not split a volume's reductions differently by batch), which fp32 kernels do not (see docs/sampling.md).
"""

from __future__ import annotations

import torch

from meddiff_cli.devices import check_cuda_index, parse_device
from meddiff_cli.errors import DeviceError
from meddiff_cli.model.networks import DecoderForExport, DenoiserForExport


class TorchBackend:
    """The MONAI networks in PyTorch, wrapped as ONNX export sees them (same inputs, outputs and clipping)."""

    name = "torch"

    def __init__(self, autoencoder: torch.nn.Module, unet: torch.nn.Module, latent_norm: tuple[list[float], list[float]], device: str,
                 precision: str, compile: bool = False) -> None:
        request = parse_device(device)
        check_cuda_index(request)
        cuda = torch.cuda.is_available()
        if request.kind == "cuda" and not cuda:
            raise DeviceError("--device cuda: PyTorch sees no CUDA GPU (CPU-only build or no driver); use --device cpu")
        self.torch_device = torch.device("cuda", request.cuda_index) if cuda and request.wants_cuda else torch.device("cpu")
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.autocast = precision == "bf16"
        self.denoiser = DenoiserForExport(unet).to(self.torch_device, self.dtype).eval()
        self.decoder = DecoderForExport(autoencoder, *latent_norm).to(self.torch_device, self.dtype).eval()
        if compile and self.torch_device.type == "cuda":
            self.denoiser = torch.compile(self.denoiser)
        self.provider = f"torch-{self.torch_device.type}" + ("-compile" if compile and cuda else "")
        self.device_label = str(self.torch_device)
        self.precision_label = "bf16 autocast" if self.autocast else precision

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.torch_device.type, dtype=torch.bfloat16, enabled=self.autocast)

    @torch.inference_mode()
    def denoise(self, latent: torch.Tensor, timestep: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.denoiser(latent.to(self.dtype), timestep.float(), class_id.long()).float()

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor, volume_shape: tuple[int, ...]) -> torch.Tensor:
        with self._autocast():
            return self.decoder(latent.to(self.dtype)).float()


class TorchLabelMap:
    """The label decoder (:class:`~meddiff_cli.model.networks.LabelMapForExport`) in PyTorch, whichever backend
    denoises: one decoder forward per volume, in the backend's precision (bf16/fp16 autocast or fp32), on its device."""

    def __init__(self, module: torch.nn.Module, device: torch.device, precision: str) -> None:
        self.module = module.to(device).eval()
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if self.dtype is torch.float16 and device.type != "cuda":
            self.dtype = None  # CPU fp16 autocast is slower than fp32

    @torch.inference_mode()
    def __call__(self, latent: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, x, y, z] + class ids [B] -> label values [B, X, Y, Z] (uint8, on the CPU)."""
        with torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            labels = self.module(latent.float().to(self.device), class_id.long().to(self.device))
        return labels.to(torch.uint8).cpu()
