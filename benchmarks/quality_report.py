"""Quality table, anatomy check, montage and training curve from benchmarks/quality_default.sh's outputs.

    python benchmarks/quality_report.py OUT MODEL

Reads OUT/quality/final/evaluate_{ct,mri}.json (and OUT/quality/curve/*/evaluate_*.json), the held-out
phantoms OUT/heldout_prep_* and the synthetic volumes OUT/quality/final/synth_*; writes OUT/quality/table.md,
OUT/quality/quality.json, OUT/quality/curve.png and docs/default_model_samples.png.

The anatomy check is data-driven: the spine's box (the posterior-midline bone of the held-out phantoms' label
maps, label ``bone``) is found on the real volumes; then for every volume, real or synthetic, it reports the
fraction of axial levels inside that box whose brightest voxel is bone (≥ BONE_HU). Real phantoms have their
vertebrae at 300-450 HU on the 6 mm grid; a sample without a spine stays below ~240 HU there.

Bone along the whole column is not yet separate vertebrae. The same levels' peak HU form a profile along the spine;
in real phantoms it rises and falls with each vertebral body and disc (pitch 24-29 mm), so about half of the
profile's variance lies at the vertebral pitch (VERTEBRA_PITCH_MM). A spine decoded as one bright band keeps
a tenth of it or less. The check reports that share for real and synthetic volumes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from meddiff_cli.io import read_nifti
from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.registry import resolve_model

BONE_HU = 250.0
MIDLINE_HALF_WIDTH = 2  # voxels either side of the spine's centre column
VERTEBRA_PITCH_MM = (21.0, 39.0)  # band around the phantoms' 24-29 mm vertebral pitch
MONTAGE_CASES = 4
WINDOWS = {"soft tissue (W400/L40)": (40.0, 400.0), "bone (W1500/L300)": (300.0, 1500.0)}


def _volumes(folder: Path, limit: int | None = None) -> list[np.ndarray]:
    files = sorted(folder.glob("*.nii.gz"))[:limit]
    return [read_nifti(f).array.astype(np.float32) for f in files]


def _real_hu(volume: np.ndarray) -> np.ndarray:
    """Preprocessed CT ([-1, 1] over the window -1000..1000 HU) back to HU."""
    return volume * 1000.0


def spine_box(labels: list[np.ndarray]) -> tuple[slice, slice, np.ndarray]:
    """x and y ranges of the posterior-midline bone, and the axial levels where real phantoms have it."""
    x_size = labels[0].shape[0]
    centre = x_size // 2
    band = slice(centre - 6, centre + 6)
    bone = np.stack([(lab[band] == 3) for lab in labels]).any(axis=0)  # [x, y, z], union over cases
    posterior = bone[:, : bone.shape[1] // 2]  # RAS: low y = posterior
    xs, ys, zs = np.nonzero(posterior)
    x_centre = band.start + int(np.median(xs))
    levels = np.zeros(bone.shape[2], bool)
    levels[np.unique(zs)] = True
    return (slice(x_centre - MIDLINE_HALF_WIDTH, x_centre + MIDLINE_HALF_WIDTH + 1),
            slice(int(ys.min()), int(ys.max()) + 1), levels)


def spine_fraction(volume_hu: np.ndarray, box: tuple[slice, slice, np.ndarray]) -> float:
    xs, ys, levels = box
    peak = volume_hu[xs, ys].max(axis=(0, 1))[levels]
    return float((peak >= BONE_HU).mean())


def vertebral_separation(volume_hu: np.ndarray, box: tuple[slice, slice, np.ndarray], spacing_mm: float) -> float:
    """Share of the spine profile's variance (peak HU per axial level, levels inside the box less 3 at each end)
    at periods within VERTEBRA_PITCH_MM: ~0.5 for real phantoms' separate vertebrae, ~0.1 for one bright band."""
    xs, ys, levels = box
    inside = np.nonzero(levels)[0][3:-3]
    profile = volume_hu[xs, ys].max(axis=(0, 1))[inside]
    power = np.abs(np.fft.rfft(profile - profile.mean())) ** 2
    periods_mm = spacing_mm / np.maximum(np.fft.rfftfreq(len(profile)), 1e-12)
    band = (periods_mm >= VERTEBRA_PITCH_MM[0]) & (periods_mm <= VERTEBRA_PITCH_MM[1])
    return float(power[band].sum() / max(power[1:].sum(), 1e-12))


def _window(image: np.ndarray, level: float, width: float) -> np.ndarray:
    return np.clip((image - (level - width / 2)) / width, 0.0, 1.0)


def _orthogonal(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal, sagittal mid-slices of a RAS+ volume in display orientation."""
    x, y, z = volume.shape
    return [np.flipud(volume[:, :, z // 2].T)[:, ::-1], np.flipud(volume[:, y // 2, :].T)[:, ::-1],
            np.flipud(volume[x // 2, :, :].T)[:, ::-1]]


def montage(rows: list[tuple[str, list[np.ndarray]]], path: Path, scale: int = 2) -> None:
    """Rows of images in [0, 1] with a label column; written as one PNG."""
    label_w, gap = 260, 2
    tiles = [[np.kron(t, np.ones((scale, scale))) for t in images] for _, images in rows]
    height = max(t.shape[0] for row in tiles for t in row)
    width = label_w + max(sum(t.shape[1] + gap for t in row) for row in tiles)
    canvas = Image.new("L", (width, len(rows) * (height + gap)), 0)
    draw = ImageDraw.Draw(canvas)
    for r, ((label, _), row) in enumerate(zip(rows, tiles)):
        top = r * (height + gap)
        draw.text((6, top + height // 2 - 6), label, fill=255)
        left = label_w
        for tile in row:
            canvas.paste(Image.fromarray((tile * 255).astype(np.uint8)), (left, top))
            left += tile.shape[1] + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def _row(values: dict, key: str) -> dict:
    fidelity = values["fidelity"]
    return {
        "fd": fidelity["frechet_distance"]["value"], "fd_baseline": fidelity["frechet_distance"]["baseline_real_vs_real"],
        "precision": fidelity["precision"]["value"], "recall": fidelity["recall"]["value"],
        "ms_ssim_synthetic": values["diversity"]["ms_ssim_synthetic"]["value"],
        "ms_ssim_real": values["diversity"]["ms_ssim_real"]["value"],
        "w1": values["intensity"]["wasserstein"]["value"], "w1_baseline": values["intensity"]["wasserstein"]["baseline_real_vs_real"],
        "w1_unit": values["intensity"]["unit"],
        "memorization_flags": (len(values["memorization"]["flagged"]) if values.get("memorization") else None),
        "features": values["features"]["extractor"], "synthetic": values["inputs"]["synthetic"]["count"],
        "real": values["inputs"]["real"]["count"], "label": key,
    }


def _curve(quality: Path) -> list[dict]:
    points = []
    for folder in sorted((quality / "curve").glob("diffusion_*")):
        if not (folder / "evaluate_mri.json").is_file():
            continue
        card = ModelCard.load(quality.parent / "snapshots" / folder.name)
        hours = (card.training["duration_s"]["autoencoder"] + card.training["duration_s"]["diffusion"]) / 3600
        point = {"step": card.training["steps"]["diffusion"], "training_hours": round(hours, 3)}
        for modality in ("ct", "mri"):
            row = _row(json.loads((folder / f"evaluate_{modality}.json").read_text()), modality)
            point[modality] = round(row["fd"] / row["fd_baseline"], 2)
        points.append(point)
    return points


def _plot_curve(points: list[dict], path: Path) -> None:
    """Fréchet distance / real-vs-real baseline (log scale) against training hours, one line per modality."""
    width, height, pad = 520, 300, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    hours = [p["training_hours"] for p in points]
    ratios = [p[m] for p in points for m in ("ct", "mri")]
    lo, hi = np.log10(max(min(ratios), 0.5)), np.log10(max(ratios) * 1.1)
    span_h = max(max(hours) - min(hours), 1e-6)

    def xy(h: float, r: float) -> tuple[float, float]:
        return (pad + (h - min(hours)) / span_h * (width - 2 * pad),
                height - pad - (np.log10(r) - lo) / max(hi - lo, 1e-6) * (height - 2 * pad))

    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    for modality, colour in (("ct", "red"), ("mri", "blue")):
        line = [xy(p["training_hours"], p[modality]) for p in points]
        draw.line(line, fill=colour, width=2) if len(line) > 1 else None
        for x, y in line:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((width - pad - 60, pad + (10 if modality == "ct" else 24)), modality.upper(), fill=colour)
    draw.text((pad, height - pad + 8), f"training hours {min(hours):.2f} .. {max(hours):.2f}", fill="black")
    draw.text((pad, 10), f"FD / real-vs-real (log), {10 ** lo:.1f} .. {10 ** hi:.0f}", fill="black")
    image.save(path)


def main() -> None:
    out, model = Path(sys.argv[1]), sys.argv[2]
    quality = out / "quality"
    card = ModelCard.load(resolve_model(model))
    table = {m: _row(json.loads((quality / "final" / f"evaluate_{m}.json").read_text()), m) for m in ("ct", "mri")}

    labels = _volumes(out / "heldout_prep_ct" / "labels")
    box = spine_box(labels)
    real_ct = [_real_hu(v) for v in _volumes(out / "heldout_prep_ct" / "images")]
    synth_ct = _volumes(quality / "final" / "synth_ct")
    spacing = float(json.loads((out / "heldout_prep_ct" / "manifest.json").read_text())["spacing"][2])
    anatomy = {"spine_bone_fraction_real": round(float(np.mean([spine_fraction(v, box) for v in real_ct])), 3),
               "spine_bone_fraction_synthetic": round(float(np.mean([spine_fraction(v, box) for v in synth_ct])), 3),
               "synthetic_with_spine_in_half_the_levels": int(sum(spine_fraction(v, box) >= 0.5 for v in synth_ct)),
               "vertebral_separation_real": round(float(np.mean([vertebral_separation(v, box, spacing) for v in real_ct])), 3),
               "vertebral_separation_synthetic": round(float(np.mean([vertebral_separation(v, box, spacing)
                                                                       for v in synth_ct])), 3),
               "synthetic_count": len(synth_ct), "bone_hu": BONE_HU}
    curve = _curve(quality)
    reference = {m: _row(json.loads((quality / "reference" / f"evaluate_{m}.json").read_text()), m)
                 for m in ("ct", "mri") if (quality / "reference" / f"evaluate_{m}.json").is_file()}
    result = {"model": card.name, "training": {k: card.training.get(k) for k in ("steps", "duration_s", "decoder_finetune")},
              "table": table, "reference": reference, "anatomy_ct": anatomy, "curve": curve}
    (quality / "quality.json").write_text(json.dumps(result, indent=2) + "\n")

    ct, mri = table["ct"], table["mri"]
    lines = [
        "| | CT | MRI |", "|---|---|---|",
        f"| Fréchet distance ({ct['features']}), synthetic vs real | {ct['fd']:.1f} | {mri['fd']:.1f} |",
        f"| Fréchet distance, real vs real (baseline) | {ct['fd_baseline']:.2f} | {mri['fd_baseline']:.2f} |",
        f"| ratio (target ≤ 5, goal ≤ 1.5) | {ct['fd'] / ct['fd_baseline']:.1f}× | {mri['fd'] / mri['fd_baseline']:.1f}× |",
        f"| precision / recall (k = 3) | {ct['precision']:.2f} / {ct['recall']:.2f} | {mri['precision']:.2f} / {mri['recall']:.2f} |",
        f"| MS-SSIM within synthetic / within real | {ct['ms_ssim_synthetic']:.3f} / {ct['ms_ssim_real']:.3f} | "
        f"{mri['ms_ssim_synthetic']:.3f} / {mri['ms_ssim_real']:.3f} |",
        f"| intensity Wasserstein-1 (baseline) | {ct['w1']:.1f} {ct['w1_unit']} ({ct['w1_baseline']:.1f}) | "
        f"{mri['w1']:.3f} ({mri['w1_baseline']:.3f}) {mri['w1_unit']} |",
        f"| memorization flags | {ct['memorization_flags']} of {ct['synthetic']} | {mri['memorization_flags']} of {mri['synthetic']} |",
        f"| CT: axial levels with spine bone (≥ {BONE_HU:.0f} HU), synthetic / real | "
        f"{anatomy['spine_bone_fraction_synthetic']:.2f} / {anatomy['spine_bone_fraction_real']:.2f} | |",
        f"| CT: separate vertebrae (share of the spine profile at the vertebral pitch), synthetic / real | "
        f"{anatomy['vertebral_separation_synthetic']:.2f} / {anatomy['vertebral_separation_real']:.2f} | |",
    ]
    if len(reference) == 2:
        old_ct, old_mri = reference["ct"], reference["mri"]
        lines += ["", "| reference model (same benchmark) | CT | MRI |", "|---|---|---|",
                  f"| Fréchet distance ratio | {old_ct['fd'] / old_ct['fd_baseline']:.1f}× | {old_mri['fd'] / old_mri['fd_baseline']:.1f}× |",
                  f"| precision / recall | {old_ct['precision']:.2f} / {old_ct['recall']:.2f} | {old_mri['precision']:.2f} / {old_mri['recall']:.2f} |",
                  f"| MS-SSIM within synthetic | {old_ct['ms_ssim_synthetic']:.3f} | {old_mri['ms_ssim_synthetic']:.3f} |",
                  f"| intensity Wasserstein-1 | {old_ct['w1']:.1f} {old_ct['w1_unit']} | {old_mri['w1']:.3f} |"]
    if curve:
        lines += ["", "| denoiser step | training hours | CT FD ratio | MRI FD ratio |", "|---|---|---|---|"]
        lines += [f"| {p['step']} | {p['training_hours']:.2f} | {p['ct']:.1f}× | {p['mri']:.1f}× |" for p in curve]
        _plot_curve(curve, quality / "curve.png")
    (quality / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    rows: list[tuple[str, list[np.ndarray]]] = []
    for name, level_width in WINDOWS.items():
        for kind, volumes in (("real", real_ct), ("synthetic", synth_ct)):
            images = [img for v in volumes[:MONTAGE_CASES] for img in _orthogonal(_window(v, *level_width))]
            rows.append((f"CT {kind}, {name}", images))
    real_mri = _volumes(out / "heldout_prep_mri" / "images", MONTAGE_CASES)
    synth_mri = _volumes(quality / "final" / "synth_mri", MONTAGE_CASES)
    for kind, volumes in (("real", real_mri), ("synthetic", synth_mri)):
        images = []
        for v in volumes:
            low, high = np.percentile(v, [0.5, 99.5])
            images += _orthogonal(np.clip((v - low) / max(high - low, 1e-6), 0, 1))
        rows.append((f"MRI {kind}", images))
    montage(rows, Path("docs/default_model_samples.png"))


if __name__ == "__main__":
    main()
