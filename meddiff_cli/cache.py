"""Where models live: the user cache (platformdirs), overridable with ``MEDDIFF_HOME``."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_root(override: str | Path | None = None) -> Path:
    """The meddiff cache folder: ``override`` > ``$MEDDIFF_HOME`` > platformdirs' user cache."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("MEDDIFF_HOME")
    if env:
        return Path(env).expanduser()
    return Path(user_cache_dir("meddiff", appauthor=False))


def models_dir(override: str | Path | None = None) -> Path:
    """Folder holding one sub-folder per model: ``<cache>/models/<NAME>/``."""
    return cache_root(override) / "models"
