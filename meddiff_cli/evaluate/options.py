"""What ``meddiff evaluate`` computes and how: the one place its defaults are declared (the CLI reads them here).

Imports nothing heavy: the CLI reads these defaults at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meddiff_cli.preprocess import PreprocessSettings


@dataclass(frozen=True)
class EvaluateOptions:
    """Harmonisation, features and checks of one evaluation.

    ``size`` / ``spacing`` None: taken from the data (:mod:`meddiff_cli.evaluate.grid`); one of them given:
    the other keeps the data grid's field of view. ``window`` None: preprocess's CT window. ``anatomy``
    None: on when REAL has label maps or ``anatomy_model`` is set.
    """

    features: str = "auto"
    modality: str = "auto"
    size: int | tuple[int, ...] | None = None
    spacing: float | tuple[float, ...] | None = None
    window: tuple[float, float] | None = None
    device: str = "auto"
    workers: int = 1
    k: int = 3
    bootstrap_reps: int = 200
    seed: int = 0
    memorization_margin: float = 0.5
    anatomy: bool | None = None
    anatomy_model: str | Path | None = None
    anatomy_steps: int = 300
    cache: str | Path | None = None

    def preprocess_settings(self, modality: str, size: tuple[int, int, int], spacing: tuple[float, float, float]) -> PreprocessSettings:
        from meddiff_cli.preprocess import PreprocessSettings

        kwargs: dict[str, Any] = {"modality": modality, "size": size, "spacing": spacing}
        if self.window is not None:
            kwargs["window"] = self.window
        return PreprocessSettings(**kwargs).resolved(modality)
