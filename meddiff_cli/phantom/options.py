"""Defaults and choices of ``meddiff phantom`` (no numpy here: the CLI reads them at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("nifti", "dicom")
CONTRASTS = ("t1", "t2")  # MRI only


@dataclass(frozen=True)
class CorpusDefaults:
    """Keyword defaults of :func:`meddiff_cli.phantom.write_phantom_corpus` (``spacing`` None: field of view / size)."""

    size: int = 64
    spacing: float | None = None
    seed: int = 0
    fmt: str = "nifti"
    contrast: str = "t1"
    workers: int = 1
    nodules: bool = True


DEFAULTS = CorpusDefaults()
