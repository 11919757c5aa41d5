"""``meddiff sample``: plan the run, denoise batches with the model's sampler, decode, write resumable outputs.

Seeds and shards: :mod:`~meddiff_cli.sample.seeds`; batch sizing and out-of-memory: :mod:`~meddiff_cli.sample.memory`;
``manifest.json``: :mod:`~meddiff_cli.sample.manifest`; file formats: :mod:`~meddiff_cli.sample.writers`.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddiff_cli.devices import CpuClock, cpu_threads
from meddiff_cli.errors import ModelError
from meddiff_cli.fsutil import TMP_PREFIX, FolderLock, output_folder, remove_stale_temps
from meddiff_cli.io.preview import PREVIEW_DIR, save_preview
from meddiff_cli.io.volume import Volume
from meddiff_cli.model.card import CARD_FILE, ModelCard, intensity_calibration, latent_normalization
from meddiff_cli.model.labels import LABEL_DECODER_FILE, modality_labels
from meddiff_cli.model.registry import resolve_model
from meddiff_cli.model.store import load_label_map
from meddiff_cli.runtime import TorchLabelMap
from meddiff_cli.model.scheduler import build_scheduler, default_steps, sample_latents
from meddiff_cli.sample import manifest as manifests
from meddiff_cli.sample.backends import make_backend, resolve_runtime
from meddiff_cli.sample.memory import batch_size_for_memory, halve_batch, is_out_of_memory
from meddiff_cli.sample.options import (
    LABELS_DIR, SampleOptions, SampleProgress, SampleResult, check_options, label_name, output_name,
)
from meddiff_cli.sample.seeds import initial_noise, shard_indices, torchrun_device, torchrun_shard, volume_seed
from meddiff_cli.sample.writers import (
    centred_ras_affine, output_sha256, to_physical, write_label_output, write_output,
)

WRITER_THREADS = 4


def sample_volumes(options: SampleOptions, progress: SampleProgress | None = None,
                   since: CpuClock | None = None) -> SampleResult:
    """Generate volumes ``i`` (of ``count``) that belong to this shard and are not finished yet.

    ``since``: when the caller started; ``--threads`` auto counts the cores left free from then on (the CLI
    passes its start, so the measurement spans its imports).
    """
    since = since or CpuClock.now()
    progress = progress or SampleProgress()
    check_options(options)
    shard = options.shard or torchrun_shard() or (0, 1)
    folder = resolve_model(options.model, options.cache_dir)
    card = ModelCard.load(folder)
    options = replace(options, device=torchrun_device(options.device), steps=options.steps or default_steps(card))
    class_id = card.class_id(options.modality)
    latent_normalization(card)  # an autoencoder-only model fails here, before any output is planned
    if options.with_labels:
        modality_labels(card.labels, options.modality, card.name)  # so does a model without a label decoder
        if LABEL_DECODER_FILE not in card.files:
            raise ModelError(f"--with-labels: model {card.name!r} lists no {LABEL_DECODER_FILE} (an ONNX-only "
                             "export has none); sample pairs from the model folder it was exported from", folder)
    mapping = card.intensity.get(options.modality)
    if mapping is None:
        raise ModelError(f"model card has no intensity mapping for {options.modality!r}", folder)
    to_physical(np.zeros(1, dtype=np.float32), mapping)  # an unusable mapping fails now, not after denoising
    try:
        calibration = intensity_calibration(mapping)
    except ModelError as error:
        raise ModelError(f"{options.modality}: {error.message}", folder / CARD_FILE) from None
    out = output_folder(options.out)
    options, choice = resolve_runtime(options, card, folder, out)

    run = manifests.run_key(card, options)
    mine = shard_indices(options.count, shard)
    manifest_lock = FolderLock(out / f".{manifests.MANIFEST_FILE}.lock")  # deleted on release: no file left behind
    with manifest_lock:
        manifest = manifests.load_manifest(out, run, options.overwrite)
    done, pending = manifests.plan(out, manifest, mine, options)
    result = SampleResult(out, out / manifests.MANIFEST_FILE, skipped=done, shard=shard, steps=options.steps,
                          backend=options.backend, precision=options.precision, choice=choice.reason)
    progress.start(len(mine), len(pending))
    if not pending:
        with manifest_lock:
            manifests.save_manifest(out, manifests.load_manifest(out, run, True), run, card, options, result)
        return result

    result.batch_size = batch_size_for_memory(card, options, len(pending), progress)
    scheduler = build_scheduler(card)
    latent_shape = (int(card.latent["channels"]), *(int(s) for s in card.latent["shape"]))
    volume_shape = tuple(int(s) for s in card.volume["shape"])
    affine = centred_ras_affine(volume_shape, card.spacing(options.modality))
    loaded = make_backend(options, folder, since)
    backend, card, result.exported = loaded.backend, loaded.card, loaded.exported
    result.device, result.provider, result.precision = backend.device_label, backend.provider, backend.precision_label
    result.threads = loaded.threads
    result.choice = "; ".join(note for note in (result.choice, loaded.threads_note) if note)
    label_map = None
    if options.with_labels:
        label_map = TorchLabelMap(load_label_map(folder, card, [options.modality]), backend.torch_device,
                                  options.precision)
    progress.ready(result)

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
                classes = torch.full((len(indices),), class_id, dtype=torch.int64)
                try:
                    latents = sample_latents(backend.denoise, scheduler, noise.to(backend.torch_device), classes,
                                             options.steps, options.sampler, progress.step)
                    decoded = backend.decode(latents, volume_shape).clamp(-1.0, 1.0).cpu().numpy()
                    if calibration is not None:
                        decoded = np.interp(decoded, *calibration).astype(np.float32)
                    label_maps = label_map(latents, classes).numpy() if label_map is not None else None
                except Exception as error:
                    if not is_out_of_memory(error):
                        raise
                    batch_size = halve_batch(len(indices), error, result, progress)
                    continue  # the same volumes again: their noise depends on the index only
                first += len(indices)
                progress.batch_sampled(len(indices))
                _collect(in_flight, result, progress)
                for position, index in enumerate(indices):
                    model_space = decoded[position, 0]
                    volume = Volume(to_physical(model_space, mapping), affine, options.modality,
                                    {"synthetic": True, "model": card.name})
                    label = None if label_maps is None else Volume(
                        label_maps[position], affine, options.modality, {"synthetic": True, "model": card.name})
                    in_flight.append(writers.submit(_write_one, out, staging, volume, label, model_space, index,
                                                    options, card, manifest_lock, run, result, len(indices)))
            _collect(in_flight, result, progress)
        result.seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        torch.set_num_threads(loaded.threads_before)  # make_backend set this process's thread count for the run
    with manifest_lock:
        manifests.save_manifest(out, manifests.load_manifest(out, run, True), run, card, options, result)
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


def _write_one(out: Path, staging: Path, volume: Volume, label: Volume | None, model_space: np.ndarray, index: int,
               options: SampleOptions, card: ModelCard, manifest_lock: FolderLock, run: dict[str, Any],
               result: SampleResult, batch_size: int) -> dict[str, Any]:
    """Stage under temp names, record the sha256 values in the manifest, then rename into place.

    A crash after the manifest update leaves a listed-but-missing file (regenerated on resume); a crash
    before it leaves only temp files (deleted on resume). A finished file is therefore always listed.
    The label map (``--with-labels``) goes into place before its image, so a listed image always has it.
    """
    name = output_name(options.modality, index, options.file_format)
    final = out / name
    staged = staging / name
    label_rel = label_name(options.modality, index, options.file_format) if label is not None else None
    staged_label = staging / label_rel if label_rel else None
    try:
        write_output(volume, staged, options.file_format, card.name, index)
        entry = {"file": name, "index": index, "seed": volume_seed(options.seed, index),
                 "sha256": output_sha256(staged), "device": result.device, "provider": result.provider,
                 "batch_size": batch_size, "threads": result.threads}
        if label is not None and staged_label is not None:
            staged_label.parent.mkdir(exist_ok=True)
            names = modality_labels(card.labels, options.modality, card.name).names_by_value()
            write_label_output(label, staged_label, options.file_format, names, staged, card.name)
            entry.update(label=label_rel, label_sha256=output_sha256(staged_label))
        with manifest_lock:
            manifests.record(out, entry, run, card, options, result)
        if staged_label is not None:
            (out / LABELS_DIR).mkdir(exist_ok=True)
            os.replace(staged_label, out / label_rel)
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(staged, final)
    finally:
        if staged.is_dir():
            shutil.rmtree(staged, ignore_errors=True)
        elif staged.exists():
            staged.unlink()
        if staged_label is not None and staged_label.exists():
            staged_label.unlink()
    if options.preview:
        stem = name.split(".")[0]
        save_preview([[model_space]], out / PREVIEW_DIR / f"{stem}.png")
    return entry
