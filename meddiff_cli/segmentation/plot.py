"""Dice-vs-K line plot with +-1 std error bars, one line per arm (Pillow only, no matplotlib)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from meddiff_cli.fsutil import atomic_path
from meddiff_cli.segmentation.options import ARM_TITLES

ARM_COLOURS = {"A": (31, 119, 180), "B": (214, 39, 40), "C": (44, 160, 44), "D": (148, 103, 189), "E": (255, 127, 14)}
LEGEND_ROWS = 3


def plot_dice_vs_k(series: dict[str, dict[int, tuple[float, float]]], path: Path, title: str,
                   width: int = 720, height: int = 480) -> Path:
    """``series[arm][k] = (mean, std)``; K on the x axis at equal spacing (K values are usually powers of 2).

    Arm E (generated pairs only) is its single point at K = 0; the legend fills columns of three arms.
    """
    font = ImageFont.load_default()
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 70, width - 20, 56, height - 100
    ks = sorted({k for points in series.values() for k in points})
    lows = [m - (s or 0.0) for points in series.values() for m, s in points.values()]
    highs = [m + (s or 0.0) for points in series.values() for m, s in points.values()]
    y_min = max(0.0, (min(lows) if lows else 0.0) - 0.05)
    y_max = min(1.0, (max(highs) if highs else 1.0) + 0.05)
    if y_max - y_min < 0.1:
        y_min, y_max = max(0.0, y_min - 0.05), min(1.0, y_max + 0.05)

    def x_of(k: int) -> float:
        return left + (ks.index(k) + 0.5) * (right - left) / max(1, len(ks))

    def y_of(value: float) -> float:
        return bottom - (value - y_min) / (y_max - y_min) * (bottom - top)

    draw.text((left, 10), title, fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    for tick in range(6):
        value = y_min + tick * (y_max - y_min) / 5
        y = y_of(value)
        draw.line([(left - 5, y), (left, y)], fill="black")
        draw.line([(left + 1, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 45, y - 6), f"{value:.2f}", fill="black", font=font)
    for k in ks:
        draw.line([(x_of(k), bottom), (x_of(k), bottom + 5)], fill="black")
        draw.text((x_of(k) - 6, bottom + 8), str(k), fill="black", font=font)
    draw.text(((left + right) / 2 - 90, bottom + 24), "labelled training volumes (K)", fill="black", font=font)
    draw.text((8, top - 22), "mean Dice (test set), +-1 std over seeds", fill="black", font=font)

    offsets = {arm: (i - (len(series) - 1) / 2) * 6 for i, arm in enumerate(sorted(series))}
    for arm, points in sorted(series.items()):
        colour = ARM_COLOURS.get(arm, (90, 90, 90))
        xy = [(x_of(k) + offsets[arm], y_of(points[k][0])) for k in sorted(points)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for k in sorted(points):
            mean, std = points[k]
            x, y = x_of(k) + offsets[arm], y_of(mean)
            if std:
                y_lo, y_hi = y_of(max(y_min, mean - std)), y_of(min(y_max, mean + std))
                draw.line([(x, y_lo), (x, y_hi)], fill=colour, width=1)
                draw.line([(x - 4, y_lo), (x + 4, y_lo)], fill=colour)
                draw.line([(x - 4, y_hi), (x + 4, y_hi)], fill=colour)
            draw.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=colour)
    for i, arm in enumerate(sorted(series)):
        x, y = left + (i // LEGEND_ROWS) * (right - left) // 2, bottom + 50 + (i % LEGEND_ROWS) * 14
        colour = ARM_COLOURS.get(arm, (90, 90, 90))
        draw.line([(x, y + 6), (x + 24, y + 6)], fill=colour, width=3)
        draw.text((x + 30, y), ARM_TITLES.get(arm, arm), fill="black", font=font)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return path
