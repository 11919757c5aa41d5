"""The report's pictures, drawn with Pillow's ImageDraw (matplotlib is not a dependency): simple and deterministic."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from meddiff_cli.evaluate.pipeline import EvaluationResult
from meddiff_cli.io.preview import mid_slices

REAL_COLOUR = (31, 119, 180)
SYNTH_COLOUR = (255, 127, 14)
TRAIN_COLOUR = (150, 150, 150)
FLAG_COLOUR = (214, 39, 40)
MONTAGE_COLUMNS = 6


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _grey(slice_2d: np.ndarray) -> Image.Image:
    """Model-space [-1, 1] slice -> 8-bit image."""
    return Image.fromarray(np.clip((slice_2d + 1.0) * 127.5, 0, 255).astype(np.uint8))


def _views(volume: np.ndarray) -> list[Image.Image]:
    """Mid axial and coronal slices of a RAS volume, radiological display (patient right on the left, anterior/superior up)."""
    axial, coronal, _ = mid_slices(volume)
    return [_grey(np.ascontiguousarray(axial)), _grey(np.ascontiguousarray(coronal))]


def _tile(image: Image.Image, size: int = 128) -> Image.Image:
    return image.resize((size, size), Image.Resampling.NEAREST)


def montage(real: np.ndarray, synth: np.ndarray, tile: int = 128) -> Image.Image:
    """Rows: REAL axial, SYNTH axial, REAL coronal, SYNTH coronal; up to 6 volumes per set."""
    columns = min(MONTAGE_COLUMNS, max(len(real), len(synth)))
    label_width, font = 135, _font(16)
    canvas = Image.new("RGB", (label_width + columns * tile, 4 * tile), "white")
    draw = ImageDraw.Draw(canvas)
    rows = [("REAL axial", real, 0), ("SYNTH axial", synth, 0), ("REAL coronal", real, 1), ("SYNTH coronal", synth, 1)]
    for row, (title, volumes, view) in enumerate(rows):
        colour = REAL_COLOUR if title.startswith("REAL") else SYNTH_COLOUR
        draw.text((6, row * tile + tile // 2 - 8), title, fill=colour, font=font)
        for column, volume in enumerate(volumes[:columns]):
            canvas.paste(_tile(_views(volume)[view], tile), (label_width + column * tile, row * tile))
    return canvas


class _Axes:
    """A plot area with data->pixel mapping, ticks and labels."""

    def __init__(self, width: int, height: int, xlim: tuple[float, float], ylim: tuple[float, float], title: str) -> None:
        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.left, self.right, self.top, self.bottom = 70, width - 20, 40, height - 50
        self.xlim, self.ylim = xlim, ylim
        self.font = _font(13)
        self.draw.text((self.left, 10), title, fill="black", font=_font(16))
        self.draw.rectangle((self.left, self.top, self.right, self.bottom), outline="black")
        for fraction in np.linspace(0, 1, 5):
            xv = xlim[0] + fraction * (xlim[1] - xlim[0])
            yv = ylim[0] + fraction * (ylim[1] - ylim[0])
            px, py = self.px(xv, ylim[0])[0], self.px(xlim[0], yv)[1]
            self.draw.line((px, self.bottom, px, self.bottom + 5), fill="black")
            self.draw.text((px - 18, self.bottom + 8), f"{xv:.3g}", fill="black", font=self.font)
            self.draw.line((self.left - 5, py, self.left, py), fill="black")
            self.draw.text((5, py - 7), f"{yv:.3g}", fill="black", font=self.font)

    def px(self, x: float, y: float) -> tuple[float, float]:
        fx = (x - self.xlim[0]) / ((self.xlim[1] - self.xlim[0]) or 1.0)
        fy = (y - self.ylim[0]) / ((self.ylim[1] - self.ylim[0]) or 1.0)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)

    def line(self, xs, ys, colour) -> None:
        self.draw.line([self.px(x, y) for x, y in zip(xs, ys, strict=True)], fill=colour, width=2)

    def points(self, xs, ys, colour, radius: int = 4) -> None:
        for x, y in zip(xs, ys, strict=True):
            cx, cy = self.px(x, y)
            self.draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour, width=2)

    def legend(self, entries: list[tuple[str, tuple[int, int, int]]]) -> None:
        for row, (text, colour) in enumerate(entries):
            y = self.top + 8 + row * 18
            self.draw.rectangle((self.right - 150, y, self.right - 138, y + 12), fill=colour)
            self.draw.text((self.right - 132, y - 1), text, fill="black", font=self.font)

    def xlabel(self, text: str) -> None:
        self.draw.text(((self.left + self.right) // 2 - 60, self.bottom + 28), text, fill="black", font=self.font)


def histogram_plot(intensity: dict[str, Any]) -> Image.Image:
    centres = np.asarray(intensity["bin_centres"])
    real, synth = np.asarray(intensity["histogram_real"]), np.asarray(intensity["histogram_synthetic"])
    # Log scale: the air/background bin would otherwise flatten everything else.
    real_log, synth_log = np.log10(real + 1e-6), np.log10(synth + 1e-6)
    low = float(min(real_log.min(), synth_log.min()))
    half_bin = (centres[1] - centres[0]) / 2.0
    axes = _Axes(720, 380, (float(centres[0] - half_bin), float(centres[-1] + half_bin)), (low, 0.0), "Intensity histograms (log10 fraction of voxels)")
    axes.line(centres, real_log, REAL_COLOUR)
    axes.line(centres, synth_log, SYNTH_COLOUR)
    axes.legend([("REAL", REAL_COLOUR), ("SYNTH", SYNTH_COLOUR)])
    axes.xlabel(intensity["unit"].split(" (")[0])
    return axes.image


def pca_plot(features: dict[str, np.ndarray], extractor: str) -> Image.Image:
    """2D principal-component projection of the standardised features (fitted on REAL + SYNTH)."""
    fit = np.concatenate([features["real"], features["synthetic"]])
    mean = fit.mean(axis=0)
    _, _, components = np.linalg.svd(fit - mean, full_matrices=False)
    basis = components[:2].T if components.shape[0] >= 2 else np.eye(fit.shape[1], 2)
    projected = {role: (f - mean) @ basis for role, f in features.items()}
    stacked = np.concatenate(list(projected.values()))
    pad = 0.05 * (np.ptp(stacked, axis=0) + 1e-9)
    lims = [(float(stacked[:, i].min() - pad[i]), float(stacked[:, i].max() + pad[i])) for i in range(2)]
    axes = _Axes(560, 480, lims[0], lims[1], f"Feature space, first two principal components ({extractor})")
    colours = {"real": REAL_COLOUR, "synthetic": SYNTH_COLOUR, "train": TRAIN_COLOUR}
    for role in ("train", "real", "synthetic"):
        if role in projected:
            axes.points(projected[role][:, 0], projected[role][:, 1], colours[role])
    axes.legend([(r.upper() if r != "synthetic" else "SYNTH", colours[r]) for r in projected])
    axes.xlabel("PC1 (y: PC2)")
    return axes.image


def memorization_plots(result: EvaluationResult) -> tuple[Image.Image, Image.Image]:
    """(worst pairs side by side, nearest-train NCC distributions for held-out REAL vs SYNTH)."""
    memo = result.summary["memorization"]
    assert result.train is not None
    tile, font = 160, _font(14)
    pairs = memo["worst_pairs"]
    canvas = Image.new("RGB", (2 * tile + 20, len(pairs) * (tile + 24) + 10), "white")
    draw = ImageDraw.Draw(canvas)
    flagged = {f["synthetic"] for f in memo["flagged"]}
    for row, pair in enumerate(pairs):
        y = row * (tile + 24) + 5
        name = result.synth.names[pair["synthetic_index"]]
        colour = FLAG_COLOUR if name in flagged else "black"
        caption = f"NCC {pair['score']:.4f}  SYNTH | TRAIN{'  FLAGGED' if name in flagged else ''}"
        draw.text((5, y), caption, fill=colour, font=font)
        canvas.paste(_tile(_views(result.synth.arrays[pair["synthetic_index"]])[0], tile), (5, y + 18))
        canvas.paste(_tile(_views(result.train.arrays[pair["train_index"]])[0], tile), (15 + tile, y + 18))
    real_values = np.asarray(memo["real_nearest_ncc_values"])
    synth_values = np.asarray(memo["synthetic_nearest_ncc_values"])
    everything = np.concatenate([real_values, synth_values, [memo["threshold_ncc"]]])
    low = float(everything.min())
    axes = _Axes(560, 300, (low - 0.01 * (1 - low + 1e-3), 1.0), (0.0, 3.0), "Nearest-training-volume NCC (right = closer)")
    rng = np.random.default_rng(0)
    axes.points(real_values, 2.0 + 0.3 * rng.uniform(-1, 1, len(real_values)), REAL_COLOUR)
    axes.points(synth_values, 1.0 + 0.3 * rng.uniform(-1, 1, len(synth_values)), SYNTH_COLOUR)
    threshold_x = axes.px(memo["threshold_ncc"], 0)[0]
    axes.draw.line((threshold_x, axes.top, threshold_x, axes.bottom), fill=FLAG_COLOUR, width=2)
    axes.legend([("REAL held-out (y=2)", REAL_COLOUR), ("SYNTH (y=1)", SYNTH_COLOUR), ("flag threshold", FLAG_COLOUR)])
    return canvas, axes.image


def anatomy_plot(anatomy: dict[str, Any]) -> Image.Image:
    """Per structure: presence in REAL vs SYNTH (bars) and every volume's size in mL (dots, x = mL)."""
    structures = anatomy["structures"]
    row, width, left = 64, 760, 130
    canvas = Image.new("RGB", (width, 40 + row * len(structures)), "white")
    draw, font = ImageDraw.Draw(canvas), _font(13)
    draw.text((8, 8), "Anatomy: presence (bars, 0-100 %) and volume per sample (dots, mL)", fill="black", font=_font(15))
    bar_w, dots_x0, dots_x1 = 150, left + 190, width - 20
    for index, (name, entry) in enumerate(structures.items()):
        top = 36 + index * row
        draw.text((8, top + 18), name, fill="black", font=font)
        for offset, (role, colour) in enumerate((("real", REAL_COLOUR), ("synthetic", SYNTH_COLOUR))):
            y = top + 10 + offset * 22
            share = entry["presence"][role]
            draw.rectangle((left, y, left + bar_w, y + 14), outline=(200, 200, 200))
            draw.rectangle((left, y, left + int(bar_w * share), y + 14), fill=colour)
            draw.text((left + bar_w + 6, y), f"{100 * share:.0f} %", fill="black", font=font)
        values = entry["values_ml"]
        everything = np.asarray(values["real"] + values["synthetic"], dtype=np.float64)
        high = float(everything.max()) if everything.size and everything.max() > 0 else 1.0
        draw.line((dots_x0, top + 52, dots_x1, top + 52), fill=(180, 180, 180))
        draw.text((dots_x1 - 70, top + 40), f"{high:.3g} mL", fill=(120, 120, 120), font=font)
        for offset, (role, colour) in enumerate((("real", REAL_COLOUR), ("synthetic", SYNTH_COLOUR))):
            for value in values[role]:
                x = dots_x0 + (dots_x1 - dots_x0) * value / high
                y = top + 17 + offset * 22
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), outline=colour, width=2)
    return canvas
