"""``meddiff sample``: rectified-flow sampling in latent space, decoding, and resumable, shardable outputs.

Reproducibility contract: volume ``i`` of a run with seed ``S`` starts from the latent noise
``torch.randn((C, *latent_shape), generator=torch.Generator().manual_seed(volume_seed(S, i)))`` drawn on
CPU, so neither ``--batch-size`` nor ``--shard`` nor the device changes which volume index ``i`` gets
(up to floating-point differences between kernels).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from monai.networks.schedulers import RFlowScheduler

from meddiff_cli import __version__
from meddiff_cli.errors import DeviceError, ModelError, UsageError
from meddiff_cli.export import check_precision, ensure_onnx, onnx_files
from meddiff_cli.fsutil import TMP_PREFIX, atomic_write_json, remove_stale_temps
from meddiff_cli.io.volume import Volume
from meddiff_cli.model.card import ModelCard, latent_normalization
from meddiff_cli.model.store import AUTOENCODER_FILE, DENOISER_FILE, load_model, read_verified
from meddiff_cli.models import resolve_model
from meddiff_cli.devices import parse_device
from meddiff_cli.sample.backends import OnnxBackend, TorchBackend, cpu_threads
from meddiff_cli.sample.writers import (
    centred_ras_affine, check_format, output_name, output_sha256, to_physical, write_output,
)
from meddiff_cli.train.previews import save_preview

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "meddiff-synthetic"
MANIFEST_VERSION = 1
SAMPLERS = ("euler", "heun")
BACKENDS = ("onnx", "torch")
DEFAULT_STEPS = 20
PREVIEW_DIR = "previews"
WRITER_THREADS = 4
# Settings that change the voxels: a manifest written with other values describes other volumes.
RUN_KEY_FIELDS = ("model_sha256", "modality", "seed", "steps", "sampler", "backend", "precision", "file_format")


@dataclass
class SampleOptions:
    modality: str
    count: int
    out: Path
    model: str | None = None
    cache_dir: Path | None = None
    steps: int = DEFAULT_STEPS
    sampler: str = "euler"
    seed: int = 0
    batch_size: int = 4
    file_format: str = "nifti"
    device: str = "auto"
    backend: str = "onnx"
    precision: str = "fp32"
    shard: tuple[int, int] | None = None
    preview: bool = False
    overwrite: bool = False
    compile: bool = False
    max_memory_gb: float | None = None


@dataclass
class SampleResult:
    out: Path
    manifest: Path
    generated: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    device: str = ""
    provider: str = ""
    shard: tuple[int, int] = (0, 1)
    seconds: float = 0.0
    exported: bool = False
    batch_size: int = 0
    batch_reductions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        done = len(self.generated)
        return {
            "out": str(self.out), "manifest": str(self.manifest), "generated": done, "skipped": len(self.skipped),
            "shard": f"{self.shard[0]}/{self.shard[1]}", "device": self.device, "provider": self.provider,
            "exported_onnx": self.exported, "seconds": round(self.seconds, 3),
            "batch_size": self.batch_size, "batch_size_reductions": self.batch_reductions,
            "volumes_per_s": round(done / self.seconds, 4) if self.seconds > 0 and done else None,
            "files": sorted(self.generated + self.skipped, key=lambda entry: entry["index"]),
        }


class SampleProgress:
    """Hooks for the CLI's progress bars (no-ops by default, so the library stays UI-free)."""

    def start(self, total: int, pending: int) -> None: ...
    def ready(self, device: str, provider: str, exported: bool) -> None: ...
    def batch(self, size: int, steps: int) -> None: ...
    def step(self) -> None: ...
    def volume(self, entry: dict[str, Any]) -> None: ...
    def batch_reduced(self, old: int, new: int, reason: str) -> None: ...


# ---------------------------------------------------------------------------------------- seeds, shards


def volume_seed(run_seed: int, index: int) -> int:
    """A 63-bit seed for volume ``index`` of run ``run_seed`` (numpy SeedSequence: well-mixed, documented)."""
    words = np.random.SeedSequence([int(run_seed) & 0xFFFFFFFFFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & 0x7FFFFFFFFFFFFFFF


def initial_noise(run_seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(volume_seed(run_seed, index))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``I/N`` (0-based I) → (I, N); None when not given."""
    if text is None or text == "":
        return None
    try:
        index_text, total_text = text.split("/")
        index, total = int(index_text), int(total_text)
    except ValueError:
        raise UsageError(f"invalid --shard {text!r}: expected I/N, e.g. 0/4") from None
    if total < 1 or not 0 <= index < total:
        raise UsageError(f"invalid --shard {text!r}: need 0 <= I < N")
    return index, total


def torchrun_shard() -> tuple[int, int] | None:
    """Under torchrun (RANK/WORLD_SIZE set), every rank takes its own shard automatically."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        return int(os.environ.get("RANK", "0")), world
    return None


def torchrun_device(device: str) -> str:
    """Put each torchrun rank on its own GPU (LOCAL_RANK) unless the user named an index."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and device in {"auto", "cuda"} and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f"cuda:{int(local_rank)}" if device == "cuda" or torch.cuda.is_available() else device
    return device


# ------------------------------------------------------------------------------------------- sampling


def build_scheduler(card: ModelCard) -> RFlowScheduler:
    if card.objective != "rectified_flow":
        raise ModelError(f"model objective {card.objective!r} is not supported by this sampler (rectified_flow only)")
    try:
        return RFlowScheduler(**card.scheduler)
    except (TypeError, ValueError) as error:
        raise ModelError(f"model card has invalid scheduler settings ({error})") from None


def sample_latents(backend, scheduler: RFlowScheduler, noise: torch.Tensor, class_id: int, steps: int,
                   sampler: str = "euler", on_step=None) -> torch.Tensor:
    """Integrate the learned velocity from noise (t = T) to data (t = 0) with MONAI's RFlowScheduler.

    ``euler`` is ``RFlowScheduler.step``; ``heun`` adds a corrector evaluation at the next timestep (2 network
    calls per step; the final step to t = 0 stays Euler, as in EDM's Heun sampler).
    """
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown --sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    scheduler.set_timesteps(steps, input_img_size_numel=int(math.prod(noise.shape[2:])))
    timesteps = [float(t) for t in scheduler.timesteps.cpu()]
    device = backend.torch_device
    latent = noise.to(device)
    classes = torch.full((latent.shape[0],), class_id, dtype=torch.int64, device=device)
    for position, t in enumerate(timesteps):
        next_t = timesteps[position + 1] if position + 1 < len(timesteps) else 0.0
        velocity = backend.denoise(latent, torch.full((latent.shape[0],), t, device=device), classes)
        predicted, _ = scheduler.step(velocity, t, latent, next_t)
        if sampler == "heun" and next_t > 0:
            dt = (t - int(next_t)) / scheduler.num_train_timesteps  # the same dt RFlowScheduler.step uses
            corrector = backend.denoise(predicted, torch.full((latent.shape[0],), next_t, device=device), classes)
            predicted = latent + 0.5 * (velocity + corrector) * dt
        latent = predicted
        if on_step is not None:
            on_step()
    return latent


def make_backend(options: SampleOptions, folder: Path, card: ModelCard):
    """The requested backend; ONNX graphs are exported on first use and sha256-verified before loading."""
    if options.backend == "onnx":
        exported = ensure_onnx(folder, options.precision)
        card = ModelCard.load(folder)
        # ORT parses the very bytes whose sha256 was checked: nothing reaches InferenceSession unverified.
        graphs = [read_verified(folder / name, card.files.get(name)) for name in onnx_files(options.precision)]
        return OnnxBackend(graphs[0], graphs[1], options.device, options.precision), exported, card
    if options.backend == "torch":
        card, autoencoder, unet = load_model(folder)
        backend = TorchBackend(autoencoder, unet, latent_normalization(card), options.device,
                               options.precision, compile=options.compile)
        return backend, False, card
    raise UsageError(f"unknown --backend {options.backend!r}; choose one of {', '.join(BACKENDS)}")


# ------------------------------------------------------------------------------------- memory limits

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


def _halve_batch(size: int, error: BaseException, result: SampleResult, progress: SampleProgress) -> int:
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
    element = 2 if precision == "fp16" else 4
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
    element = 2 if options.precision == "fp16" else 4
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


# -------------------------------------------------------------------------------------------- the run


def sample_volumes(options: SampleOptions, progress: SampleProgress | None = None) -> SampleResult:
    """Generate volumes ``i`` (of ``count``) that belong to this shard and are not finished yet."""
    progress = progress or SampleProgress()
    _check_options(options)
    shard = options.shard or torchrun_shard() or (0, 1)
    options = replace(options, device=torchrun_device(options.device))
    folder = resolve_model(options.model, options.cache_dir)
    card = ModelCard.load(folder)
    class_id = card.class_id(options.modality)
    latent_normalization(card)  # an autoencoder-only model fails here, before any output is planned
    mapping = card.intensity.get(options.modality)
    if mapping is None:
        raise ModelError(f"model card has no intensity mapping for {options.modality!r}", folder)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    used_files = _files_used(options)
    run = {
        "model_sha256": model_identity(card, used_files), "modality": options.modality, "seed": options.seed, "steps": options.steps, "sampler": options.sampler,
        "backend": options.backend, "precision": options.precision, "file_format": options.file_format,
    }
    mine = [i for i in range(options.count) if i % shard[1] == shard[0]]
    manifest_lock = FileLock(str(out / f".{MANIFEST_FILE}.lock"))
    with manifest_lock:
        manifest = _load_manifest(out, run, options.overwrite)
    done, pending = _plan(out, manifest, mine, options)
    result = SampleResult(out, out / MANIFEST_FILE, skipped=done, shard=shard)
    progress.start(len(mine), len(pending))
    if not pending:
        with manifest_lock:
            _save_manifest(out, _load_manifest(out, run, True), run, card, used_files, options, result)
        return result

    result.batch_size = batch_size_for_memory(card, options, len(pending), progress)
    backend, result.exported, card = make_backend(options, folder, card)
    result.device, result.provider = backend.device_label, backend.provider
    progress.ready(result.device, result.provider, result.exported)
    scheduler = build_scheduler(card)
    latent_shape = (int(card.latent["channels"]), *(int(s) for s in card.latent["shape"]))
    volume_shape = tuple(int(s) for s in card.volume["shape"])
    affine = centred_ras_affine(volume_shape, card.spacing(options.modality))

    staging = _staging_dir(out, shard)
    start = time.perf_counter()
    try:
        # Files are compressed and written by threads while the next batch is denoised (gzip of a 128^3 volume
        # costs ~0.2-0.4 s, as much as sampling it on a GPU); at most one batch of writes waits behind compute.
        with ThreadPoolExecutor(max_workers=min(WRITER_THREADS, cpu_threads())) as writers:
            in_flight: list[Future] = []
            batch_size, first = result.batch_size, 0
            while first < len(pending):
                indices = pending[first:first + batch_size]
                progress.batch(len(indices), options.steps)
                noise = torch.stack([initial_noise(options.seed, i, latent_shape) for i in indices])
                try:
                    latents = sample_latents(backend, scheduler, noise, class_id, options.steps, options.sampler,
                                             progress.step)
                    decoded = backend.decode(latents, volume_shape).clamp(-1.0, 1.0).cpu().numpy()
                except Exception as error:
                    if not is_out_of_memory(error):
                        raise
                    batch_size = _halve_batch(len(indices), error, result, progress)
                    continue  # the same volumes again: their noise depends on the index only
                first += len(indices)
                _collect(in_flight, result, progress)
                for position, index in enumerate(indices):
                    model_space = decoded[position, 0]
                    volume = Volume(to_physical(model_space, mapping), affine, options.modality,
                                    {"synthetic": True, "model": card.name})
                    in_flight.append(writers.submit(_write_one, out, staging, volume, model_space, index, options,
                                                    card, manifest_lock, run, used_files, result))
            _collect(in_flight, result, progress)
        result.seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with manifest_lock:
        _save_manifest(out, _load_manifest(out, run, True), run, card, used_files, options, result)
    return result


def _staging_dir(out: Path, shard: tuple[int, int]) -> Path:
    """A per-shard temp folder, emptied at start: a crashed run's partial files go, other shards' stay.

    An unsharded run is alone in ``out`` and also removes every stale temp file there.
    """
    if shard == (0, 1):
        remove_stale_temps(out)
    staging = out / f"{TMP_PREFIX}shard-{shard[0]}-of-{shard[1]}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _collect(in_flight: list[Future], result: SampleResult, progress: SampleProgress) -> None:
    """Wait for every queued write (oldest first); a failed write raises here."""
    while in_flight:
        entry = in_flight.pop(0).result()
        result.generated.append(entry)
        progress.volume(entry)


def model_identity(card: ModelCard, used_files: tuple[str, ...]) -> str:
    """One sha256 naming the trained weights (or, for an ONNX-only folder, the graphs that run).

    A retrained model under the same name gets another identity, so its volumes never mix with older ones.
    """
    weights = [name for name in (AUTOENCODER_FILE, DENOISER_FILE) if name in card.files]
    names = weights or [name for name in used_files if name in card.files]
    if not names:
        raise ModelError(f"model card lists none of {', '.join(used_files)}; nothing to sample with")
    text = "".join(f"{name}\0{card.files[name]}\n" for name in sorted(names))
    return hashlib.sha256(text.encode()).hexdigest()


def _check_options(options: SampleOptions) -> None:
    if options.count < 1:
        raise UsageError(f"--count must be at least 1, got {options.count}")
    if options.steps < 1 or options.steps > 1000:
        raise UsageError(f"--steps must be between 1 and 1000, got {options.steps}")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.max_memory_gb is not None and not options.max_memory_gb > 0:
        raise UsageError(f"--max-memory must be a positive number of GB, got {options.max_memory_gb}")
    if options.sampler not in SAMPLERS:
        raise UsageError(f"unknown --sampler {options.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if options.backend not in BACKENDS:
        raise UsageError(f"unknown --backend {options.backend!r}; choose one of {', '.join(BACKENDS)}")
    if options.modality not in ("ct", "mri"):
        raise UsageError(f"unknown --modality {options.modality!r}; choose ct or mri")
    check_precision(options.precision)
    check_format(options.file_format)
    parse_device(options.device)


def _files_used(options: SampleOptions) -> tuple[str, ...]:
    if options.backend == "onnx":
        return onnx_files(options.precision)
    return AUTOENCODER_FILE, DENOISER_FILE


def _load_manifest(out: Path, run: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The existing manifest if it describes the same run; a fresh one otherwise (or a UsageError)."""
    import json

    path = out / MANIFEST_FILE
    fresh = {"files": []}
    if not path.is_file():
        return fresh
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        assert manifest.get("format") == MANIFEST_FORMAT and isinstance(manifest.get("files"), list)
    except (OSError, ValueError, AssertionError):
        if overwrite:
            return fresh
        raise UsageError("existing manifest is not a meddiff-synthetic manifest; use another --out or --overwrite", path) from None
    different = [k for k in RUN_KEY_FIELDS if manifest.get(k) != run[k]]
    if different:
        if overwrite:
            return fresh
        names = ", ".join(f"{k} {_short(manifest.get(k))}→{_short(run[k])}" for k in different)
        raise UsageError(f"output folder holds a run with other settings ({names}); use another --out or --overwrite", path)
    return manifest


def _short(value: Any) -> str:
    text = repr(value)
    return text[:13] + "…'" if len(text) > 16 else text


def _plan(out: Path, manifest: dict[str, Any], mine: list[int], options: SampleOptions):
    """Split this shard's indices into finished (listed with a matching sha256) and pending ones.

    Any other existing output is refused up front (before computing anything) unless ``--overwrite``.
    """
    listed = {entry["file"]: entry for entry in manifest.get("files", [])}
    done: list[dict[str, Any]] = []
    pending: list[int] = []
    for index in mine:
        name = output_name(options.modality, index, options.file_format)
        path = out / name
        entry = listed.get(name)
        if path.exists():
            if entry is not None and not options.overwrite and output_sha256(path) == entry.get("sha256"):
                done.append(entry)
                continue
            if not options.overwrite:
                raise UsageError("output exists and is not a finished volume of this run; pass --overwrite to replace it", path)
        pending.append(index)
    return done, pending


def _write_one(out: Path, staging: Path, volume: Volume, model_space: np.ndarray, index: int, options: SampleOptions,
               card: ModelCard, manifest_lock: FileLock, run: dict[str, Any], used_files: tuple[str, ...],
               result: SampleResult) -> dict[str, Any]:
    """Stage under a temp name, record its sha256 in the manifest, then rename into place.

    A crash after the manifest update leaves a listed-but-missing file (regenerated on resume); a crash
    before it leaves only a temp file (deleted on resume). A finished file is therefore always listed.
    """
    name = output_name(options.modality, index, options.file_format)
    final = out / name
    staged = staging / name
    try:
        write_output(volume, staged, options.file_format, card.name, index)
        entry = {"file": name, "index": index, "seed": volume_seed(options.seed, index),
                 "sha256": output_sha256(staged), "device": result.device, "provider": result.provider}
        with manifest_lock:
            manifest = _load_manifest(out, run, True)
            manifest["files"] = [e for e in manifest.get("files", []) if e.get("file") != name] + [entry]
            _save_manifest(out, manifest, run, card, used_files, options, result)
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(staged, final)
    finally:
        if staged.is_dir():
            shutil.rmtree(staged, ignore_errors=True)
        elif staged.exists():
            staged.unlink()
    if options.preview:
        stem = name.split(".")[0]
        save_preview([[model_space]], out / PREVIEW_DIR / f"{stem}.png")
    return entry


def _save_manifest(out: Path, manifest: dict[str, Any], run: dict[str, Any], card: ModelCard,
                   used_files: tuple[str, ...], options: SampleOptions, result: SampleResult) -> None:
    files = sorted(manifest.get("files", []), key=lambda e: e["index"])
    volume_shape = [int(s) for s in card.volume["shape"]]
    listed = {e["file"] for e in files}
    complete = all(output_name(options.modality, i, options.file_format) in listed for i in range(options.count))
    document = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "synthetic": True,
        "meddiff_version": __version__,
        **run,
        "count": max(options.count, int(manifest.get("count", 0))),
        "complete": complete and all((out / e["file"]).exists() for e in files),
        "model": {
            "name": card.name,
            "files": {name: card.files.get(name) for name in used_files},
            "weights": {name: card.files[name] for name in (AUTOENCODER_FILE, DENOISER_FILE) if name in card.files},
        },
        "batch_size_reductions": result.batch_reductions or manifest.get("batch_size_reductions", []),
        "device": result.device or manifest.get("device", ""),
        "provider": result.provider or manifest.get("provider", ""),
        "seed_rule": "volume i: torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed_i)) on CPU, "
                     "seed_i = 63-bit numpy SeedSequence([seed, i]) (see docs/formats.md)",
        "volume": {
            "shape": volume_shape,
            "spacing": card.spacing(options.modality),
            "affine_ras": centred_ras_affine(volume_shape, card.spacing(options.modality)).tolist(),
            "unit": card.intensity.get(options.modality, {}).get("unit", ""),
            "dtype": "int16" if options.modality == "ct" and options.file_format == "nifti" else "float32",
        },
        "files": files,
    }
    atomic_write_json(out / MANIFEST_FILE, document)
