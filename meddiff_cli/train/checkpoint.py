"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON, swapped in atomically.

``<model>/checkpoint/``::

    state.json               stage, step, total steps, training config, optimiser scalars (param groups),
                             skipped-step counters, duration, sha256 of every file below. The learning rate
                             and every random stream are functions of (seed, step), so no scheduler or RNG
                             state needs storing.
    <group>.safetensors      one file per tensor group, e.g. ``autoencoder``, ``discriminator``, ``ema``,
                             ``optimizer_g`` (flattened optimiser state: ``state.<param id>.<name>``)

The folder is written complete under a temporary name and renamed over the previous one, so a SIGKILL
at any moment leaves either the old or the new checkpoint. If the kill lands between the two renames of
the swap, :func:`load_checkpoint` recovers the previous checkpoint from the leftover temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from meddiff_cli.errors import ModelError
from meddiff_cli.fsutil import TMP_PREFIX, atomic_dir, atomic_write_json
from meddiff_cli.model.store import load_state_dict, save_state_dict

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
CHECKPOINT_FORMAT = "meddiff-checkpoint"
CHECKPOINT_VERSION = 1

Checkpoint = tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]
"""``(state.json contents, tensor groups)`` as :func:`load_checkpoint` returns them."""
Modules = dict[str, torch.nn.Module]
"""Checkpoint group name -> module whose ``state_dict`` is that group (e.g. ``autoencoder``, ``ema``)."""
Optimizers = dict[str, tuple[str, torch.optim.Optimizer]]
"""Checkpoint group name -> (key of its scalars in ``state["optimizers"]``, optimizer), e.g. ``optimizer_g``: (g, …)."""


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON scalars."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer` (parameter ids become ints again, as torch expects)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entries in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(model_folder: Path, state: dict[str, Any], groups: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write ``state`` (JSON-able) and tensor ``groups`` as a new checkpoint folder, atomically."""
    final = Path(model_folder) / CHECKPOINT_DIR
    with atomic_dir(final, replace=True) as tmp:  # the previous checkpoint is this model's own
        files = {f"{group}.safetensors": save_state_dict(tensors, tmp / f"{group}.safetensors")
                 for group, tensors in groups.items()}
        atomic_write_json(tmp / STATE_FILE, {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                                             **state, "files": files})
    return final


def recover_interrupted_swap(model_folder: Path, directory: str = CHECKPOINT_DIR,
                             state_format: str = CHECKPOINT_FORMAT) -> None:
    """Put back the previous checkpoint ``directory`` (its state.json's ``format`` is ``state_format``) if a kill
    landed between the two renames of ``atomic_dir``."""
    final = model_folder / directory
    if final.exists():
        return
    for leftover in sorted(model_folder.glob(f"{TMP_PREFIX}*/old/{STATE_FILE}")):
        try:
            found = json.loads(leftover.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            continue
        if found == state_format:
            leftover.parent.rename(final)
            return


def load_checkpoint(model_folder: Path) -> Checkpoint:
    """Read and sha256-verify a checkpoint; raise :class:`ModelError` if there is none or it is damaged."""
    model_folder = Path(model_folder)
    recover_interrupted_swap(model_folder)
    path = model_folder / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        raise ModelError("no training checkpoint to resume from", path.parent)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"unreadable checkpoint state ({error})", path) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError("not a meddiff checkpoint", path)
    if int(state.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise ModelError("checkpoint was written by a newer meddiff", path)
    groups = {name.removesuffix(".safetensors"): load_state_dict(path.parent / name, sha)
              for name, sha in state["files"].items()}
    return state, groups


def save_training_state(model_folder: Path, state: dict[str, Any], modules: Modules, optimizers: Optimizers) -> Path:
    """Checkpoint ``modules`` and ``optimizers`` (flattened) with ``state`` (stage, step, config, ...)."""
    groups = {name: module.state_dict() for name, module in modules.items()}
    metas = {}
    for group, (key, optimizer) in optimizers.items():
        groups[group], metas[key] = flatten_optimizer(optimizer.state_dict())
    return save_checkpoint(model_folder, {**state, "optimizers": metas}, groups)


def restore_training_state(checkpoint: Checkpoint, modules: Modules, optimizers: Optimizers) -> dict[str, Any]:
    """Load what :func:`save_training_state` wrote into the same modules and optimizers; returns the state."""
    state, groups = checkpoint
    for name, module in modules.items():
        module.load_state_dict(groups[name])
    for group, (key, optimizer) in optimizers.items():
        optimizer.load_state_dict(unflatten_optimizer(groups[group], state["optimizers"][key]))
    return state
