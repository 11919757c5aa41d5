"""``meddiff train --stage labels``: a label decoder on the frozen latent space (image + label pairs).

Why this design (docs/model.md, "Image + label pairs"): a second decoder, trained on the frozen encoder's
latents of labelled cases, maps the same latent the image decoder reads to a label map. The autoencoder, the
latent normalisation and the denoiser stay exactly as they are, so a sampled latent decodes to an image *and*
its label map, which agree because both come from one latent — at the cost of one decoder forward per volume.

Training: latents are posterior draws ``mu + sigma * eps`` of the frozen encoder (what the image decoder was
trained on, and a little of the spread sampled latents have); loss Dice + cross-entropy over the case's own
modality's channels; the decoder starts from the image decoder's weights (every layer but the output one).
Every draw of step ``s`` comes from ``step_seed(seed, 3, s)``, so a resumed run repeats an uninterrupted one.
State (weights, AdamW moments, step) lives in ``<model>/checkpoint_labels/`` until the run finishes, written
complete under a temporary name and swapped in (as the main checkpoint is), so a kill never leaves a mix.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from meddiff_cli.errors import BadInputError, ModelError, UsageError
from meddiff_cli.fsutil import atomic_dir, atomic_write_json
from meddiff_cli.io.nifti import read_nifti
from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.labels import LABEL_DECODER_FILE, label_layout
from meddiff_cli.model.networks import LabelDecoder, build_label_decoder
from meddiff_cli.model.registry import validate_name
from meddiff_cli.model.store import load_model, load_state_dict, save_state_dict
from meddiff_cli.paths import models_dir, torchrun_launch
from meddiff_cli.train.checkpoint import flatten_optimizer, recover_interrupted_swap, unflatten_optimizer
from meddiff_cli.train.data import check_grid, read_model_space, step_seed
from meddiff_cli.train.options import Reporter, TrainOptions, TrainResult
from meddiff_cli.train.schedules import warmup_cosine
from meddiff_cli.train.setup import training_amp_dtype
from meddiff_cli.devices import describe_device, resolve_device

STAGE_CODE = 3
STATE_DIR = "checkpoint_labels"
STATE_FORMAT = "meddiff-label-checkpoint"
# Settings of this stage (``--set labels.KEY=VALUE``); the step count comes from --steps.
LABEL_DEFAULTS: dict[str, Any] = {"steps": 1000, "batch_size": 2, "lr": 2e-4, "warmup_steps": 50,
                                  "val_fraction": 0.1, "val_every": 250, "checkpoint_every": 100}
# The smallest value each setting takes (val_fraction also stays below 1).
LABEL_MINIMUM: dict[str, float] = {"steps": 1, "batch_size": 1, "lr": 1e-12, "warmup_steps": 0,
                                   "val_fraction": 0.0, "val_every": 1, "checkpoint_every": 1}


def label_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """LABEL_DEFAULTS with ``--set labels.KEY=VALUE`` (or train.KEY from --lr/--batch-size) applied and checked."""
    config = dict(LABEL_DEFAULTS)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in ("labels", "train") or key not in config:
            raise UsageError(f"--stage labels takes labels.* settings ({', '.join(sorted(config))}), not {dotted!r}")
        try:
            config[key] = type(LABEL_DEFAULTS[key])(value)
        except (TypeError, ValueError):
            raise UsageError(f"--set {dotted}={value!r}: expected a {type(LABEL_DEFAULTS[key]).__name__}") from None
        if not config[key] >= LABEL_MINIMUM[key] or (key == "val_fraction" and config[key] >= 1.0):
            raise UsageError(f"--set {dotted}={value!r} is out of range (at least {LABEL_MINIMUM[key]:g}"
                             + (", below 1)" if key == "val_fraction" else ")"))
    return config


@dataclass
class LabelledLatents:
    """Encoder posteriors and label maps (as channel indices within the modality's block) of one modality."""

    modality: str
    mu: torch.Tensor  # [N, C, x, y, z]
    sigma: torch.Tensor
    targets: torch.Tensor  # [N, X, Y, Z] uint8: index into the modality's label values
    train: list[int]
    val: list[int]


def _read_folders(folders: list[Path], modalities: list[str] | None, card: ModelCard
                  ) -> tuple[dict[str, dict[str, int]], dict[str, list[tuple[Path, Path]]]]:
    """Label tables and (image, label) files per modality from ``meddiff preprocess`` folders."""
    tables: dict[str, dict[str, int]] = {}
    cases: dict[str, list[tuple[Path, Path]]] = {}
    for position, folder in enumerate(folders):
        path = folder / "manifest.json"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInputError("not a `meddiff preprocess` output folder (no manifest.json)", folder) from None
        except (OSError, ValueError) as error:
            raise BadInputError(f"unreadable manifest ({error})", path) from None
        modality = (modalities[min(position, len(modalities) - 1)] if modalities else manifest.get("modality"))
        if modality not in card.modalities:
            raise UsageError(f"{folder}: modality {modality!r} is not one of model {card.name!r}'s "
                             f"({', '.join(card.modalities)})")
        check_grid(manifest, card, modality, path)  # the latents the denoiser produces come from this grid only
        table = manifest.get("labels")
        pairs = [(folder / e["image"], folder / e["label"]) for e in manifest.get("cases", []) if e.get("label")]
        if not isinstance(table, dict) or not pairs:
            raise BadInputError("no label maps: preprocess labelled cases (`meddiff preprocess --labels DIR`, or "
                                "a `meddiff phantom` folder) for --stage labels", folder)
        merged = tables.setdefault(modality, {})
        for name, value in table.items():
            if merged.setdefault(name, int(value)) != int(value):
                raise BadInputError(f"label {name!r} is {value} here but {merged[name]} in another {modality} folder", path)
        cases.setdefault(modality, []).extend(pairs)
    return tables, cases


@torch.no_grad()
def _encode(autoencoder: torch.nn.Module, layout: dict[str, Any], modality: str, pairs: list[tuple[Path, Path]],
            seed: int, val_fraction: float, say: Any) -> LabelledLatents:
    values = layout["modalities"][modality]["values"]
    index_of = np.zeros(max(256, max(values) + 1), np.int64)
    index_of[values] = np.arange(len(values))
    known = np.zeros(index_of.shape, bool)
    known[values] = True
    mus, sigmas, targets = [], [], []
    for number, (image_path, label_path) in enumerate(sorted(pairs)):
        image = read_model_space(image_path).astype(np.float32)
        label = read_nifti(label_path).array
        if label.shape != image.shape:
            raise BadInputError(f"label map shape {label.shape} differs from its image's {image.shape}", label_path)
        label = np.clip(label, 0, index_of.size - 1).astype(np.int64)
        if not known[label].all():
            raise BadInputError(f"label values {sorted(set(np.unique(label)) - set(values))} are not in the "
                                "manifest's label table", label_path)
        mu, sigma = autoencoder.encode(torch.from_numpy(image)[None, None])
        mus.append(mu[0])
        sigmas.append(sigma[0])
        targets.append(torch.from_numpy(index_of[label].astype(np.uint8)))
        if (number + 1) % 50 == 0:
            say(f"labels: encoded {number + 1}/{len(pairs)} {modality} cases")
    order = np.random.default_rng([seed, STAGE_CODE]).permutation(len(pairs))
    n_val = min(len(pairs) - 1, max(1, int(round(val_fraction * len(pairs))))) if len(pairs) > 1 and val_fraction > 0 else 0
    return LabelledLatents(modality, torch.stack(mus), torch.stack(sigmas), torch.stack(targets),
                           sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val]))


def _initial_weights(decoder: LabelDecoder, autoencoder: torch.nn.Module) -> None:
    """Copy every image-decoder tensor whose shape fits (all but the output convolution)."""
    own = decoder.state_dict()
    donor = {k: v for k, v in autoencoder.state_dict().items() if k in own and own[k].shape == v.shape}
    own.update(donor)
    decoder.load_state_dict(own)


def _dice(prediction: torch.Tensor, target: torch.Tensor, index: int) -> float | None:
    p, t = prediction == index, target == index
    total = int(p.sum() + t.sum())
    return None if total == 0 else 2.0 * int((p & t).sum()) / total


@torch.inference_mode()
def validate(decoder: LabelDecoder, sets: list[LabelledLatents], layout: dict[str, Any], amp: Any) -> dict[str, Any]:
    """Mean Dice per label (foreground labels, posterior-mean latents of held-out cases) per modality."""
    decoder.eval()
    report: dict[str, Any] = {}
    for data in sets:
        entry = layout["modalities"][data.modality]
        scores: dict[str, list[float]] = {name: [] for name in entry["names"][1:]}
        for i in data.val:
            with amp():
                logits = decoder(data.mu[i:i + 1]).float()[:, entry["channels"]]
            prediction = logits.argmax(1)[0]
            for index, name in enumerate(entry["names"][1:], start=1):
                dice = _dice(prediction, data.targets[i], index)
                if dice is not None:
                    scores[name].append(dice)
        per_label = {name: round(float(np.mean(v)), 4) for name, v in scores.items() if v}
        report[data.modality] = {"dice": per_label, "mean_dice": round(float(np.mean(list(per_label.values()))), 4)
                                 if per_label else None, "cases": len(data.val)}
    decoder.train()
    return report


def train_label_decoder(options: TrainOptions, reporter: Reporter | None = None) -> TrainResult:
    """Train (or resume) the label decoder of model ``options.name`` on labelled preprocess folders."""
    reporter = reporter or Reporter()
    began = time.monotonic()
    validate_name(options.name, "--name")
    config = label_config(options.overrides)  # --batch-size/--lr arrive as train.*
    if torchrun_launch().distributed:
        raise UsageError("--stage labels runs in one process (it takes minutes on a CPU); start it without torchrun")
    folder = models_dir(options.cache_dir) / options.name
    card, autoencoder, _ = load_model(folder)  # a missing model fails here, with its folder named
    if int(card.training.get("steps", {}).get("autoencoder", 0)) < 1:
        raise ModelError(f"model {options.name!r} has no trained autoencoder; train it first", folder)
    if card.latent.get("scale") is None and card.latent.get("scale_factor") is None:
        raise ModelError(f"model {options.name!r} has no trained denoiser, so its latents cannot be sampled yet", folder)
    state_dir = folder / STATE_DIR
    recover_interrupted_swap(folder, STATE_DIR, STATE_FORMAT)
    resuming = (state_dir / "state.json").is_file()
    if card.labels and not (options.resume or resuming):
        raise UsageError(f"model {options.name!r} already has a label decoder; pass --resume to continue its training")
    total = int(options.steps if options.steps is not None else config["steps"])
    if total < 1:
        raise UsageError("--steps must be at least 1")
    device = resolve_device(options.device)
    amp_dtype = training_amp_dtype(device, "auto")

    def amp() -> Any:
        return torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)

    tables, cases = _read_folders(list(options.data), options.modalities, card)
    layout = label_layout({m: tables[m] for m in card.modalities if m in tables})
    reporter.message(f"running on {describe_device(device)}; labels: " + "; ".join(
        f"{m} {', '.join(e['names'][1:])}" for m, e in layout["modalities"].items()))
    trained_before = card.labels if options.resume and not resuming else {}
    if trained_before and trained_before != layout:
        raise UsageError("the label tables differ from those the model's label decoder was trained on; use the same DATA")
    seed = int(card.training.get("seed", options.seed))
    sets = [_encode(autoencoder, layout, m, cases[m], seed, float(config["val_fraction"]), reporter.message)
            for m in layout["modalities"]]
    for data in sets:
        data.mu, data.sigma, data.targets = data.mu.to(device), data.sigma.to(device), data.targets.to(device)
    card.labels = layout  # the network's output width comes from the table
    with torch.random.fork_rng(devices=[]):  # the output layer's initial weights: a function of the seed only
        torch.manual_seed(step_seed(seed, STAGE_CODE))
        decoder = build_label_decoder(card)
    if trained_before:  # --resume of a finished decoder: a further run of --steps steps from its weights
        decoder.load_state_dict(load_state_dict(folder / LABEL_DECODER_FILE, card.files.get(LABEL_DECODER_FILE)))
    else:
        _initial_weights(decoder, autoencoder)
    earlier_steps = int(card.training.get("steps", {}).get("labels", 0)) if trained_before else 0
    del autoencoder
    decoder.to(device)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=float(config["lr"]), weight_decay=0.0)
    start = 0
    if resuming:
        state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
        if state["layout"] != layout:
            raise UsageError("the label tables differ from those of the interrupted run; use the same DATA", state_dir)
        decoder.load_state_dict(load_state_dict(state_dir / "decoder.safetensors", state["sha256"]["decoder"]))
        tensors = load_state_dict(state_dir / "optimizer.safetensors", state["sha256"]["optimizer"])
        optimizer.load_state_dict(unflatten_optimizer(tensors, state["optimizer"]))
        start = int(state["step"])
        earlier_steps = int(state.get("earlier_steps", 0))
        total = int(state["total"]) if options.steps is None else total
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    schedule = warmup_cosine(int(config["warmup_steps"]), total)
    reporter.stage_started("labels", start, total)
    decoder.train()

    def save_state(step: int) -> None:
        tensors, meta = flatten_optimizer(optimizer.state_dict())
        with atomic_dir(state_dir, replace=True) as scratch:  # this stage's own folder: swapped in whole
            sha = {"decoder": save_state_dict(decoder, scratch / "decoder.safetensors"),
                   "optimizer": save_state_dict(tensors, scratch / "optimizer.safetensors")}
            atomic_write_json(scratch / "state.json", {"format": STATE_FORMAT, "step": step, "total": total,
                                                       "layout": layout, "earlier_steps": earlier_steps,
                                                       "optimizer": meta, "sha256": sha})

    # A job's time limit (SIGTERM) stops like Ctrl-C: the applied steps (``completed``) are saved, then it exits.
    on_main = threading.current_thread() is threading.main_thread()
    previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler) if on_main else None
    completed = start
    try:
        for step in range(start, total):
            torch.manual_seed(step_seed(seed, STAGE_CODE, step))
            data = sets[step % len(sets)]
            rng = np.random.default_rng(step_seed(seed, STAGE_CODE, step, 1))
            picks = rng.choice(data.train, size=int(config["batch_size"]), replace=len(data.train) < int(config["batch_size"]))
            latent = data.mu[picks] + data.sigma[picks] * torch.randn_like(data.mu[picks])
            channels = layout["modalities"][data.modality]["channels"]
            for group in optimizer.param_groups:
                group["lr"] = float(config["lr"]) * schedule(step)
            with amp():
                logits = decoder(latent)[:, channels].float()
            loss = loss_fn(logits, data.targets[picks][:, None].long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
            if math.isfinite(float(norm)):
                optimizer.step()
            completed = step + 1
            reporter.step_done("labels", step + 1, total, {"dice_ce": loss.item()})
            if completed % int(config["val_every"]) == 0 and completed < total:
                metrics = validate(decoder, sets, layout, amp)
                reporter.validated("labels", completed, total, {f"{m}_dice": v["mean_dice"] or 0.0 for m, v in metrics.items()})
            if completed % int(config["checkpoint_every"]) == 0:
                save_state(completed)
    except KeyboardInterrupt:
        save_state(completed)
        raise
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous_term)
    metrics = validate(decoder, sets, layout, amp)
    reporter.validated("labels", total, total, {f"{m}_dice": v["mean_dice"] or 0.0 for m, v in metrics.items()})
    card = ModelCard.load(folder)  # unchanged on disk since loading, apart from what this stage writes now
    card.labels = layout
    card.files[LABEL_DECODER_FILE] = save_state_dict(decoder, folder / LABEL_DECODER_FILE)
    card.training.setdefault("steps", {})["labels"] = earlier_steps + total
    card.training["label_cases"] = {s.modality: {"train": len(s.train), "val": len(s.val)} for s in sets}
    card.training["label_config"] = {**config, "steps": total}
    card.metrics["labels"] = metrics
    # Now a model of the user's: a meddiff upgrade must not replace it with new bundled weights (registry).
    card.training.pop("bundled_weights_dtype", None)
    card.save(folder)  # card last: it never names a decoder that is not on disk
    shutil.rmtree(state_dir, ignore_errors=True)
    return TrainResult(options.name, folder, card, {"labels": total - start}, round(time.monotonic() - began, 3))
