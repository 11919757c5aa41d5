"""Feature extractors for the Fréchet distance, KID and precision/recall.

* ``radiomics`` — meddiff's weight-free ``radiomics-v1`` (:mod:`meddiff_cli.evaluate.radiomics`), always available.
* ``frd`` — the FRDv1 pyradiomics features (:mod:`meddiff_cli.evaluate.frd`; extra ``meddiff[frd]``); the
  report then also gives FRD itself, computed as ``frd-score`` does.
* ``medicalnet`` — a MedicalNet 3D ResNet (MONAI's implementation, MedicalNet layout) whose weights the
  user placed in ``<cache>/features/medicalnet/`` as ``resnet_<depth>.safetensors`` (or a ``.pth``
  read with ``torch.load(weights_only=True)``), sha256-pinned on first use. Never downloaded.
* ``PATH`` — a user ONNX model mapping ``[B, 1, X, Y, Z]`` float32 to ``[B, F]``.

Radiomics and FRD features are computed per volume in the loading workers; the extractors here only name
them. Feature values from different extractors are not comparable; the report always names the extractor.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from meddiff_cli.devices import resolve_device
from meddiff_cli.errors import BadInputError, ModelError, UsageError
from meddiff_cli.evaluate.frd import FRD_NAME, require_frd
from meddiff_cli.evaluate.radiomics import RadiomicsExtractor, radiomics_feature_names
from meddiff_cli.paths import cache_root

MEDICALNET_DEPTHS = (50, 34, 18, 10)
"""Preference order when several MedicalNet weight files are present."""
FEATURE_CHOICES = ("auto", "radiomics", "frd", "medicalnet")


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        """``[n, X, Y, Z]`` model-space volumes -> ``[n, F]`` float64 features."""


# ------------------------------------------------------------------------------------------- devices


def torch_device_name(device: str) -> str:
    """The shared ``--device`` rules (:mod:`meddiff_cli.devices`) as the plain string extractors keep."""
    return str(resolve_device(device))


# ------------------------------------------------------------------------------------------ medicalnet


def medicalnet_folder(cache: str | Path | None = None) -> Path:
    return cache_root(cache) / "features" / "medicalnet"


def find_medicalnet_weights(cache: str | Path | None = None) -> Path | None:
    """The preferred ``resnet_<depth>.safetensors`` / ``.pth`` in the cache, or None."""
    folder = medicalnet_folder(cache)
    for depth in MEDICALNET_DEPTHS:
        for suffix in (".safetensors", ".pth"):
            candidate = folder / f"resnet_{depth}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _medicalnet_depth(path: Path) -> int:
    stem = path.name.split(".")[0]
    try:
        depth = int(stem.split("_")[-1])
    except ValueError:
        depth = -1
    if depth not in MEDICALNET_DEPTHS:
        raise ModelError(f"MedicalNet weights must be named resnet_<{'|'.join(map(str, MEDICALNET_DEPTHS))}>", path)
    return depth


def read_pinned_weights(path: Path) -> bytes:
    """The weights' bytes, sha256-checked against ``<file>.sha256`` beside them (pinned on first use).

    MedicalNet weights come from the user, not from a meddiff model card, so there is no reference hash
    until meddiff has seen them once: the first use writes ``resnet_<d>.<ext>.sha256`` (sha256sum format;
    put the publisher's hash there beforehand to check the very first use too) and every later use refuses
    a file that changed (exit 6). The loader parses these same bytes, never the path again.
    """
    from meddiff_cli.fsutil import atomic_write_bytes
    from meddiff_cli.model.store import read_verified

    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        try:
            expected = sidecar.read_text(encoding="utf-8").split()[0].lower()
        except (OSError, UnicodeDecodeError, IndexError):
            raise ModelError("unreadable sha256 file beside the MedicalNet weights", sidecar) from None
        return read_verified(path, expected)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read MedicalNet weights ({error.strerror or error})", path) from None
    try:
        atomic_write_bytes(sidecar, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    except OSError:
        pass  # a read-only weights folder: still usable, just not pinned
    return data


def load_medicalnet(path: str | Path):  # -> monai ResNet
    """Build MONAI's 3D ResNet in MedicalNet layout and load weights without unpickling objects.

    MedicalNet's checkpoints come from ``nn.DataParallel`` (``module.`` prefixes) with a segmentation
    head (``conv_seg``) that feature extraction does not use; both are handled. Any other mismatch
    is a ModelError: silently random layers would make the distance meaningless.
    """
    import torch
    from monai.networks.nets import resnet
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    path = Path(path)
    depth = _medicalnet_depth(path)
    data = read_pinned_weights(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load as load_safetensors_bytes

            state = load_safetensors_bytes(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as error:
        raise ModelError(f"cannot read MedicalNet weights ({type(error).__name__}: {error})", path) from None
    if not isinstance(state, dict):
        raise ModelError("MedicalNet weights file does not hold a state dict", path)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("conv_seg")}
    bias_downsample, shortcut_type = get_medicalnet_pretrained_resnet_args(depth)
    network = getattr(resnet, f"resnet{depth}")(
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type=shortcut_type,
        bias_downsample=bias_downsample,
        feed_forward=False,
    )
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        detail = (result.missing_keys + result.unexpected_keys)[:3]
        raise ModelError(f"weights do not fit MedicalNet resnet_{depth} (e.g. {', '.join(detail)})", path)
    return network.eval()


@dataclass
class MedicalNetExtractor:
    """Global-average-pooled last-stage activations of a MedicalNet ResNet (2048-D for ResNet-50)."""

    weights: Path
    device: str = "cpu"
    batch_size: int = 4

    def __post_init__(self) -> None:
        self.network = load_medicalnet(self.weights).to(self.device)
        self.name = f"medicalnet-resnet{_medicalnet_depth(self.weights)}"
        self.runs_on = f"{self.device} (torch)"

    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        import torch

        outputs = []
        with torch.no_grad():
            for start in range(0, len(volumes), self.batch_size):
                batch = torch.from_numpy(np.asarray(volumes[start : start + self.batch_size], np.float32))
                # MedicalNet was trained on per-volume z-scored intensities.
                flat = batch.flatten(1)
                batch = (batch - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 1e-6)
                outputs.append(self.network(batch[:, None].to(self.device)).double().cpu().numpy())
        return np.concatenate(outputs)


# ------------------------------------------------------------------------------------------------ ONNX


@dataclass
class OnnxExtractor:
    """A user-supplied ONNX model: one input ``[B, 1, X, Y, Z]`` float32, first output ``[B, F]``."""

    path: Path
    device: str = "cpu"

    def __post_init__(self) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as error:
            detail = " ".join(str(error).split())[-200:]
            raise ModelError(f"cannot load ONNX feature extractor ({type(error).__name__}: {detail})", self.path) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 5:
            raise ModelError("ONNX feature extractor must take one input [B, 1, X, Y, Z]", self.path)
        self.input_name = inputs[0].name
        self.name = f"onnx:{self.path.name}"
        self.runs_on = f"{self.device} ({self.session.get_providers()[0]})"

    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        outputs = []
        for volume in volumes:  # one at a time: models exported with a fixed batch of 1 work too
            batch = np.asarray(volume, np.float32)[None, None]
            try:
                features = self.session.run(None, {self.input_name: batch})[0]
            except Exception as error:
                raise ModelError(f"ONNX feature extractor failed ({type(error).__name__}: {error})", self.path) from None
            features = np.asarray(features, dtype=np.float64)
            if features.ndim != 2 or features.shape[0] != 1:
                raise ModelError(f"ONNX feature extractor must output [B, F], got {list(features.shape)}", self.path)
            outputs.append(features[0])
        return np.stack(outputs)


@dataclass
class FrdExtractor:
    """FRDv1 pyradiomics features (computed by the loading workers); ``versions`` of the packages used."""

    versions: dict[str, str] = field(default_factory=dict)
    name: str = FRD_NAME
    runs_on: str = "cpu (pyradiomics)"


def make_extractor(spec: str, device: str = "auto", cache: str | Path | None = None) -> FeatureExtractor:
    """``auto`` | ``radiomics`` | ``frd`` | ``medicalnet`` | path to an ``.onnx`` file."""
    if spec == "radiomics":
        return RadiomicsExtractor()
    if spec == "frd":
        return FrdExtractor(require_frd())
    if spec in ("auto", "medicalnet"):
        weights = find_medicalnet_weights(cache)
        if weights is not None:
            return MedicalNetExtractor(weights, torch_device_name(device))
        if spec == "medicalnet":
            raise ModelError(
                "no MedicalNet weights imported: place resnet_50.safetensors (or .pth) in this folder",
                medicalnet_folder(cache),
            )
        return RadiomicsExtractor()
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--features must be {', '.join(FEATURE_CHOICES)} or an existing .onnx file, got {spec!r}")
    if path.suffix.lower() != ".onnx":
        raise BadInputError("feature extractor file must be an .onnx model", path)
    return OnnxExtractor(path, torch_device_name(device))


def per_volume_kind(extractor: FeatureExtractor) -> str | None:
    """``radiomics`` / ``frd`` when the loading workers compute the features volume by volume, else None."""
    if isinstance(extractor, RadiomicsExtractor):
        return "radiomics"
    return "frd" if isinstance(extractor, FrdExtractor) else None


def feature_names(extractor: FeatureExtractor) -> list[str] | None:
    """Names of the features when they have any (the radiomics families), else None."""
    return radiomics_feature_names() if isinstance(extractor, RadiomicsExtractor) else None
