"""The local model cache: name → folder resolution, listing, sha256 verification, import and removal.

Models are folders (see :mod:`meddiff_cli.model.store`) under ``<cache>/models/<NAME>/``. Nothing here
ever touches the network: a model is either in the cache, bundled with the package, or given as a path.
Concurrent processes (export on first use, shards of one sampling run) serialise changes to a model folder
with a file lock beside it. The module imports only the standard library and the card, so shell completion
can list model names (:func:`model_names`) instantly.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from meddiff_cli.errors import ModelError, UsageError
from meddiff_cli.fsutil import FolderLock, atomic_dir, sha256_file
from meddiff_cli.model.card import CARD_FILE, ModelCard
from meddiff_cli.model.scheduler import default_steps
from meddiff_cli.paths import models_dir

DEFAULT_MODEL = "default"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
LOCK_TIMEOUT_S = 600.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def validate_name(name: str, flag: str = "model name") -> str:
    """Model names become folder names: refuse separators, '..' and other surprises."""
    if not _NAME_RE.match(name) or name in {".", ".."}:
        raise UsageError(f"invalid {flag} {name!r}: use letters, digits, '.', '_' or '-' (max 100 chars, no paths)")
    return name


def model_names(cache_dir: str | Path | None = None) -> list[str]:
    """Names ``--model`` accepts without a path: cached models and the bundled ones (no card is parsed)."""
    names = set()
    for root in (models_dir(cache_dir), BUNDLED_DIR):
        if root.is_dir():
            names |= {p.name for p in root.iterdir() if (p / CARD_FILE).is_file() and _NAME_RE.match(p.name)}
    return sorted(names)


def resolve_model(name_or_path: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """Find a model folder: an existing folder path, else ``<cache>/models/NAME``, else a bundled model.

    A bundled model (package data, maybe read-only) is first copied into the cache with its sha256 verified,
    so ONNX export on first use and later verification happen in a writable folder the user owns; that holds
    for the bundled folder given as a path too, so nothing is ever written into the installed package.
    """
    name = str(name_or_path or DEFAULT_MODEL)
    candidate = Path(name).expanduser()
    looks_like_path = os.sep in name or name.startswith(".") or (os.altsep and os.altsep in name)
    if candidate.is_dir() and (candidate / CARD_FILE).is_file():
        resolved = candidate.resolve()
        if resolved.parent != BUNDLED_DIR.resolve():
            return candidate
        name = resolved.name  # the package's own copy: used through the cache, as by its name
    elif looks_like_path:
        raise ModelError("not a meddiff model folder (no model.json)", candidate)
    folder = models_dir(cache_dir) / validate_name(name)
    bundled = BUNDLED_DIR / name
    if (folder / CARD_FILE).is_file() and not _stale_bundle_copy(folder, bundled):
        return folder
    if (bundled / CARD_FILE).is_file():
        try:
            import_model(bundled, name, cache_dir, overwrite=(folder / CARD_FILE).is_file())
        except UsageError:  # another process copied it in the meantime
            if not (folder / CARD_FILE).is_file():
                raise
        return folder
    available = ", ".join(model_names(cache_dir)) or "none"
    raise ModelError(
        f"model {name!r} not found in {models_dir(cache_dir)} (available: {available}); train one with "
        f"`meddiff train --name {name}` or add one with `meddiff models import PATH --name {name}`"
    )


def _stale_bundle_copy(folder: Path, bundled: Path) -> bool:
    """True for a cache copy of a bundled model whose weights or intensity mapping (its calibration included) are
    not the installed package's: an upgrade of meddiff brought a new bundled model. Only copies meddiff made from
    its bundle (their card records the bundled weights' dtype) are ever replaced; a model the user trained or
    imported under that name is kept."""
    if not (bundled / CARD_FILE).is_file():
        return False
    try:
        cached, shipped = ModelCard.load(folder), ModelCard.load(bundled)
    except ModelError:
        return False
    if not cached.training.get("bundled_weights_dtype"):
        return False
    if any(name not in shipped.files and not name.startswith("onnx/") for name in cached.files):
        return False  # it gained weights of its own (e.g. a label decoder trained on the copy): the user's now
    return cached.intensity != shipped.intensity or any(cached.files.get(name) != sha
                                                        for name, sha in shipped.files.items())


@contextmanager
def model_lock(folder: str | Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock on a model folder (a ``.NAME.lock`` file beside it, so it never pollutes the folder; deleted
    when released)."""
    folder = Path(folder).resolve()
    with ExitStack() as held:
        try:
            held.enter_context(FolderLock(folder.parent / f".{folder.name}.lock", timeout=timeout))
        except TimeoutError:
            raise ModelError(f"another meddiff process has held the model lock for {timeout:.0f} s", folder) from None
        yield


def verify_model(folder: str | Path) -> dict[str, str]:
    """Check the sha256 of every file listed in the card; return {file: "ok"} or raise ModelError on the first problem."""
    folder = Path(folder)
    card = ModelCard.load(folder)
    if not card.files:
        raise ModelError("model card lists no files", folder / CARD_FILE)
    results: dict[str, str] = {}
    for relative, expected in sorted(card.files.items()):
        path = _inside(folder, relative)
        if not path.is_file():
            raise ModelError("file listed in the model card is missing", path)
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"sha256 mismatch (expected {expected[:12]}…, got {actual[:12]}…): file was modified or corrupted", path
            )
        results[relative] = "ok"
    return results


def model_summary(folder: str | Path) -> dict[str, Any]:
    """Card facts people look for first (no weights are read)."""
    folder = Path(folder)
    card = ModelCard.load(folder)
    size = sum(_inside(folder, f).stat().st_size for f in card.files if _inside(folder, f).is_file())
    return {
        "name": card.name,
        "folder": str(folder),
        "preset": card.preset,
        "modalities": card.modalities,
        "volume_shape": card.volume.get("shape"),
        "spacing_mm": card.volume.get("spacing"),
        "objective": card.objective,
        "modality_decoders": card.modality_decoders,
        "default_steps": default_steps(card),
        "onnx": sorted(f for f in card.files if f.startswith("onnx/")),
        "files": len(card.files),
        "size_bytes": size,
        "meddiff_version": card.meddiff_version,
    }


def list_models(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every model folder in the cache (unreadable cards are listed with their error, not hidden)."""
    root = models_dir(cache_dir)
    entries: list[dict[str, Any]] = []
    if not root.is_dir():
        return entries
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            entries.append(model_summary(folder))
        except ModelError as error:
            entries.append({"name": folder.name, "folder": str(folder), "error": error.one_line()})
    return entries


def import_model(source: str | Path, name: str | None = None, cache_dir: str | Path | None = None,
                 overwrite: bool = False) -> Path:
    """Copy a verified model folder into the cache (card + the files it lists; atomically, under the lock)."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise ModelError("import expects a model folder (with model.json)", source)
    verify_model(source)
    card = ModelCard.load(source)
    target = models_dir(cache_dir) / validate_name(name or card.name)
    if (target / CARD_FILE).exists() and not overwrite:
        raise UsageError(f"model {target.name!r} already exists in the cache; pass --overwrite or choose --name", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    card.name = target.name
    with model_lock(target), atomic_dir(target, replace=True) as tmp:  # a cache entry (--overwrite checked above)
        for relative in card.files:
            destination = tmp / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(_inside(source, relative), destination)
        card.save(tmp)
        verify_model(tmp)
    return target


def remove_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """Delete a cached model folder (only folders inside the cache, never arbitrary paths)."""
    folder = models_dir(cache_dir) / validate_name(name)
    if not folder.is_dir():
        raise ModelError(f"model {name!r} is not in the cache", folder)
    with model_lock(folder):
        shutil.rmtree(folder)
    return folder


def _inside(folder: Path, relative: str) -> Path:
    """Resolve a card-listed file name, refusing names that escape the model folder."""
    path = (folder / relative).resolve()
    if folder.resolve() not in path.parents:
        raise ModelError(f"model card lists a file outside the model folder: {relative!r}", folder / CARD_FILE)
    return path
