"""``DIR/manifest.json`` of a sampling run: which settings made the volumes, which are finished, their sha256.

A manifest describes one run (:data:`RUN_KEY_FIELDS`); a rerun with the same settings resumes it, other
settings are refused unless ``--overwrite``. Every change happens under the caller's file lock, so shards
writing into one folder never lose each other's entries.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from meddiff_cli import __version__
from meddiff_cli.errors import ModelError, UsageError
from meddiff_cli.export.options import onnx_files
from meddiff_cli.fsutil import atomic_write_json
from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.labels import LABEL_DECODER_FILE, modality_labels
from meddiff_cli.model.store import sampling_weights
from meddiff_cli.sample.options import SampleOptions, SampleResult, label_name, output_name
from meddiff_cli.sample.writers import centred_ras_affine, is_meddiff_series, output_sha256

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "meddiff-synthetic"
MANIFEST_VERSION = 1
# Settings that change the voxels: a manifest written with other values describes other volumes.
RUN_KEY_FIELDS = ("model_sha256", "modality", "seed", "steps", "sampler", "backend", "precision", "file_format",
                  "with_labels")
RUN_KEY_DEFAULTS = {"with_labels": False}  # manifests written before label maps existed


def files_used(card: ModelCard, options: SampleOptions) -> tuple[str, ...]:
    """The model files this run's backend reads."""
    labels = (LABEL_DECODER_FILE,) if options.with_labels else ()
    if options.backend == "onnx":
        return (*onnx_files(options.precision, card.own_decoder(options.modality)), *labels)
    return (*sampling_weights(card, options.modality), *labels)


def model_identity(card: ModelCard, used_files: tuple[str, ...], modality: str) -> str:
    """One sha256 naming the trained weights that make ``modality`` (or, for an ONNX-only folder, the graphs
    that run).

    A retrained model under the same name gets another identity, so its volumes never mix with older ones;
    another modality's own decoder does not change it.
    """
    weights = [name for name in sampling_weights(card, modality) if name in card.files]
    weights += [name for name in used_files if name == LABEL_DECODER_FILE]
    names = weights or [name for name in used_files if name in card.files]
    if not names:
        raise ModelError(f"model card lists none of {', '.join(used_files)}; nothing to sample with")
    text = "".join(f"{name}\0{card.files[name]}\n" for name in sorted(names))
    calibrations = {m: v["calibration"] for m, v in sorted(card.intensity.items()) if v.get("calibration")}
    if calibrations:  # calibrated volumes never mix with uncalibrated ones (an uncalibrated identity is unchanged)
        text += json.dumps(calibrations, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def run_key(card: ModelCard, options: SampleOptions) -> dict[str, Any]:
    """The settings that decide the voxels (``options.steps`` already resolved to a number)."""
    return {
        "model_sha256": model_identity(card, files_used(card, options), options.modality),
        "modality": options.modality,
        "seed": options.seed, "steps": options.steps, "sampler": options.sampler, "backend": options.backend,
        "precision": options.precision, "file_format": options.file_format, "with_labels": options.with_labels,
    }


def load_manifest(out: Path, run: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The existing manifest if it describes the same run; a fresh one otherwise (or a UsageError)."""
    path = out / MANIFEST_FILE
    fresh: dict[str, Any] = {"files": []}
    if not path.is_file():
        return fresh
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        valid = (isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT
                 and isinstance(manifest.get("files"), list))
    except (OSError, ValueError):
        valid = False
    if not valid:
        if overwrite:
            return fresh
        raise UsageError("existing manifest is not a meddiff-synthetic manifest; use another --out or --overwrite", path)
    different = [k for k in RUN_KEY_FIELDS if manifest.get(k, RUN_KEY_DEFAULTS.get(k)) != run[k]]
    if different:
        if overwrite:
            return fresh
        names = ", ".join(f"{k} {_short(manifest.get(k))}→{_short(run[k])}" for k in different)
        raise UsageError(f"output folder holds a run with other settings ({names}); use another --out or --overwrite", path)
    return manifest


def _short(value: Any) -> str:
    text = repr(value)
    return text[:13] + "…'" if len(text) > 16 else text


def plan(out: Path, manifest: dict[str, Any], mine: list[int], options: SampleOptions
         ) -> tuple[list[dict[str, Any]], list[int]]:
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
        label = out / label_name(options.modality, index, options.file_format) if options.with_labels else None
        label_ours = label is not None and label.is_file() and entry is not None and \
            output_sha256(label) == entry.get("label_sha256")
        if label is not None and label.exists() and not label_ours and not options.overwrite:
            raise UsageError("label map exists and is not one of a finished volume of this run; pass --overwrite to "
                             "replace it", label)
        if path.exists():
            ours = entry is not None and output_sha256(path) == entry.get("sha256")
            if ours and not options.overwrite and (label is None or label_ours):
                done.append(entry)
                continue
            if not ours and not options.overwrite:  # a file of this run (e.g. its label map is missing) is redone
                raise UsageError("output exists and is not a finished volume of this run; pass --overwrite to replace it", path)
            if not ours and path.is_dir() and not is_meddiff_series(path):
                raise UsageError("output folder exists and holds files meddiff did not write; --overwrite replaces "
                                 "only meddiff's own DICOM series: move it away or choose another --out", path)
        pending.append(index)
    return done, pending


def record(out: Path, entry: dict[str, Any], run: dict[str, Any], card: ModelCard, options: SampleOptions,
           result: SampleResult) -> None:
    """Add (or replace) one finished file's entry; call with the manifest lock held."""
    manifest = load_manifest(out, run, True)
    manifest["files"] = [e for e in manifest.get("files", []) if e.get("file") != entry["file"]] + [entry]
    save_manifest(out, manifest, run, card, options, result)


def save_manifest(out: Path, manifest: dict[str, Any], run: dict[str, Any], card: ModelCard,
                  options: SampleOptions, result: SampleResult) -> None:
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
        "complete": complete and all((out / e["file"]).exists() and (not e.get("label") or (out / e["label"]).exists())
                                     for e in files),
        "model": {
            "name": card.name,
            "files": {name: card.files.get(name) for name in files_used(card, options)},
            "weights": {name: card.files[name] for name in sampling_weights(card, options.modality) if name in card.files},
        },
        "batch_size_reductions": result.batch_reductions or manifest.get("batch_size_reductions", []),
        "device": result.device or manifest.get("device", ""),
        "provider": result.provider or manifest.get("provider", ""),
        # What ran last (file entries say their device, provider and batch size): precision incl. bf16 autocast,
        # CPU threads, and why --backend/--precision/--threads auto chose them.
        "runtime": {"backend": result.backend, "precision": result.precision, "provider": result.provider,
                    "device": result.device, "threads": result.threads, "batch_size": result.batch_size,
                    "choice": result.choice} if result.provider else manifest.get("runtime", {}),
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
    if options.with_labels:
        names = modality_labels(card.labels, options.modality, card.name).names_by_value()
        document["labels"] = {name: value for value, name in names.items()}  # {name: value}, as preprocess writes
    atomic_write_json(out / MANIFEST_FILE, document)
