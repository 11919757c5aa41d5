"""The label table of a model with a label decoder: which output channel is which label of which modality.

Card layout (``card.labels``; empty when the model has no label decoder)::

    {"channels": 10,
     "modalities": {"ct": {"values": [0, 1, ...], "names": ["background", "lungs", ...], "channels": [0, 1, ...]},
                    "mri": {"values": [0, 1, 2, 3], "names": [...], "channels": [6, 7, 8, 9]}}}

Each modality owns its own block of channels (background included), so one network serves label sets that
share nothing but the value 0; a volume's label is the argmax over its modality's channels only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meddiff_cli.errors import ModelError

LABEL_DECODER_FILE = "label_decoder.safetensors"


@dataclass(frozen=True)
class ModalityLabels:
    values: list[int]
    names: list[str]
    channels: list[int]

    def names_by_value(self) -> dict[int, str]:
        return dict(zip(self.values, self.names))


def label_layout(tables: dict[str, dict[str, int]]) -> dict[str, Any]:
    """``card.labels`` for per-modality ``{name: value}`` tables (order of ``tables`` = channel order)."""
    layout: dict[str, Any] = {"channels": 0, "modalities": {}}
    for modality, table in tables.items():
        if 0 not in table.values():
            table = {"background": 0, **table}
        ordered = sorted(table.items(), key=lambda item: item[1])
        first = layout["channels"]
        layout["modalities"][modality] = {"values": [int(v) for _, v in ordered], "names": [n for n, _ in ordered],
                                          "channels": list(range(first, first + len(ordered)))}
        layout["channels"] = first + len(ordered)
    return layout


def has_labels(labels: dict[str, Any]) -> bool:
    return bool(labels) and int(labels.get("channels", 0)) > 0


def modality_labels(labels: dict[str, Any], modality: str, model_name: str) -> ModalityLabels:
    """The label set of ``modality``; a clear error when the model cannot generate label maps for it."""
    if not has_labels(labels):
        raise ModelError(f"model {model_name!r} has no label decoder, so it cannot write label maps; train one with "
                         f"`meddiff train PREPROCESSED_WITH_LABELS... --name {model_name} --stage labels`")
    entry = labels.get("modalities", {}).get(modality)
    if entry is None:
        raise ModelError(f"model {model_name!r} has no label maps for {modality!r} (it has them for "
                         f"{', '.join(labels.get('modalities', {}))})")
    return ModalityLabels([int(v) for v in entry["values"]], [str(n) for n in entry["names"]],
                          [int(c) for c in entry["channels"]])
