"""Every environment variable meddiff reads, and the folders they point to: one place to look them up.

* ``MEDDIFF_HOME``: the cache (models, feature-extractor weights); default: platformdirs' user cache.
* ``MEDDIFF_MAX_VOXELS``: the largest volume a reader accepts (see :mod:`meddiff_cli.io.limits`).
* ``MEDDIFF_CONFIG``: a TOML settings file (read by click through the root ``--config`` option).
* ``MEDDIFF_<COMMAND>_<FLAG>``: option values, read by click (see :mod:`meddiff_cli.cli.config`).
* torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``: which process of a multi-process run this is.

Nothing here imports more than the standard library and platformdirs, so the CLI can use it at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "MEDDIFF_HOME"
MAX_VOXELS_ENV = "MEDDIFF_MAX_VOXELS"
CONFIG_ENV = "MEDDIFF_CONFIG"


def cache_root(override: str | Path | None = None) -> Path:
    """The meddiff cache folder: ``override`` > ``$MEDDIFF_HOME`` > platformdirs' user cache."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("meddiff", appauthor=False))


def models_dir(override: str | Path | None = None) -> Path:
    """Folder holding one sub-folder per model: ``<cache>/models/<NAME>/``."""
    return cache_root(override) / "models"


def max_voxels_setting() -> str:
    """The raw ``MEDDIFF_MAX_VOXELS`` value ('' when unset); :mod:`meddiff_cli.io.limits` parses it."""
    return os.environ.get(MAX_VOXELS_ENV, "").strip()


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch (rank 0 of 1 when started directly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_launch() -> Launch:
    """``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as torchrun sets them; unset or empty values mean a single process."""
    def number(name: str, default: int) -> int:
        return int(os.environ.get(name, "") or default)

    return Launch(number("RANK", 0), number("WORLD_SIZE", 1), number("LOCAL_RANK", 0))
