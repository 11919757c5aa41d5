"""The README figure of image + label pairs: real phantoms with their labels above generated pairs.

    python benchmarks/pairs_figure.py OUT docs/label_pairs.png

OUT is benchmarks/label_pairs.sh's folder: ``heldout_prep_<modality>`` (preprocessed phantoms with labels) and
``pairs_<modality>`` (``meddiff sample --with-labels`` output). Each row: axial and coronal mid-slices, plain and
with the label map blended in colour (CT in a soft-tissue window).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

COLOURS = np.array([[0, 0, 0], [70, 130, 255], [255, 60, 60], [255, 240, 90], [60, 220, 90], [255, 120, 255],
                    [0, 220, 220]], dtype=np.float32) / 255.0
ROWS_PER_SET = 2
SCALE = 3


def _slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial and coronal mid-slices of a RAS+ volume, anterior / superior up."""
    x, y, z = volume.shape
    return [np.flipud(volume[:, :, z // 2].T)[:, ::-1], np.flipud(volume[:, y // 2, :].T)[:, ::-1]]


def _gray(image: np.ndarray, modality: str) -> np.ndarray:
    """Model space [-1, 1] (preprocessed) or physical units (samples) -> [0, 1] display values."""
    if modality == "ct":
        hu = image if np.abs(image).max() > 2.0 else image * 1000.0
        return np.clip((hu + 160.0) / 400.0, 0.0, 1.0)  # soft-tissue window (level 40, width 400)
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)


def _tiles(image: np.ndarray, labels: np.ndarray, modality: str) -> list[np.ndarray]:
    tiles = []
    for plain, label in zip(_slices(_gray(image, modality)), _slices(labels.astype(np.int64))):
        rgb = np.repeat(plain[..., None], 3, axis=2)
        colour = COLOURS[np.clip(label, 0, len(COLOURS) - 1)]
        blended = np.where(label[..., None] > 0, 0.45 * rgb + 0.55 * colour, rgb)
        tiles += [rgb, blended]
    return [np.kron(t, np.ones((SCALE, SCALE, 1))) for t in tiles]


def _pairs(folder: Path, limit: int) -> list[tuple[np.ndarray, np.ndarray]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") == "meddiff-synthetic":
        entries = [(e["file"], e["label"]) for e in manifest["files"]]
    else:
        entries = [(c["image"], c["label"]) for c in manifest["cases"]]
    return [(np.asarray(nib.load(folder / image).dataobj, np.float32), np.asarray(nib.load(folder / label).dataobj))
            for image, label in entries[:limit]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("figure", type=Path)
    args = parser.parse_args()
    rows: list[tuple[str, list[np.ndarray]]] = []
    for modality in ("ct", "mri"):
        for title, folder in (("real phantom", args.out / f"heldout_prep_{modality}"),
                              ("generated pair", args.out / f"pairs_{modality}")):
            for image, labels in _pairs(folder, ROWS_PER_SET):
                rows.append((f"{modality.upper()} {title}", _tiles(image, labels, modality)))
    label_w, gap = 150, 3
    height = max(t.shape[0] for _, tiles in rows for t in tiles)
    width = label_w + max(sum(t.shape[1] + gap for t in tiles) for _, tiles in rows)
    canvas = Image.new("RGB", (width, len(rows) * (height + gap)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, (title, tiles) in enumerate(rows):
        top = r * (height + gap)
        draw.text((6, top + height // 2 - 6), title, fill=(255, 255, 255))
        left = label_w
        for tile in tiles:
            canvas.paste(Image.fromarray((tile * 255).astype(np.uint8)), (left, top))
            left += tile.shape[1] + gap
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.figure)
    print(f"wrote {args.figure} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
