"""The modalities meddiff knows, and the one spelling rule every command applies to ``--modality``."""

from __future__ import annotations

from meddiff_cli.errors import UsageError

MODALITIES = ("ct", "mri")
ALIASES = {"mr": "mri"}  # DICOM's Modality code for MRI
AUTO = "auto"


def canonical_modality(text: str, allow_auto: bool = False, flag: str = "--modality") -> str:
    """``CT``/``ct`` -> ``ct``, ``MR``/``mri`` -> ``mri`` (and ``auto`` where the command can detect it)."""
    value = ALIASES.get(text.strip().lower(), text.strip().lower())
    known = (*MODALITIES, AUTO) if allow_auto else MODALITIES
    if value not in known:
        raise UsageError(f"{flag} must be {', '.join(known[:-1])} or {known[-1]}, got {text!r}")
    return value
