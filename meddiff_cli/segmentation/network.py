"""The segmentation network shared by every arm, and its safetensors + JSON storage.

A MONAI 3D ``UNet`` (encoder and decoder) followed by a 1x1x1 convolution head. The head is the
only part that differs between self-supervised pre-training (1 output channel: the restored
image) and segmentation (background + C classes), so arm B transfers every UNet weight and
re-initialises only the head, as Models Genesis does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import UNet
from torch import nn

from meddiff_cli.errors import ModelError
from meddiff_cli.fsutil import atomic_write_json
from meddiff_cli.model.store import load_state_dict, save_state_dict
from meddiff_cli.segmentation.options import NetworkConfig

HEAD_PREFIX = "head."


class SegmentationNet(nn.Module):
    """UNet body + 1x1x1 head; input [B, 1, X, Y, Z] in [-1, 1], output [B, out_channels, X, Y, Z]."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.body = UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=config.features,
            channels=config.channels,
            strides=config.strides,
            num_res_units=config.num_res_units,
        )
        self.head = nn.Conv3d(config.features, config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def transfer_body(source: SegmentationNet, target: SegmentationNet) -> int:
    """Copy every weight except the head's from a pre-trained network; returns the tensors copied."""
    if source.config.with_out_channels(0) != target.config.with_out_channels(0):
        raise ModelError(f"pre-trained network {source.config} does not match {target.config} apart from the head")
    body = {k: v for k, v in source.state_dict().items() if not k.startswith(HEAD_PREFIX)}
    target.load_state_dict(body, strict=False)
    return len(body)


def save_network(net: SegmentationNet, path: Path, sidecar: dict[str, Any]) -> Path:
    """Weights as safetensors (never pickle) + ``<name>.json`` with the config and the weights' sha256."""
    digest = save_state_dict(net, path)
    atomic_write_json(path.with_suffix(".json"), {"network": net.config.to_json(), **sidecar,
                                                  "weights": path.name, "weights_sha256": digest})
    return path


def load_network(path: str | Path, device: str | torch.device = "cpu") -> tuple[SegmentationNet, dict[str, Any]]:
    """Rebuild a saved network from its JSON sidecar and sha256-verified weights, in eval mode."""
    path = Path(path)
    sidecar_path = path.with_suffix(".json")
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError("network sidecar (.json) missing", sidecar_path) from None
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"unreadable network sidecar ({error})", sidecar_path) from None
    net = SegmentationNet(NetworkConfig.from_json(sidecar.get("network", {})))
    state = load_state_dict(path, sidecar.get("weights_sha256"))
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(f"weights do not fit the network config ({str(error).splitlines()[0]})", path) from None
    return net.to(device).eval(), sidecar
