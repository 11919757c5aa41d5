"""What ``meddiff preprocess`` maps every case to: grid, spacing, CT window, MRI percentiles (no numpy here:
the CLI and ``evaluate`` read these defaults at start-up)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from meddiff_cli.errors import UsageError
from meddiff_cli.modality import AUTO, MODALITIES

DEFAULT_SPACING_MM = {"ct": 3.0, "mri": 1.5}
DEFAULT_SIZE = 64
DEFAULT_WINDOW_HU = (-1000.0, 1000.0)
DEFAULT_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class PreprocessSettings:
    """What every case is mapped to. ``None`` spacing means the modality default (CT 3 mm, MRI 1.5 mm).

    ``volume_index`` picks that volume (0-based) of every 4D DICOM series (fMRI, DWI, multi-echo...);
    ``None`` refuses 4D series, naming their structure. 3D inputs ignore it.
    """

    modality: str = "auto"
    spacing: tuple[float, float, float] | None = None
    size: tuple[int, int, int] = (DEFAULT_SIZE,) * 3
    window: tuple[float, float] = DEFAULT_WINDOW_HU
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    volume_index: int | None = None

    def __post_init__(self) -> None:
        if self.modality not in (*MODALITIES, AUTO):
            raise UsageError(f"modality must be ct, mri or auto, got {self.modality!r}")
        size = _triple(self.size, "size", int)
        if min(size) < 1:
            raise UsageError(f"size must be positive, got {size}")
        object.__setattr__(self, "size", size)
        if self.spacing is not None:
            spacing = _triple(self.spacing, "spacing", float)
            if min(spacing) <= 0 or not all(math.isfinite(v) for v in spacing):
                raise UsageError(f"spacing must be positive millimetres, got {spacing}")
            object.__setattr__(self, "spacing", spacing)
        lo, hi = (float(v) for v in self.window)
        if not lo < hi:
            raise UsageError(f"window must be LO,HI with LO < HI, got {lo},{hi}")
        object.__setattr__(self, "window", (lo, hi))
        p_lo, p_hi = (float(v) for v in self.percentiles)
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise UsageError(f"percentiles must satisfy 0 <= LO < HI <= 100, got {p_lo},{p_hi}")
        object.__setattr__(self, "percentiles", (p_lo, p_hi))
        if self.volume_index is not None and (isinstance(self.volume_index, bool) or int(self.volume_index) < 0
                                              or int(self.volume_index) != self.volume_index):
            raise UsageError(f"volume index must be a whole number >= 0, got {self.volume_index!r}")

    def resolved(self, modality: str | None = None) -> PreprocessSettings:
        """Concrete settings for one modality: ``auto`` replaced and the default spacing filled in."""
        modality = self.modality if self.modality != AUTO else (modality or AUTO)
        if modality not in MODALITIES:
            raise UsageError("cannot tell whether the input is CT or MRI: pass --modality ct or --modality mri")
        spacing = self.spacing or (DEFAULT_SPACING_MM[modality],) * 3
        return replace(self, modality=modality, spacing=spacing)

    def to_json(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def _triple(value: Any, name: str, kind: type) -> tuple:
    values = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise UsageError(f"{name} takes one value or three (i,j,k), got {len(values)}")
    return tuple(kind(v) for v in values)
