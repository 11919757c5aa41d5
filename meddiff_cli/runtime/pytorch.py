"""The PyTorch sampling backend: the reference path (the MONAI networks, ``torch.compile`` on CUDA when asked)."""

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
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.denoiser = DenoiserForExport(unet).to(self.torch_device, self.dtype).eval()
        self.decoder = DecoderForExport(autoencoder, *latent_norm).to(self.torch_device, self.dtype).eval()
        if compile and self.torch_device.type == "cuda":
            self.denoiser = torch.compile(self.denoiser)
        self.provider = f"torch-{self.torch_device.type}" + ("-compile" if compile and cuda else "")
        self.device_label = str(self.torch_device)

    @torch.inference_mode()
    def denoise(self, latent: torch.Tensor, timestep: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        return self.denoiser(latent.to(self.dtype), timestep.float(), class_id.long()).float()

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor, volume_shape: tuple[int, ...]) -> torch.Tensor:
        return self.decoder(latent.to(self.dtype)).float()
