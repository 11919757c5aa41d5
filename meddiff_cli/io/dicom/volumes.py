"""4D series: several volumes at the same slice positions (fMRI, DWI, multi-echo, cardiac phases, magnitude/phase).

A series whose positions repeat is split by the header tag whose values tell its volumes apart: the
first tag (in :data:`VOLUME_KINDS` order, then pairs of tags) whose values cut the frames into exactly
as many groups as a position repeats, each group holding every position at most once. Volumes are
numbered 0.. in ascending order of those values. Nothing is chosen unless asked (``volume_index``).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from meddiff_cli.errors import BadInputError
from meddiff_cli.io.dicom.frames import DicomFrame
from meddiff_cli.io.dicom.stack import DUPLICATE_TOLERANCE_MM

_TIME, _ECHO, _DIFFUSION = "time series (fMRI-like)", "multi-echo series", "diffusion series (DWI-like)"
_TYPE, _CARDIAC = "series of several image types (e.g. magnitude and phase)", "series of cardiac phases"
VOLUME_KINDS = {  # tag -> what a series varying in it is; the order is the order tags are tried in
    "AcquisitionNumber": _TIME, "FrameAcquisitionNumber": _TIME,
    "TemporalPositionIdentifier": _TIME, "TemporalPositionIndex": _TIME,
    "EchoNumbers": _ECHO, "EchoTime": _ECHO, "EffectiveEchoTime": _ECHO,
    "DiffusionBValue": _DIFFUSION, "B_value (0019,100C)": _DIFFUSION,
    "DiffusionGradientOrientation": _DIFFUSION, "DiffusionGradientDirection (0019,100E)": _DIFFUSION,
    "ImageType": _TYPE, "FrameType": _TYPE,
    "TriggerTime": _CARDIAC, "NominalCardiacTriggerDelayTime": _CARDIAC,
}
_KIND_PRIORITY = (_DIFFUSION, _ECHO, _CARDIAC, _TYPE, _TIME)  # the most specific kind names the series


def position_ids(along: np.ndarray) -> np.ndarray:
    """Same id for positions (mm along the normal) closer than the duplicate tolerance."""
    order = np.argsort(along, kind="stable")
    ids = np.empty(len(along), dtype=np.int64)
    ids[order] = np.concatenate([[0], np.cumsum(np.diff(along[order]) >= DUPLICATE_TOLERANCE_MM)])
    return ids


def _order(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, float) else (1, 0.0, str(value))


def select_volume(
    frames: list[DicomFrame], along: np.ndarray, case_id: str, volume_index: int | None, label: Path
) -> tuple[list[DicomFrame], dict[str, Any] | None]:
    """The frames of one volume and a note of the choice; a 3D series is returned as it is (note None)."""
    ids = position_ids(along)
    multiplicity = int(np.bincount(ids).max())
    if multiplicity == 1:
        return frames, None
    positions = int(ids.max()) + 1
    varying = [name for name in VOLUME_KINDS
               if all(name in f.volume_tags for f in frames) and len({f.volume_tags[name] for f in frames}) > 1]
    for tags in [(name,) for name in varying] + list(combinations(varying, 2)):
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, frame in enumerate(frames):
            groups[tuple(frame.volume_tags[name] for name in tags)].append(index)
        if len(groups) == multiplicity and all(len(set(ids[m])) == len(m) for m in groups.values()):
            break
    else:
        duplicates = len(frames) - positions
        raise BadInputError(
            f"series {case_id}: {duplicates} duplicated slice position(s) ({positions} positions, up to "
            f"{multiplicity} images each) and no header tag tells volumes apart (looked at "
            f"{', '.join(VOLUME_KINDS)}): a file copied twice, or images of several acquisitions mixed?",
            label,
        )
    keys = sorted(groups, key=lambda key: tuple(_order(v) for v in key))
    also = [name for name in varying if name not in tags
            and all(len({frames[i].volume_tags[name] for i in groups[key]}) == 1 for key in keys)]
    kinds = {VOLUME_KINDS[name] for name in (*tags, *also)}
    kind = next(k for k in _KIND_PRIORITY if k in kinds)
    told = " + ".join(tags) + (f" (also varying: {', '.join(also)})" if also else "")
    structure = f"{kind}: {positions} positions x {len(keys)} volumes, told apart by {told}"
    if volume_index is None:
        raise BadInputError(
            f"series {case_id} is 4D, not one volume: {structure}; choose one with --volume-index K "
            f"(volume_index=K in Python), K = 0..{len(keys) - 1} in ascending {' + '.join(tags)} order",
            label,
        )
    if not 0 <= volume_index < len(keys):
        raise BadInputError(
            f"series {case_id}: volume index {volume_index} is out of range, the series has {len(keys)} volumes "
            f"(0..{len(keys) - 1}; {structure})",
            label,
        )
    chosen = [frames[i] for i in groups[keys[volume_index]]]
    if len(chosen) != positions:
        raise BadInputError(
            f"series {case_id}: volume {volume_index} is incomplete ({len(chosen)} of {positions} slice positions; "
            f"{structure})",
            label,
        )
    value = keys[volume_index]
    return chosen, {"index": volume_index, "volumes": len(keys), "positions": positions, "kind": kind,
                    "told_apart_by": list(tags), "value": [v if isinstance(v, (float, str)) else str(v) for v in value]}
