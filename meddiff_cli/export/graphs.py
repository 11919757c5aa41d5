"""The sampler as two ONNX graphs (denoiser, decoder), exported and verified against torch.

Graphs (opset 18 by default, dynamic batch axis):

* ``onnx/denoiser.<prec>.onnx``: ``latent`` [B, C, x, y, z] (float32 or float16), ``timestep`` [B] float32,
  ``class_id`` [B] int64 → ``velocity`` [B, C, x, y, z].
* ``onnx/decoder.<prec>.onnx``: ``latent`` [B, C, x, y, z] (scaled latent) → ``volume`` [B, 1, X, Y, Z]
  in model intensity space; ``onnx/decoder_<modality>.<prec>.onnx`` the same for each modality with a decoder of
  its own (card ``modality_decoders``).

fp16 graphs are exported from a ``.half()`` torch model (onnxconverter-common's conversion produced graphs
that failed to load) and verified against the fp32 torch model, i.e. the error reported is the real cost
of half precision. An untrained MONAI UNet outputs exactly zero (zero-initialised output conv), which
would make any comparison pass, so verification refuses networks whose output is all ~0.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddiff_cli.errors import ModelError
from meddiff_cli.export.options import (
    DEFAULT_OPSET, DEFAULT_PRECISION, GRAPH_REVISION, TOLERANCE, check_precision, onnx_files,
)
from meddiff_cli.fsutil import atomic_path, output_folder, sha256_file
from meddiff_cli.model.card import CARD_FILE, ModelCard, latent_normalization
from meddiff_cli.model.networks import DecoderForExport, DenoiserForExport
from meddiff_cli.model.registry import model_lock
from meddiff_cli.model.store import AUTOENCODER_FILE, load_modality_decoder, load_model
from meddiff_cli.runtime.onnx import create_session

ZERO_OUTPUT_THRESHOLD = 1e-6


def graph_files(card: ModelCard, precision: str) -> list[str]:
    """Every graph of ``precision`` a model has: denoiser, shared decoder, each modality's own decoder."""
    return [*onnx_files(precision), *(onnx_files(precision, m)[1] for m in card.modality_decoders)]


def has_onnx(card: ModelCard, folder: Path, precision: str) -> bool:
    """Graphs of ``precision`` are on disk, and are current or cannot be exported again (an ONNX-only folder)."""
    present = all(name in card.files and (folder / name).is_file() for name in graph_files(card, precision))
    current = card.sampling.get("onnx_graph_revision") == GRAPH_REVISION or AUTOENCODER_FILE not in card.files
    return present and current


@dataclass
class ExportResult:
    folder: Path
    precision: str
    files: dict[str, str]  # card-relative name -> sha256
    relative_error: dict[str, float]
    exporter: str
    verified_on: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder), "precision": self.precision, "files": self.files,
            "relative_error": self.relative_error, "tolerance": TOLERANCE[self.precision],
            "exporter": self.exporter, "verified_on": self.verified_on,
        }


def export_model(model_folder: str | Path, precision: str = DEFAULT_PRECISION, out: str | Path | None = None,
                 opset: int = DEFAULT_OPSET, seed: int = 0) -> ExportResult:
    """Export + verify both graphs, then record their sha256 in the card (model folder, or ``out``).

    With ``out``, the target folder becomes a self-contained ONNX-only model: the card copied there lists
    only the ONNX files, so ``meddiff sample --model OUT --backend onnx`` works without the weights.
    """
    check_precision(precision)
    model_folder = Path(model_folder)
    target = output_folder(out if out is not None else model_folder)
    with model_lock(target):
        return _export_locked(model_folder, target, precision, opset, seed, copy_card=out is not None)


def ensure_onnx(model_folder: str | Path, precision: str) -> bool:
    """Export the graphs of ``precision`` unless present (first use of ``meddiff sample``); True if exported.

    Checked again under the lock, so concurrent shards export once and the others wait for it.
    """
    model_folder = Path(model_folder)
    if has_onnx(ModelCard.load(model_folder), model_folder, precision):
        return False
    with model_lock(model_folder):
        if has_onnx(ModelCard.load(model_folder), model_folder, precision):
            return False
        _export_locked(model_folder, model_folder, precision, DEFAULT_OPSET, seed=0, copy_card=False)
    return True


def _export_locked(model_folder: Path, target: Path, precision: str, opset: int, seed: int,
                   copy_card: bool) -> ExportResult:
    card, autoencoder, unet = load_model(model_folder)
    denoiser = DenoiserForExport(unet).eval()
    decoder = DecoderForExport(autoencoder, *latent_normalization(card)).eval()
    generator = torch.Generator().manual_seed(seed)
    export_inputs = _random_inputs(card, batch=2, generator=generator)
    check_inputs = _random_inputs(card, batch=3, generator=generator)  # another batch size: dynamic axis works
    _refuse_trivial(denoiser, check_inputs)

    names = onnx_files(precision)
    specs = [
        (names[0], denoiser, export_inputs, check_inputs, ["latent", "timestep", "class_id"], ["velocity"]),
        (names[1], decoder, export_inputs[:1], check_inputs[:1], ["latent"], ["volume"]),
    ]
    for modality in card.modality_decoders:
        own_autoencoder = copy.deepcopy(autoencoder)  # only the decoder tensors are read again
        load_modality_decoder(own_autoencoder, model_folder, card, modality)
        own = DecoderForExport(own_autoencoder, *latent_normalization(card)).eval()
        specs.append((onnx_files(precision, modality)[1], own, export_inputs[:1], check_inputs[:1], ["latent"], ["volume"]))
    files: dict[str, str] = {}
    errors: dict[str, float] = {}
    exporter = verified_on = ""
    for name, module, example, check, input_names, output_names in specs:
        final = target / name
        with atomic_path(final, suffix=".onnx") as tmp:
            exporter = _export_graph(module, example, tmp, input_names, output_names, precision, opset)
            error, verified_on = _verify_graph(tmp, module, check, input_names, precision)
            if not error <= TOLERANCE[precision]:
                raise ModelError(
                    f"ONNX export does not match torch: relative error {error:.2e} > {TOLERANCE[precision]:.0e}",
                    final,
                )
            files[name] = sha256_file(tmp)
            errors[name] = error
    if copy_card:  # an ONNX-only model folder: keep graphs of other precisions exported there before
        previous = ModelCard.load(target).files if (target / CARD_FILE).is_file() else {}
        card = copy.deepcopy(card)
        card.files = {k: v for k, v in previous.items() if k.startswith("onnx/") and (target / k).is_file()}
        card.labels = {}  # the label decoder runs in PyTorch and is not copied: this folder cannot make pairs
    card.files.update(files)
    card.sampling["onnx_graph_revision"] = GRAPH_REVISION
    card.save(target)
    return ExportResult(target, precision, files, errors, exporter, verified_on)


def _random_inputs(card: ModelCard, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    channels = int(card.latent.get("channels", card.autoencoder["latent_channels"]))
    latent = torch.randn(batch, channels, *card.latent["shape"], generator=generator)
    timesteps = torch.rand(batch, generator=generator) * float(card.scheduler.get("num_train_timesteps", 1000))
    class_id = torch.randint(0, len(card.modalities), (batch,), generator=generator)
    return latent, timesteps, class_id


@torch.no_grad()
def _refuse_trivial(denoiser: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    output = denoiser(*inputs)
    if float(output.abs().max()) < ZERO_OUTPUT_THRESHOLD:
        raise ModelError(
            "the denoiser outputs all zeros (an untrained MONAI UNet does): refusing to export a graph "
            "that cannot be verified; train the model first"
        )


def _cast_inputs(inputs: tuple[torch.Tensor, ...], precision: str) -> tuple[torch.Tensor, ...]:
    """Only the latent follows the precision; timesteps stay float32 and class ids int64 in every graph."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return (inputs[0].to(dtype), *inputs[1:])


def _export_graph(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                  output_names: list[str], precision: str, opset: int) -> str:
    """TorchScript-based exporter (matched torch to ~1e-3 on MONAI UNets); dynamo exporter as fallback."""
    module = copy.deepcopy(module).eval()
    if precision == "fp16":
        module = module.half()
    example = _cast_inputs(example, precision)
    dynamic_axes = {name: {0: "batch"} for name in input_names + output_names}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about MONAI's shape checks are expected
            torch.onnx.export(module, example, str(path), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
        return "torchscript"
    except (TypeError, RuntimeError, NotImplementedError) as error:
        legacy_error = error
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        shapes = tuple({0: batch} for _ in input_names)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, example, input_names=input_names, output_names=output_names,
                                        dynamic_shapes=shapes, opset_version=opset, dynamo=True,
                                        verbose=False)
            program.save(str(path))
        return "dynamo"
    except Exception as error:  # exporter internals raise many types; report both failures in one line
        raise ModelError(f"ONNX export failed (torchscript: {legacy_error}; dynamo: {error})", path) from None


@torch.no_grad()
def _verify_graph(path: Path, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
                  precision: str) -> tuple[float, str]:
    """Relative error ‖onnx − torch fp32‖ / ‖torch fp32‖ on inputs the exporter never saw."""
    reference = module(*inputs).float().numpy()
    try:
        session, provider = create_session(path, device="cpu")
        feeds = {name: value.numpy() for name, value in zip(input_names, _cast_inputs(inputs, precision))}
        output = session.run(None, feeds)[0]
    except Exception as cpu_error:  # some fp16 kernels exist only on CUDA: verify there instead
        if precision != "fp16" or not torch.cuda.is_available():
            raise ModelError(f"ONNX Runtime cannot run the exported graph ({cpu_error})", path) from None
        session, provider = create_session(path, device="cuda")
        feeds = {name: value.numpy() for name, value in zip(input_names, _cast_inputs(inputs, precision))}
        output = session.run(None, feeds)[0]
    output = np.asarray(output, dtype=np.float32)
    if output.shape != reference.shape or not np.all(np.isfinite(output)):
        return float("inf"), provider
    return float(np.linalg.norm(output - reference) / max(np.linalg.norm(reference), 1e-12)), provider
