"""``manifest.json`` of a preprocessed folder: the contract between ``preprocess`` and training/evaluation.

Format ``meddiff-preprocess`` version 1 is documented in ``docs/formats.md`` (section "Preprocess output").
Paths inside it are relative to the manifest's folder; it never holds patient identifiers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meddiff_cli.errors import BadInputError, InputNotFoundError
from meddiff_cli.modality import MODALITIES
from meddiff_cli.preprocess.transform import PreprocessSettings

MANIFEST_NAME = "manifest.json"
ERRORS_NAME = "errors.json"
FORMAT = "meddiff-preprocess"
FORMAT_VERSION = 1

_TOP_KEYS = ("format", "format_version", "modality", "spacing", "size", "orientation", "intensity", "labels", "cases")
_CASE_KEYS = (
    "case_id",
    "source",
    "format",
    "original_shape",
    "original_spacing",
    "original_orientation",
    "image",
    "label",
    "intensity",
    "sha256",
    "label_sha256",
)


def default_intensity(settings: PreprocessSettings) -> dict[str, Any]:
    """The run-wide mapping rule (per-case values live in each case's ``intensity``)."""
    if settings.modality == "ct":
        return {"kind": "ct_window", "window": list(settings.window), "unit": "HU"}
    return {"kind": "percentile", "percentiles": list(settings.percentiles)}


def new_manifest(settings: PreprocessSettings, labels: dict[str, int] | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "modality": settings.modality,
        "spacing": list(settings.spacing or ()),
        "size": list(settings.size),
        "orientation": "RAS",
        "intensity": default_intensity(settings),
        "labels": labels,
        "volume_index": settings.volume_index,
        "notes": [],
        "cases": [],
    }


def settings_differences(manifest: dict[str, Any], settings: PreprocessSettings) -> list[str]:
    """Human-readable list of what differs between an existing manifest and the requested settings."""
    wanted = new_manifest(settings, None)
    differences = []
    for key in ("modality", "spacing", "size", "intensity", "volume_index"):
        if manifest.get(key) != wanted[key]:
            differences.append(f"{key} {json.dumps(manifest.get(key))} -> {json.dumps(wanted[key])}")
    return differences


def settings_from_manifest(manifest: dict[str, Any]) -> PreprocessSettings:
    """The settings an existing folder was made with (what ``harmonise_volume`` needs to match it)."""
    intensity = manifest["intensity"]
    kwargs: dict[str, Any] = {}
    if intensity.get("kind") == "ct_window":
        kwargs["window"] = tuple(intensity["window"])
    elif intensity.get("kind") == "percentile":
        kwargs["percentiles"] = tuple(intensity["percentiles"])
    return PreprocessSettings(
        modality=manifest["modality"], spacing=tuple(manifest["spacing"]), size=tuple(manifest["size"]),
        volume_index=manifest.get("volume_index"), **kwargs
    )


def load_manifest(dir_or_file: str | Path) -> dict[str, Any]:
    """Read and validate a preprocess manifest (the folder or the file itself).

    Raises :class:`InputNotFoundError` when it is missing and :class:`BadInputError` naming the
    first problem when it is not valid JSON, not this format, a newer version or incomplete.
    """
    path = Path(dir_or_file)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InputNotFoundError(f"no {MANIFEST_NAME} here: run `meddiff preprocess` first", path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"unreadable manifest ({error})", path) from None
    validate_manifest(manifest, path)
    return manifest


def validate_manifest(manifest: Any, path: str | Path | None = None) -> None:
    """Check structure and types; raise one clear :class:`BadInputError` for the first problem."""

    def fail(message: str) -> None:
        raise BadInputError(f"invalid preprocess manifest: {message}", path)

    if not isinstance(manifest, dict):
        fail("not a JSON object")
    if manifest.get("format") != FORMAT:
        fail(f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        fail(f"format_version {version!r} is not supported (this meddiff reads up to {FORMAT_VERSION})")
    missing = [key for key in _TOP_KEYS if key not in manifest]
    if missing:
        fail(f"missing keys {missing}")
    if manifest["modality"] not in MODALITIES:
        fail(f"modality {manifest['modality']!r} is not ct or mri")
    for key, kinds in (("spacing", (int, float)), ("size", (int,))):
        value = manifest[key]
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, kinds) and v > 0 for v in value)):
            fail(f"{key} must be three positive {'integers' if key == 'size' else 'numbers'}, got {value!r}")
    if manifest["labels"] is not None and not (
        isinstance(manifest["labels"], dict) and all(isinstance(v, int) for v in manifest["labels"].values())
    ):
        fail("labels must be null or an object {name: integer value}")
    if not isinstance(manifest["cases"], list):
        fail("cases must be a list")
    notes = manifest.get("notes", [])
    if not (isinstance(notes, list) and all(isinstance(note, str) for note in notes)):
        fail("notes must be a list of strings")
    volume_index = manifest.get("volume_index")
    if volume_index is not None and (not isinstance(volume_index, int) or isinstance(volume_index, bool) or volume_index < 0):
        fail(f"volume_index must be null or a whole number >= 0, got {volume_index!r}")
    seen: set[str] = set()
    for index, case in enumerate(manifest["cases"]):
        if not isinstance(case, dict):
            fail(f"cases[{index}] is not an object")
        missing = [key for key in _CASE_KEYS if key not in case]
        if missing:
            fail(f"cases[{index}] is missing {missing}")
        if case["case_id"] in seen:
            fail(f"case id {case['case_id']!r} appears twice")
        seen.add(case["case_id"])
        for key in ("image", "label"):
            value = case[key]
            if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts):
                fail(f"cases[{index}].{key} must be a path inside the folder, got {value!r}")
        intensity = case["intensity"]
        if not isinstance(intensity, dict) or intensity.get("kind") not in ("ct_window", "percentile"):
            fail(f"cases[{index}].intensity has no known kind")
        bounds = intensity.get("window") if intensity["kind"] == "ct_window" else intensity.get("values")
        if not (isinstance(bounds, list) and len(bounds) == 2 and bounds[0] < bounds[1]):
            fail(f"cases[{index}].intensity bounds must be [lo, hi] with lo < hi")
