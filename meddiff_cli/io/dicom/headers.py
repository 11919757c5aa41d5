"""Small, defensive readers for DICOM header values (force-parsed files may hold anything)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class NotAnImage(Exception):
    """A DICOM file that holds no cross-sectional image (reason in the message)."""


def sop_class(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))


def float_list(value: Any, count: int) -> np.ndarray | None:
    """``count`` finite numbers, or None when the value is missing or malformed."""
    if value is None:
        return None
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.isfinite(numbers).all() else None


def positive_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def group_item(ds: Dataset, frame: int | None, sequence: str) -> Dataset | None:
    """Functional-group lookup for enhanced multi-frame: per-frame item first, then shared."""
    sources = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds and frame < len(ds.PerFrameFunctionalGroupsSequence):
        sources.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        sources.append(ds.SharedFunctionalGroupsSequence[0])
    for groups in sources:
        if sequence in groups and len(groups[sequence].value):
            return groups[sequence].value[0]
    return None


def private_value(ds: Dataset, group: int, creator: str, element: int) -> Any:
    """A private element by creator name (its block number differs between files), or None."""
    try:
        return ds.private_block(group, creator)[element].value
    except (KeyError, ValueError, TypeError):
        return None


def image_type(ds: Dataset) -> tuple[str, ...]:
    """ImageType values upper-cased (a single value comes back as a one-element tuple)."""
    value = ds.get("ImageType")
    if value is None:
        return ()
    values = [value] if isinstance(value, (str, bytes)) else list(value)
    return tuple(str(v).strip().upper() for v in values)


def hashable(value: Any) -> Any:
    """A header value as a comparable, hashable key: numbers as rounded floats, sequences as tuples."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return tuple(hashable(v) for v in value)
    try:
        return round(float(value), 4)
    except (TypeError, ValueError):
        return str(value).strip()
