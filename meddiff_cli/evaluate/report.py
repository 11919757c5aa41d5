"""``--report DIR``: report.json, PNG plots drawn with Pillow, and one self-contained report.html.

Plots are drawn with Pillow's ImageDraw (matplotlib is not a dependency): simple, legible and
deterministic. The whole folder is written atomically (a complete new report or the old one).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from meddiff_cli.evaluate import EvaluationResult
from meddiff_cli.fsutil import atomic_dir

REAL_COLOUR = (31, 119, 180)
SYNTH_COLOUR = (255, 127, 14)
TRAIN_COLOUR = (150, 150, 150)
FLAG_COLOUR = (214, 39, 40)
MONTAGE_COLUMNS = 6

EXPLANATIONS = {
    "frechet_distance": "Fréchet distance between Gaussians fitted to REAL and SYNTH features (lower = closer). "
    "Biased upwards for small sets: compare with the REAL-vs-REAL baseline, which uses two halves of REAL.",
    "kid": "Kernel distance (unbiased MMD^2, cubic kernel) on the same features; ~0 when the sets match, "
    "can be slightly negative. Less biased than the Fréchet distance for small sets.",
    "precision": "Fraction of synthetic volumes inside REAL's k-NN feature manifold: realism (higher = better).",
    "recall": "Fraction of real volumes inside SYNTH's k-NN feature manifold: coverage of the real variety.",
    "ms_ssim_synthetic": "Mean pairwise 3D MS-SSIM within SYNTH. Much higher than within REAL = too little diversity "
    "(mode collapse); much lower = noisy or incoherent samples.",
    "ms_ssim_real": "Mean pairwise 3D MS-SSIM within REAL: the diversity a synthetic set should show.",
    "wasserstein": "Wasserstein-1 distance between the pooled intensity histograms (HU for CT): how far voxel "
    "intensities must move to match (same unit as the intensities).",
    "slice": "Mean absolute difference between adjacent slices, SYNTH / REAL per axis. ~1 on every axis is good; "
    "one axis standing out points to slice-wise (2D) generation or interpolation artefacts.",
    "memorization": "For each synthetic volume, the most similar training volume by normalised cross-correlation of "
    "band-passed volumes; flagged when much closer than any held-out REAL volume gets to the training set.",
}


# ----------------------------------------------------------------------------------------- drawing


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
    x, y, z = (s // 2 for s in volume.shape)
    axial = volume[::-1, ::-1, z].T
    coronal = volume[::-1, y, ::-1].T
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


# ------------------------------------------------------------------------------------------- tables


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def metric_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(metric, value, 95% CI, REAL-vs-REAL baseline, meaning) rows shared by the terminal table and the HTML."""
    fid, div, inten = summary["fidelity"], summary["diversity"], summary["intensity"]
    extractor = summary["features"]["extractor"]
    rows = [
        (f"Fréchet distance ({extractor})", fid["frechet_distance"], "frechet_distance"),
        (f"KID ({extractor})", fid["kid"], "kid"),
        (f"Precision (k={fid['k']['real']})", fid["precision"], "precision"),
        (f"Recall (k={fid['k']['synthetic']})", fid["recall"], "recall"),
        ("MS-SSIM within SYNTH", div["ms_ssim_synthetic"], "ms_ssim_synthetic"),
        ("MS-SSIM within REAL", div["ms_ssim_real"], "ms_ssim_real"),
        (f"Intensity W1 ({inten['unit'].split(' (')[0]})", inten["wasserstein"], "wasserstein"),
    ]
    table = [
        (name, _fmt(entry["value"]), _ci(entry.get("ci95")), _fmt(entry.get("baseline_real_vs_real")), EXPLANATIONS[key])
        for name, entry, key in rows
    ]
    for axis, entry in summary["slice_consistency"]["axes"].items():
        table.append((f"Slice diff SYNTH/REAL, axis {axis}", _fmt(entry["ratio"]), _ci(entry["ratio_ci95"]), "1", EXPLANATIONS["slice"]))
    memo = summary.get("memorization")
    if memo is not None:
        table.append(
            ("Memorization: flagged", str(len(memo["flagged"])), "–", "0", EXPLANATIONS["memorization"] + f" Rule: {memo['rule']}.")
        )
    return table


# --------------------------------------------------------------------------------------------- html


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _html(summary: dict[str, Any], pngs: dict[str, bytes]) -> str:
    esc = html.escape
    h = summary["harmonisation"]
    inputs = ", ".join(f"{esc(role)}: {info['count']} volumes ({esc(info['path'])})" for role, info in summary["inputs"].items())
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in metric_rows(summary)
    )
    labels = summary["intensity"].get("labels") or {}
    label_rows = "\n".join(
        f"<tr><td>{esc(name)}</td><td>{_fmt((e.get('real') or {}).get('mean_ml'))}</td>"
        f"<td>{_fmt((e.get('synthetic') or {}).get('mean_ml'))}</td><td>{_fmt(e.get('relative_difference'))}</td></tr>"
        for name, e in labels.items()
    )
    memo = summary.get("memorization")
    flagged = ""
    if memo is not None:
        items = "".join(
            f"<li>{esc(f['synthetic'])} ~ {esc(f['nearest_train'])} (NCC {f['score']:.4f})</li>" for f in memo["flagged"]
        )
        flagged = f"<h2>Memorization</h2><p>{esc(EXPLANATIONS['memorization'])} Rule: {esc(memo['rule'])}.</p>" + (
            f"<p><b>Flagged synthetic volumes:</b></p><ul>{items}</ul>" if items else "<p>No synthetic volume flagged.</p>"
        )
    images = "\n".join(
        f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
        f"<figcaption>{esc(name)}</figcaption></figure>"
        for name, data in pngs.items()
    )
    ms = summary["diversity"]["settings"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>meddiff evaluation report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
th{{background:#f0f0f0}}img{{max-width:100%}}figure{{margin:1em 0}}</style></head><body>
<h1>meddiff evaluation report (synthetic data)</h1>
<p>Inputs: {inputs}.</p>
<p>Harmonisation ({esc(h['function'])}): modality {esc(h['modality'])}, {esc(str(h['size']))} voxels at
{esc(str(h['spacing_mm']))} mm, {esc(h['orientation'])}; intensity {esc(json.dumps(h['intensity']))}.
Features: <b>{esc(summary['features']['extractor'])}</b> ({summary['features']['used_after_dropping_constant']} used,
standardised with REAL's mean/std) — values are only comparable with the same extractor and harmonisation.
MS-SSIM: {ms['scales']} scales, Gaussian kernel {ms['kernel_size']} (sigma {ms['kernel_sigma']}), data range {ms['data_range']}.
Confidence intervals: percentile bootstrap over volumes, {summary['bootstrap']['reps']} resamples, when both sets have at least
{summary['bootstrap']['min_n']} volumes.</p>
<h2>Metrics</h2>
<table><tr><th>Metric</th><th>Value</th><th>95% CI</th><th>REAL vs REAL</th><th>How to read it</th></tr>
{rows}</table>
{"<h2>Label volumes (mL)</h2><table><tr><th>Label</th><th>REAL mean</th><th>SYNTH mean</th><th>relative difference</th></tr>" + label_rows + "</table>" if labels else ""}
{flagged}
<h2>Plots</h2>
{images}
<p>Computed in {summary['seconds']} s by meddiff {esc(str(summary['meddiff_version']))}.</p>
</body></html>
"""


def write_report(result: EvaluationResult, folder: str | Path) -> Path:
    """Write report.json, the PNGs and report.html into ``folder`` (atomically replaced as a whole)."""
    folder = Path(folder)
    summary = result.summary
    images = {
        "montage.png": montage(result.real.arrays, result.synth.arrays),
        "histograms.png": histogram_plot(summary["intensity"]),
        "features_pca.png": pca_plot(result.features, summary["features"]["extractor"]),
    }
    if summary.get("memorization") is not None:
        images["memorization_pairs.png"], images["memorization_ncc.png"] = memorization_plots(result)
    pngs = {name: _png_bytes(image) for name, image in images.items()}
    with atomic_dir(folder) as tmp:
        (tmp / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        for name, data in pngs.items():
            (tmp / name).write_bytes(data)
        (tmp / "report.html").write_text(_html(summary, pngs), encoding="utf-8")
    return folder
