"""On-disk model layout and safe weight loading (safetensors only, sha256-verified; nothing is unpickled).

``<cache>/models/<NAME>/``::

    model.json                 the model card (ModelCard); ``files`` maps each file below to its sha256
    autoencoder.safetensors    autoencoder weights used for sampling (EMA where trained with EMA)
    denoiser.safetensors       denoiser weights used for sampling (EMA)
    decoder_<MODALITY>.safetensors  optional: that modality's own decoder tensors (card ``modality_decoders``),
                               which replace the autoencoder's when it is sampled
    label_decoder.safetensors  optional: latent -> label map logits (``train --stage labels``; card ``labels``)
    onnx/…                     exported graphs (added by ``meddiff export``)
    checkpoint/                training state for ``--resume`` (train only; not needed to sample)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes, save as safetensors_bytes

from meddiff_cli.errors import ModelError
from meddiff_cli.fsutil import atomic_write_bytes, sha256_file
from meddiff_cli.model.card import CARD_FILE, ModelCard, latent_normalization
from meddiff_cli.model.labels import LABEL_DECODER_FILE, modality_labels
from meddiff_cli.model.networks import LabelMapForExport, build_autoencoder, build_denoiser, build_label_decoder

AUTOENCODER_FILE = "autoencoder.safetensors"
DENOISER_FILE = "denoiser.safetensors"
DECODER_PREFIXES = ("post_quant_conv.", "decoder.")
"""The autoencoder tensors that decode (a modality's own decoder file holds exactly these)."""


def decoder_file(modality: str) -> str:
    """File name of ``modality``'s own decoder."""
    return f"decoder_{modality}.safetensors"


def sampling_weights(card: ModelCard, modality: str) -> tuple[str, ...]:
    """The weight files that sample ``modality``."""
    own = card.own_decoder(modality)
    return (AUTOENCODER_FILE, DENOISER_FILE, *((decoder_file(own),) if own else ()))


def save_state_dict(module_or_state: torch.nn.Module | dict[str, torch.Tensor], path: str | Path,
                    metadata: dict[str, str] | None = None) -> str:
    """Write weights as safetensors atomically; return the file's sha256. The same tensors and metadata give the
    same bytes (and so the same sha256, which names the model in every sampling run)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write_bytes(path, canonical_safetensors(safetensors_bytes(tensors, metadata=metadata)))
    return sha256_file(path)


def canonical_safetensors(blob: bytes) -> bytes:
    """``blob`` with its ``__metadata__`` keys sorted: safetensors writes them in hash-map order, which changes
    from one process to the next. The header keeps its length (same keys and values, padded with spaces)."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    if "__metadata__" not in header:
        return blob
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # cannot happen for the same keys and values; never write a broken file
        raise ValueError("safetensors header grew while sorting its metadata")
    return blob[:8] + text.ljust(size) + blob[8 + size:]


def read_verified(path: str | Path, expected_sha256: str | None) -> bytes:
    """The file's bytes, after checking their sha256 against the card's.

    Loaders parse exactly these bytes (never the path again), so a file swapped between the check and
    the load cannot slip through.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file missing", path)
    if expected_sha256 is None:
        raise ModelError("file is not listed in the model card, refusing to load it", path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"unreadable model file ({error.strerror or error})", path) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ModelError(f"sha256 mismatch (expected {expected_sha256[:12]}…, got {actual[:12]}…): file was modified", path)
    return data


def load_state_dict(path: str | Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    data = read_verified(path, expected_sha256)
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, OSError) as error:
        raise ModelError(f"unreadable safetensors file ({error})", path) from None


def save_model(card: ModelCard, autoencoder: torch.nn.Module, denoiser: torch.nn.Module, folder: str | Path) -> Path:
    """Save sampling weights and the card (card last, so a card never points at missing weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card.files[AUTOENCODER_FILE] = save_state_dict(autoencoder, folder / AUTOENCODER_FILE)
    card.files[DENOISER_FILE] = save_state_dict(denoiser, folder / DENOISER_FILE)
    card.save(folder)
    return folder


def save_modality_decoder(card: ModelCard, autoencoder: torch.nn.Module, modality: str, folder: str | Path) -> Path:
    """Save ``autoencoder``'s decoder as ``modality``'s own (its encoder must be the model's) and list it in the card."""
    folder = Path(folder)
    card.class_id(modality)
    decoder = {k: v for k, v in autoencoder.state_dict().items() if k.startswith(DECODER_PREFIXES)}
    card.files[decoder_file(modality)] = save_state_dict(decoder, folder / decoder_file(modality))
    card.modality_decoders = sorted({*card.modality_decoders, modality})
    card.save(folder)
    return folder / decoder_file(modality)


def drop_modality_decoders(card: ModelCard) -> None:
    """Unlist every modality's own decoder: they decode the latents of the encoder they were tuned with, and the
    caller is about to change it (stage-1 training, a new model reusing the autoencoder)."""
    for modality in card.modality_decoders:
        card.files.pop(decoder_file(modality), None)
    card.modality_decoders = []


def load_model(folder: str | Path, device: str | torch.device = "cpu", modality: str | None = None,
               ) -> tuple[ModelCard, torch.nn.Module, torch.nn.Module]:
    """Load card + networks in eval mode after verifying every weight file's sha256.

    ``modality``: the autoencoder decodes with that modality's own decoder where the card has one."""
    folder = Path(folder)
    if not (folder / CARD_FILE).is_file():
        raise ModelError("not a meddiff model folder (no model.json)", folder)
    card = ModelCard.load(folder)
    autoencoder = build_autoencoder(card)
    denoiser = build_denoiser(card)
    for module, name in ((autoencoder, AUTOENCODER_FILE), (denoiser, DENOISER_FILE)):
        _load_weights(module, folder / name, load_state_dict(folder / name, card.files.get(name)))
    if modality:
        load_modality_decoder(autoencoder, folder, card, modality)
    return card, autoencoder.to(device).eval(), denoiser.to(device).eval()


def load_modality_decoder(autoencoder: torch.nn.Module, folder: Path, card: ModelCard, modality: str) -> None:
    """Put ``modality``'s own decoder (sha256-verified) into ``autoencoder``; nothing when it has none."""
    own = card.own_decoder(modality)
    if not own:
        return
    path = folder / decoder_file(own)
    decoder = load_state_dict(path, card.files.get(decoder_file(own)))
    if set(decoder) != {k for k in autoencoder.state_dict() if k.startswith(DECODER_PREFIXES)}:
        raise ModelError("not a decoder of this model's autoencoder (its tensor names differ)", path)
    _load_weights(autoencoder, path, {**autoencoder.state_dict(), **decoder})


def _load_weights(module: torch.nn.Module, path: Path, state: dict[str, torch.Tensor]) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(f"weights do not match the model card's architecture ({str(error)[:200]})", path) from None


def load_label_map(folder: str | Path, card: ModelCard, modalities: list[str]) -> LabelMapForExport:
    """The label decoder wrapped to map normalised latents to label values (sha256-verified, eval mode).

    ``modalities``: those the caller will ask for; each must have a label set (else a ModelError naming it).
    """
    for modality in modalities:
        modality_labels(card.labels, modality, card.name)
    decoder = build_label_decoder(card)
    path = Path(folder) / LABEL_DECODER_FILE
    try:
        decoder.load_state_dict(load_state_dict(path, card.files.get(LABEL_DECODER_FILE)))
    except RuntimeError as error:
        raise ModelError(f"weights do not match the model card's label table ({str(error)[:200]})", path) from None
    channels = int(card.labels["channels"])
    masks, values = [], [0] * channels
    for modality in card.modalities:
        entry = card.labels["modalities"].get(modality)
        owned = set(entry["channels"]) if entry else set()
        masks.append([c in owned for c in range(channels)])
        for channel, value in zip(entry["channels"] if entry else [], entry["values"] if entry else []):
            values[channel] = int(value)
    return LabelMapForExport(decoder, *latent_normalization(card), masks, values).eval()
