"""Render docs/phantoms.png: axial, coronal and sagittal mid-slices of CT and MRI phantoms.

Usage: python scripts/phantom_montage.py [--size 128] [--count 4] [--out docs/phantoms.png]
Uses Pillow only (matplotlib is not a meddiff dependency).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from meddiff_cli.io.preview import mid_slices
from meddiff_cli.phantom import generate_phantom

CT_WINDOW = (-1000.0, 400.0)  # lung + soft tissue in one window


def to_uint8(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    return (np.clip((plane - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)


def montage(size: int, count: int, out: Path) -> None:
    tiles: list[list[np.ndarray]] = []
    captions: list[str] = []
    for modality, contrast in (("ct", "t1"), ("mri", "t1"), ("mri", "t2")):
        seeds = range(count) if contrast == "t1" else range(count, count + count // 2)
        for seed in seeds:
            image, _ = generate_phantom(modality, seed=seed, size=size, contrast=contrast)
            if modality == "ct":
                low, high = CT_WINDOW
            else:
                low, high = 0.0, float(np.percentile(image.array, 99.7))
            offset = 0 if modality == "ct" else max(1, size // 40)
            tiles.append([to_uint8(plane, low, high) for plane in mid_slices(image.array, offset)])
            captions.append(f"{modality.upper()}{' ' + contrast.upper() if modality == 'mri' else ''} seed {seed}")
    gap, label_h = 4, 16
    columns = 2
    rows = (len(tiles) + columns - 1) // columns
    tile_w = 3 * size + 2 * gap
    sheet = Image.new("L", (columns * (tile_w + 3 * gap), rows * (size + label_h + 3 * gap)), 0)
    draw = ImageDraw.Draw(sheet)
    for n, (planes, caption) in enumerate(zip(tiles, captions)):
        x0 = (n % columns) * (tile_w + 3 * gap)
        y0 = (n // columns) * (size + label_h + 3 * gap)
        draw.text((x0 + 2, y0 + 2), caption + " (axial, coronal, sagittal)", fill=255)
        for m, plane in enumerate(planes):
            sheet.paste(Image.fromarray(plane), (x0 + m * (size + gap), y0 + label_h))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    print(f"wrote {out} ({sheet.size[0]}x{sheet.size[1]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs/phantoms.png"))
    args = parser.parse_args()
    montage(args.size, args.count, args.out)


if __name__ == "__main__":
    main()
