"""The model card: the single config object that travels from ``train`` through ``export`` to ``sample``.

It is stored as ``model.json`` beside the weights. It holds everything needed to rebuild the networks,
run the sampler and map samples back to physical units — and nothing identifying about training data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meddiff_cli import __version__
from meddiff_cli.errors import ModelError
from meddiff_cli.fsutil import atomic_write_json
from meddiff_cli.modality import MODALITIES

CARD_FILE = "model.json"
CARD_FORMAT = "meddiff-model"
CARD_VERSION = 1


def latent_normalization(card: ModelCard) -> tuple[list[float], list[float]]:
    """Per-channel ``(shift, scale)`` of the diffusion latents: the denoiser sees ``(z - shift) * scale``.

    Unset means the diffusion stage never ran, so there is nothing to sample."""
    latent = card.latent
    channels = int(latent.get("channels") or 0)
    if latent.get("scale") is not None and latent.get("shift") is not None:
        return [float(v) for v in latent["shift"]], [float(v) for v in latent["scale"]]
    if latent.get("scale_factor") is not None and channels:
        return [0.0] * channels, [float(latent["scale_factor"])] * channels
    raise ModelError(f"model {card.name!r} has no trained denoiser yet (latent normalisation unset): "
                     "run `meddiff train` through the diffusion stage first")


def intensity_calibration(mapping: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """``(decoded, real)`` knots of a modality's intensity calibration, or None when it has none.

    Sampling maps each decoded voxel ``v`` (model space, after clipping) to ``np.interp(v, decoded, real)``:
    quantile mapping of the decoder's output onto real intensities, fitted on training cases
    (``scripts/fit_intensity_calibration.py``; why: docs/model.md). Knots must rise strictly, targets must not
    fall, and both stay in [-1, 1]; a card breaking that fails here, before any denoising."""
    calibration = mapping.get("calibration")
    if calibration is None:
        return None
    try:
        decoded = [float(v) for v in calibration["decoded"]]
        real = [float(v) for v in calibration["real"]]
    except (KeyError, TypeError, ValueError):
        raise ModelError("intensity calibration needs two lists of numbers, 'decoded' and 'real'") from None
    if len(decoded) != len(real) or len(decoded) < 2:
        raise ModelError("intensity calibration: 'decoded' and 'real' need the same length, at least 2")
    rising = all(b > a for a, b in zip(decoded, decoded[1:])) and all(b >= a for a, b in zip(real, real[1:]))
    if not rising or min(decoded + real) < -1.0 or max(decoded + real) > 1.0:
        raise ModelError("intensity calibration must be monotone and within [-1, 1]")
    return decoded, real


@dataclass
class ModelCard:
    """Everything about a trained model except its weights.

    * ``modalities``: class labels of the denoiser, index = class id (e.g. ``["ct", "mri"]``).
    * ``volume``: ``{"shape": [X, Y, Z], "spacing": [sx, sy, sz]}`` of generated volumes (RAS+), plus
      ``"spacing_by_modality": {modality: [sx, sy, sz]}`` when modalities were trained at different spacings
      (one network serves a chest CT at 6 mm and a brain MRI at 3.5 mm: same grid, different field of view).
    * ``intensity``: per modality, how model space [-1, 1] maps back to physical units, e.g.
      ``{"ct": {"kind": "ct_window", "window": [-1000, 1000], "unit": "HU"}}`` or
      ``{"mri": {"kind": "percentile", "unit": "a.u.", "output_range": [0, 1000]}}``; optionally a
      ``"calibration"`` applied to decoded volumes first (:func:`intensity_calibration`).
    * ``autoencoder`` / ``denoiser``: keyword arguments of the MONAI networks (see networks.py).
    * ``objective``: ``"rectified_flow"`` (velocity prediction, Euler sampling); ``scheduler`` its settings.
    * ``latent``: ``{"channels": C, "shape": [x, y, z], "shift": [C], "scale": [C]}`` — the denoiser works on
      ``(z - shift) * scale`` per channel (training latents standardised to mean 0, std 1), decoding inverts it.
      Older cards hold one ``"scale_factor": s`` instead (shift 0, the same scale for every channel).
    * ``training``: counts, steps, seeds and settings — never paths or identifiers.
    * ``sampling``: the rectified-flow convention the denoiser was trained with (velocity definition,
      time direction, class labels, output clipping, a sensible default step count) — see docs/model.md.
    * ``labels``: the label decoder's channels per modality (:mod:`meddiff_cli.model.labels`); empty when the
      model generates images only.
    * ``modality_decoders``: modalities that decode with a decoder of their own (``decoder_<modality>.safetensors``,
      fine-tuned on that modality with the encoder frozen, so the latent space and the denoiser stay shared);
      the others use the autoencoder's decoder. Why: docs/model.md ("a decoder per modality").
    * ``files``: weight/ONNX file name → sha256, checked before anything is loaded.
    """

    name: str
    preset: str
    modalities: list[str]
    volume: dict[str, Any]
    intensity: dict[str, dict[str, Any]]
    autoencoder: dict[str, Any]
    denoiser: dict[str, Any]
    objective: str = "rectified_flow"
    scheduler: dict[str, Any] = field(default_factory=lambda: {"num_train_timesteps": 1000})
    latent: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    modality_decoders: list[str] = field(default_factory=list)
    meddiff_version: str = __version__
    format: str = CARD_FORMAT
    format_version: int = CARD_VERSION

    def class_id(self, modality: str) -> int:
        """Denoiser class index of a modality; a clear error if the model was not trained on it."""
        if modality not in self.modalities:
            raise ModelError(f"model {self.name!r} was trained on {', '.join(self.modalities)}, not {modality!r}")
        return self.modalities.index(modality)

    def own_decoder(self, modality: str) -> str | None:
        """``modality`` when it has a decoder of its own (see ``modality_decoders``), else None."""
        return modality if modality in self.modality_decoders else None

    def spacing(self, modality: str) -> list[float]:
        """Voxel size (mm) of generated volumes of ``modality``."""
        by_modality = self.volume.get("spacing_by_modality") or {}
        return [float(v) for v in by_modality.get(modality, self.volume["spacing"])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> ModelCard:
        if data.get("format") != CARD_FORMAT:
            raise ModelError("not a meddiff model card (missing format: meddiff-model)", source)
        if int(data.get("format_version", 0)) > CARD_VERSION:
            raise ModelError(
                f"model card format {data.get('format_version')} is newer than this meddiff understands "
                f"({CARD_VERSION}); upgrade meddiff", source,
            )
        known = set(cls.__dataclass_fields__)
        try:
            card = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as error:
            raise ModelError(f"incomplete model card: {error}", source) from None
        own = card.modality_decoders  # names become file names: only modalities meddiff knows
        if not isinstance(own, list) or not set(own) <= set(card.modalities) & set(MODALITIES):
            raise ModelError(f"modality_decoders {card.modality_decoders!r} must list modalities of the model "
                             f"({', '.join(card.modalities)})", source)
        return card

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CARD_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder_or_file: str | Path) -> ModelCard:
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / CARD_FILE
        if not path.is_file():
            raise ModelError("model card not found", path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelError(f"unreadable model card ({error})", path) from None
        if not isinstance(data, dict):
            raise ModelError("model card is not a JSON object", path)
        return cls.from_dict(data, path)
