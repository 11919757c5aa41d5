"""Memory limits of sampling: ``--max-memory`` sizes the batch up front, an out-of-memory error halves it."""

from __future__ import annotations

import math

import torch

from meddiff_cli.errors import DeviceError, UsageError
from meddiff_cli.model.card import ModelCard
from meddiff_cli.sample.options import SampleOptions, SampleProgress, SampleResult

OOM_MARKERS = ("out of memory", "failed to allocate", "can't allocate memory")
ACTIVATION_FACTOR = 4
"""Live full-resolution tensors per decoder conv layer (input, output, GroupNorm/residual copy, skip)."""


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA (or CPU allocator) OOM from torch, or ORT's RuntimeException/Fail saying it could not allocate."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

        kinds: tuple[type, ...] = (RuntimeError, MemoryError, Fail, RuntimeException)
    except ImportError:
        kinds = (RuntimeError, MemoryError)
    text = str(error).lower()
    return isinstance(error, kinds) and (isinstance(error, MemoryError) or any(m in text for m in OOM_MARKERS))


def halve_batch(size: int, error: BaseException, result: SampleResult, progress: SampleProgress) -> int:
    """Record an OOM and return the next batch size; batch 1 failing is a DeviceError (exit 7)."""
    detail = " ".join(str(error).split())[:160]
    if size <= 1:
        raise DeviceError(f"out of memory even with --batch-size 1 ({detail}); use a GPU with more memory, "
                          "--precision fp16 or --device cpu")
    new = max(1, size // 2)
    result.batch_reductions.append({"from": size, "to": new, "reason": f"out of memory: {detail}"})
    progress.batch_reduced(size, new, "out of memory")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return new


def estimate_volume_memory(card: ModelCard, precision: str) -> int:
    """Rough peak bytes one volume of a batch adds while sampling (docs/reliability.md, "Resource limits").

    max(decoder at full resolution: voxels x first decoder channels x ACTIVATION_FACTOR,
        denoiser: per level latent voxels x channels x ACTIVATION_FACTOR + attention matrices tokens^2 x heads)
    + the decoded volume twice (device output + host copy, float32). Weights are counted once, separately.
    """
    element = 2 if precision in ("fp16", "bf16") else 4  # bf16 autocast keeps activations in bf16
    voxels = math.prod(int(s) for s in card.volume["shape"])
    latent_voxels = math.prod(int(s) for s in card.latent["shape"])
    decoder = voxels * int(card.autoencoder["channels"][0]) * ACTIVATION_FACTOR * element
    denoiser = 0
    channels = [int(c) for c in card.denoiser["channels"]]
    attention = list(card.denoiser.get("attention_levels", [False] * len(channels)))
    head_channels = int(card.denoiser.get("num_head_channels", channels[0]) or channels[0])
    for level, width in enumerate(channels):
        tokens = max(1, latent_voxels // 8**level)
        size = tokens * width * ACTIVATION_FACTOR * element
        if level < len(attention) and attention[level]:
            size += tokens * tokens * max(1, width // head_channels) * element
        denoiser = max(denoiser, size)
    return max(decoder, denoiser) + 2 * voxels * 4


def batch_size_for_memory(card: ModelCard, options: SampleOptions, pending: int, progress: SampleProgress) -> int:
    """``--batch-size``, lowered up front so the estimated peak stays under ``--max-memory`` GB."""
    requested = max(1, min(options.batch_size, pending))
    if options.max_memory_gb is None:
        return requested
    limit = options.max_memory_gb * 1024**3
    element = 2 if options.precision == "fp16" else 4  # bf16 autocast keeps fp32 weights
    weights = sum(math.prod(int(s) for s in shape) for shape in _weight_shapes(card)) * element
    per_volume = estimate_volume_memory(card, options.precision)
    fits = int((limit - weights) // per_volume)
    if fits < 1:
        need = (weights + per_volume) / 1024**3
        raise UsageError(f"--max-memory {options.max_memory_gb:g} GB is too small for this model: one volume "
                         f"needs about {need:.2f} GB (estimate); raise the limit or use --precision fp16")
    if fits < requested:
        progress.batch_reduced(requested, fits, f"--max-memory {options.max_memory_gb:g} GB")
        return fits
    return requested


def _weight_shapes(card: ModelCard) -> list[tuple[int, ...]]:
    """Parameter shapes of both networks, built on the meta device (no memory, no weights read)."""
    from meddiff_cli.model.networks import build_autoencoder, build_denoiser

    with torch.device("meta"):
        modules = (build_autoencoder(card), build_denoiser(card))
    return [tuple(p.shape) for module in modules for p in module.parameters()]
