"""MONAI networks built from a model card: a KL autoencoder (4x per axis) and a class-conditioned 3D UNet."""

from __future__ import annotations

import functools
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from meddiff_cli.model.card import ModelCard


def autoencoder_kwargs(card: ModelCard) -> dict[str, Any]:
    cfg = dict(card.autoencoder)
    return {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 1,
        "channels": tuple(cfg["channels"]),
        "num_res_blocks": cfg["num_res_blocks"],
        "latent_channels": cfg["latent_channels"],
        "norm_num_groups": cfg["norm_num_groups"],
        "attention_levels": tuple(cfg["attention_levels"]),
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
    }


def denoiser_kwargs(card: ModelCard) -> dict[str, Any]:
    cfg = dict(card.denoiser)
    latent_channels = card.autoencoder["latent_channels"]
    return {
        "spatial_dims": 3,
        "in_channels": latent_channels,
        "out_channels": latent_channels,
        "channels": tuple(cfg["channels"]),
        "num_res_blocks": cfg["num_res_blocks"],
        "attention_levels": tuple(cfg["attention_levels"]),
        "num_head_channels": cfg["num_head_channels"],
        "norm_num_groups": cfg["norm_num_groups"],
        "num_class_embeds": len(card.modalities),
    }


def build_autoencoder(card: ModelCard) -> AutoencoderKL:
    """KL-regularised autoencoder; ``len(channels) - 1`` downsamplings, i.e. 4x per axis for 3 levels."""
    return AutoencoderKL(**autoencoder_kwargs(card))


def build_denoiser(card: ModelCard) -> DiffusionModelUNet:
    """Latent denoiser conditioned on the timestep and on the modality class (``class_labels``)."""
    return DiffusionModelUNet(**denoiser_kwargs(card))


def downsample_factor(card: ModelCard) -> int:
    return 2 ** (len(card.autoencoder["channels"]) - 1)


def required_divisor(card: ModelCard) -> int:
    """Volume sides must be multiples of this so that the autoencoder and UNet pyramids line up."""
    return downsample_factor(card) * 2 ** (len(card.denoiser["channels"]) - 1)


class DenoiserForExport(torch.nn.Module):
    """The denoiser with a flat signature ``(latent, timestep, class_id) -> velocity`` for ONNX and sampling."""

    def __init__(self, unet: DiffusionModelUNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        return self.unet(latent, timesteps=timestep, class_labels=class_id)


@functools.lru_cache(maxsize=8)
def box_edge_sources(shape: tuple[int, ...]) -> torch.Tensor:
    """Flat voxel index each voxel of a volume of ``shape`` takes its value from: itself, or, for a voxel on two or
    three faces of the box (its 12 edges and 8 corners), the neighbour one step inwards along those axes.
    Cached per shape (one model decodes one shape); callers must not modify the returned tensor."""
    axes = [torch.arange(n) for n in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    on_edge = sum(((g == 0) | (g == n - 1)).int() for g, n in zip(grids, shape, strict=True)) >= 2
    sources = [torch.where(on_edge, g.clamp(1, n - 2), g) for g, n in zip(grids, shape, strict=True)]
    return ((sources[0] * shape[1] + sources[1]) * shape[2] + sources[2]).reshape(-1)


def repair_box_edges(volume: torch.Tensor) -> torch.Tensor:
    """Replace the decoder's output on the 12 edges of the volume box [B, C, X, Y, Z] by the next voxel inwards.

    Why: the zero-padded convolutions of the decoder see padding on two or three sides there and decode bright
    lines along every edge of the box (posterior-mean reconstructions of held-out CT phantoms: mean error 160 HU
    on these 0.3 % of voxels against 30-45 HU elsewhere, up to -300 HU where the phantom's air is -1000). A short
    decoder fine-tuning with these voxels weighted did not remove them from the corners and smoothed the rest
    (docs/model.md), so they are repaired at inference; every other voxel is the decoder's own.
    """
    spatial = tuple(int(n) for n in volume.shape[2:])
    if len(spatial) != 3 or min(spatial) < 3:
        return volume
    sources = box_edge_sources(spatial).to(volume.device)
    flat = volume.reshape(volume.shape[0], volume.shape[1], -1)
    return flat.index_select(2, sources).reshape(volume.shape)


class DecoderForExport(torch.nn.Module):
    """Normalised latent -> volume in model intensity space [-1, 1] (the card's per-channel
    ``(z - shift) * scale`` undone first).

    The output is clipped to [-1, 1]: the decoder is linear at the output, and a latent slightly off the
    training manifold can overshoot into isolated bright voxels ("bright dots"); clipping bounds them to
    the window/percentile range the intensity mapping was built for. The box's edges are repaired
    (:func:`repair_box_edges`).
    """

    def __init__(self, autoencoder: AutoencoderKL, shift: list[float], scale: list[float]) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1, 1))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return repair_box_edges(self.autoencoder.decode(latent / self.scale + self.shift).clamp(-1.0, 1.0))


class LabelDecoder(torch.nn.Module):
    """The autoencoder's decoder architecture with one output channel per label channel (``card.labels``).

    Its parameter names match the autoencoder's decoder (``post_quant_conv.*``, ``decoder.*``), so training starts
    from the image decoder's weights: every layer but the last already decodes the anatomy of this latent space.
    """

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        kwargs = {**autoencoder_kwargs(card), "out_channels": int(card.labels["channels"])}
        donor = AutoencoderKL(**kwargs)
        self.post_quant_conv = donor.post_quant_conv
        self.decoder = donor.decoder

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) latent -> label logits [B, channels, X, Y, Z]."""
        return self.decoder(self.post_quant_conv(latent))


def build_label_decoder(card: ModelCard) -> LabelDecoder:
    return LabelDecoder(card)


class LabelMapForExport(torch.nn.Module):
    """Normalised latent + modality class -> label map [B, X, Y, Z] (int64 label values).

    Channels of other modalities are masked out before the argmax, so a CT latent can only receive CT labels.
    """

    def __init__(self, label_decoder: LabelDecoder, shift: list[float], scale: list[float],
                 channel_masks: list[list[bool]], channel_values: list[int]) -> None:
        super().__init__()
        self.label_decoder = label_decoder
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1, 1))
        masks = torch.tensor(channel_masks, dtype=torch.bool)
        self.register_buffer("penalty", torch.where(masks, 0.0, float("-inf")))  # [classes, channels]
        self.register_buffer("values", torch.tensor(channel_values, dtype=torch.int64))

    def forward(self, latent: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        logits = self.label_decoder(latent / self.scale + self.shift).float()
        logits = logits + self.penalty[class_id][:, :, None, None, None]
        return self.values[logits.argmax(dim=1)]
