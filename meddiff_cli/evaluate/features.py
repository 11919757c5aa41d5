"""Feature extractors for the Fréchet distance, KID and precision/recall.

* ``radiomics`` — deterministic and weight-free, always available offline: intensity, texture (GLCM),
  gradient and blob (LoG) statistics at several scales plus foreground shape. Computed per volume, so
  it runs in the loading workers.
* ``medicalnet`` — a MedicalNet 3D ResNet (MONAI's implementation, MedicalNet layout) whose weights the
  user placed in ``<cache>/features/medicalnet/`` as ``resnet_<depth>.safetensors`` (or a ``.pth``
  read with ``torch.load(weights_only=True)``), sha256-pinned on first use. Never downloaded.
* ``PATH`` — a user ONNX model mapping ``[B, 1, X, Y, Z]`` float32 to ``[B, F]``.

Feature values from different extractors are not comparable; the report always names the extractor.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

from meddiff_cli.cache import cache_root
from meddiff_cli.devices import resolve_device
from meddiff_cli.errors import BadInputError, ModelError, UsageError

RADIOMICS_NAME = "radiomics-v1"
RADIOMICS_SCALES = (1, 2, 4)
"""Block-average downsampling factors at which intensity, gradient and GLCM features are taken."""
LOG_SIGMAS = (1.0, 2.0, 4.0)
"""Laplacian-of-Gaussian scales (voxels at full resolution): blob-like structures of radius ~sigma*sqrt(3)."""
GLCM_LEVELS = 16
FOREGROUND_THRESHOLD = -0.8
"""Model-space threshold for the shape features: -800 HU with the default CT window; above background for MRI."""
PERCENTILES = (5, 25, 50, 75, 95)
MEDICALNET_DEPTHS = (50, 34, 18, 10)
"""Preference order when several MedicalNet weight files are present."""


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        """``[n, X, Y, Z]`` model-space volumes -> ``[n, F]`` float64 features."""


# ------------------------------------------------------------------------------------------ radiomics


def _downsample(array: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return array
    shape = [s // factor * factor for s in array.shape]
    cropped = array[: shape[0], : shape[1], : shape[2]]
    return cropped.reshape(shape[0] // factor, factor, shape[1] // factor, factor, shape[2] // factor, factor).mean(
        axis=(1, 3, 5)
    )


def _intensity_stats(x: np.ndarray) -> list[float]:
    flat = x.ravel().astype(np.float64)
    mean, std = flat.mean(), flat.std()
    centred = (flat - mean) / std if std > 1e-12 else np.zeros_like(flat)
    counts, _ = np.histogram(flat, bins=32, range=(-1.0, 1.0))
    p = counts[counts > 0] / flat.size
    return [
        mean,
        std,
        float(np.mean(centred**3)),
        float(np.mean(centred**4) - 3.0),
        *np.percentile(flat, PERCENTILES).tolist(),
        float(-(p * np.log(p)).sum()),
    ]


def _gradient_stats(x: np.ndarray) -> list[float]:
    magnitude = np.sqrt(sum(g.astype(np.float64) ** 2 for g in np.gradient(x)))
    return [float(magnitude.mean()), float(magnitude.std()), float(np.percentile(magnitude, 90))]


def glcm(quantised: np.ndarray, levels: int) -> np.ndarray:
    """Symmetric, normalised grey-level co-occurrence matrix averaged over the three unit axis offsets."""
    total = np.zeros((levels, levels))
    for axis in range(3):
        first = np.take(quantised, np.arange(quantised.shape[axis] - 1), axis=axis)
        second = np.take(quantised, np.arange(1, quantised.shape[axis]), axis=axis)
        counts = np.bincount((first * levels + second).ravel(), minlength=levels * levels).reshape(levels, levels)
        total += counts + counts.T
    return total / total.sum()


def glcm_features(matrix: np.ndarray) -> list[float]:
    """Haralick's contrast, homogeneity, energy, correlation and entropy of a symmetric GLCM."""
    i, j = np.indices(matrix.shape, dtype=np.float64)
    mean = (i * matrix).sum()
    variance = (((i - mean) ** 2) * matrix).sum()
    correlation = (((i - mean) * (j - mean) * matrix).sum() / variance) if variance > 1e-12 else 1.0
    nonzero = matrix[matrix > 0]
    return [
        float((((i - j) ** 2) * matrix).sum()),
        float((matrix / (1.0 + (i - j) ** 2)).sum()),
        float((matrix**2).sum()),
        float(correlation),
        float(-(nonzero * np.log(nonzero)).sum()),
    ]


def _quantise(x: np.ndarray, levels: int) -> np.ndarray:
    return np.clip(((x + 1.0) / 2.0 * levels).astype(np.int64), 0, levels - 1)


def _log_stats(x: np.ndarray) -> list[float]:
    values: list[float] = []
    for sigma in LOG_SIGMAS:
        response = -(sigma**2) * ndimage.gaussian_laplace(x.astype(np.float32), sigma=sigma, mode="nearest")
        values += [
            float(np.abs(response).mean()),
            float(response.std()),
            float(np.percentile(response, 99)),  # bright blobs
            float(np.percentile(response, 1)),  # dark blobs
        ]
    return values


def _shape_stats(x: np.ndarray) -> list[float]:
    mask = x > FOREGROUND_THRESHOLD
    count = int(mask.sum())
    if count == 0:
        return [0.0] * 8
    faces = sum(int(np.count_nonzero(np.diff(np.pad(mask, 1), axis=axis))) for axis in range(3))
    coords = np.nonzero(mask)
    shape = np.asarray(mask.shape, dtype=np.float64)
    extents = [(c.max() - c.min() + 1) / s for c, s in zip(coords, shape, strict=True)]
    centroid = [(c.mean() - (s - 1) / 2) / s for c, s in zip(coords, shape, strict=True)]
    return [count / mask.size, faces / count, *extents, *centroid]


def radiomics_feature_names() -> list[str]:
    names: list[str] = []
    for scale in RADIOMICS_SCALES:
        prefix = f"s{scale}_"
        names += [prefix + n for n in ("mean", "std", "skewness", "kurtosis")]
        names += [f"{prefix}p{p}" for p in PERCENTILES] + [prefix + "hist_entropy"]
        names += [prefix + n for n in ("grad_mean", "grad_std", "grad_p90")]
        names += [prefix + "glcm_" + n for n in ("contrast", "homogeneity", "energy", "correlation", "entropy")]
    for sigma in LOG_SIGMAS:
        names += [f"log{sigma:g}_{n}" for n in ("abs_mean", "std", "p99", "p1")]
    names += ["fg_fraction", "fg_surface_to_volume", "fg_extent_i", "fg_extent_j", "fg_extent_k"]
    names += ["fg_centroid_i", "fg_centroid_j", "fg_centroid_k"]
    return names


def radiomics_features(array: np.ndarray) -> np.ndarray:
    """The ``radiomics-v1`` feature vector of one model-space volume (see :func:`radiomics_feature_names`)."""
    x = np.asarray(array, dtype=np.float32)
    values: list[float] = []
    for scale in RADIOMICS_SCALES:
        level = _downsample(x, scale)
        values += _intensity_stats(level)
        values += _gradient_stats(level)
        values += glcm_features(glcm(_quantise(level, GLCM_LEVELS), GLCM_LEVELS))
    values += _log_stats(x)
    values += _shape_stats(x)
    return np.asarray(values, dtype=np.float64)


@dataclass
class RadiomicsExtractor:
    """Weight-free features; the loader computes them per volume (in parallel) and this just stacks them."""

    name: str = RADIOMICS_NAME
    runs_on: str = "cpu (numpy)"

    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        return np.stack([radiomics_features(v) for v in volumes])


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


def make_extractor(spec: str, device: str = "auto", cache: str | Path | None = None) -> FeatureExtractor:
    """``auto`` | ``radiomics`` | ``medicalnet`` | path to an ``.onnx`` file."""
    if spec == "radiomics":
        return RadiomicsExtractor()
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
        raise UsageError(f"--features must be auto, radiomics, medicalnet or an existing .onnx file, got {spec!r}")
    if path.suffix.lower() != ".onnx":
        raise BadInputError("feature extractor file must be an .onnx model", path)
    return OnnxExtractor(path, torch_device_name(device))


def feature_names(extractor: FeatureExtractor, count: int) -> Sequence[str]:
    return radiomics_feature_names() if isinstance(extractor, RadiomicsExtractor) else [f"f{i}" for i in range(count)]
