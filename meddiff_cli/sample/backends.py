"""The backend of a sampling run: ``auto`` resolved (:mod:`meddiff_cli.runtime.choice`), the model loaded, threads set.

``auto`` resumes what an unfinished run in the output folder used (its manifest's backend and precision), so
rerunning a command after an upgrade or on another machine finishes that run instead of refusing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from meddiff_cli.devices import CpuClock, parse_device
from meddiff_cli.errors import UsageError
from meddiff_cli.export import ensure_onnx, onnx_files
from meddiff_cli.export.graphs import has_onnx
from meddiff_cli.export.options import PRECISIONS as GRAPH_PRECISIONS
from meddiff_cli.model.card import ModelCard, latent_normalization
from meddiff_cli.model.store import AUTOENCODER_FILE, DENOISER_FILE, load_model, read_verified
from meddiff_cli.runtime import Backend, OnnxBackend, TorchBackend
from meddiff_cli.runtime.choice import AUTO, RuntimeChoice, choose_runtime, choose_threads
from meddiff_cli.sample import manifest as manifests
from meddiff_cli.sample.options import SampleOptions


@dataclass
class LoadedBackend:
    backend: Backend
    card: ModelCard  # as it is after a first-use export
    exported: bool  # ONNX graphs were exported now
    threads: int
    threads_note: str
    threads_before: int  # torch's process-wide thread count before this run, for the caller to restore


def resolve_runtime(options: SampleOptions, card: ModelCard, folder: Path, out: Path,
                    ) -> tuple[SampleOptions, RuntimeChoice]:
    """``options`` with backend and precision decided (no weights loaded yet), and the decision."""
    has_weights = AUTOENCODER_FILE in card.files and DENOISER_FILE in card.files
    held = {precision for precision in GRAPH_PRECISIONS if has_onnx(card, folder, precision)}
    request = parse_device(options.device)
    resumed = _resumed(options, card, out)
    if resumed is not None:
        try:
            choice = choose_runtime(resumed.backend, resumed.precision, request, has_weights, held)
            note = f"resuming the run in {out} ({choice.backend} {choice.precision})"
            return replace(options, backend=choice.backend, precision=choice.precision), replace(choice, reason=note)
        except UsageError:
            pass  # that run cannot continue here: decide afresh (the manifest check then names the difference)
    choice = choose_runtime(options.backend, options.precision, request, has_weights, held)
    return replace(options, backend=choice.backend, precision=choice.precision), choice


def _resumed(options: SampleOptions, card: ModelCard, out: Path) -> SampleOptions | None:
    """The options of the run already in ``out`` when they differ from ``options`` only where ``options`` says auto."""
    if AUTO not in (options.backend, options.precision) or options.overwrite:
        return None
    try:
        manifest = json.loads((out / manifests.MANIFEST_FILE).read_text(encoding="utf-8"))
        candidate = replace(options, backend=manifest["backend"] if options.backend == AUTO else options.backend,
                            precision=manifest["precision"] if options.precision == AUTO else options.precision)
        run = manifests.run_key(card, candidate)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return candidate if all(manifest.get(key) == run[key] for key in manifests.RUN_KEY_FIELDS) else None


def make_backend(options: SampleOptions, folder: Path, since: CpuClock | None = None) -> LoadedBackend:
    """Load the (resolved) backend. ONNX graphs are exported on first use and sha256-verified before loading.

    Threads are chosen after loading, so that the free-core measurement spans the loading time; torch's
    process-wide thread count is set here (the caller restores ``threads_before`` when the run ends).
    """
    exported = False
    if options.backend == "onnx":
        exported = ensure_onnx(folder, options.precision)
        card = ModelCard.load(folder)
        # ORT parses the very bytes whose sha256 was checked: nothing reaches InferenceSession unverified.
        graphs = [read_verified(folder / name, card.files.get(name))
                  for name in onnx_files(options.precision, card.own_decoder(options.modality))]
    elif options.backend == "torch":
        card, autoencoder, unet = load_model(folder, modality=options.modality)
    else:
        raise UsageError(f"--backend {options.backend!r} was not resolved; call resolve_runtime first")
    threads, note = choose_threads(options.threads, since or CpuClock.now())
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if options.backend == "onnx":
            backend: Backend = OnnxBackend(graphs[0], graphs[1], options.device, options.precision, threads)
        else:
            backend = TorchBackend(autoencoder, unet, latent_normalization(card), options.device, options.precision,
                                   compile=options.compile)
    except BaseException:
        torch.set_num_threads(before)
        raise
    return LoadedBackend(backend, card, exported, threads, note, before)
