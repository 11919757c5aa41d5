"""``--report DIR``: report.json, PNG plots (:mod:`~meddiff_cli.evaluate.plots`) and one self-contained report.html.

The metric rows are shared with the terminal table. Each file is written atomically into a new or empty folder,
or one holding an earlier report: meddiff's marker there lists the files it wrote, and only those are replaced
(:func:`meddiff_cli.fsutil.write_owned_files`); anything else in the folder is refused, never deleted.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from meddiff_cli.evaluate.pipeline import EvaluationResult
from meddiff_cli.evaluate.plots import anatomy_plot, histogram_plot, memorization_plots, montage, pca_plot
from meddiff_cli.fsutil import owned_files, write_owned_files

EXPLANATIONS = {
    "frechet_distance": "Fréchet distance between Gaussians fitted to REAL and SYNTH features (lower = closer). "
    "Biased upwards for small sets: compare with the REAL-vs-REAL baseline, which uses two halves of REAL.",
    "kid": "Kernel distance (unbiased MMD^2, cubic kernel) on the same features; ~0 when the sets match. Its "
    "estimator is unbiased, so two samples of one distribution score around 0 and often slightly below: a "
    "negative value (e.g. the REAL-vs-REAL baseline) means 'indistinguishable at this sample size'.",
    "frd": "Fréchet Radiomics Distance (FRDv1, as frd-score computes it): log of the squared Fréchet distance of "
    "z-scored pyradiomics features. A log scale: +0.69 = twice the squared distance. Compare with REAL vs REAL.",
    "precision": "Fraction of synthetic volumes inside REAL's k-NN feature manifold: realism (higher = better).",
    "recall": "Fraction of real volumes inside SYNTH's k-NN feature manifold: coverage of the real variety.",
    "ms_ssim_synthetic": "Mean pairwise 3D MS-SSIM within SYNTH. Much higher than within REAL = too little diversity "
    "(mode collapse); much lower = noisy or incoherent samples.",
    "ms_ssim_real": "Mean pairwise 3D MS-SSIM within REAL: the diversity a synthetic set should show.",
    "wasserstein": "Wasserstein-1 distance between the pooled intensity histograms (HU for CT): how far voxel "
    "intensities must move to match (same unit as the intensities).",
    "slice": "Mean absolute difference between adjacent slices, SYNTH / REAL per axis. ~1 on every axis is good; "
    "one axis standing out points to slice-wise (2D) generation or interpolation artefacts.",
    "anatomy": "Share of volumes in which the segmenter finds the structure (volume >= 10 % of REAL's median), "
    "SYNTH vs REAL; volumes and connected components in the Anatomy section.",
    "label_agreement": "Dice of a segmenter trained on REAL, reading each synthetic image, against the label map "
    "generated with it (sample --with-labels); the reference is the same segmenter on held-out REAL volumes.",
    "memorization": "For each synthetic volume, the most similar training volume by normalised cross-correlation of "
    "band-passed volumes; flagged when much closer than any held-out REAL volume gets to the training set.",
}


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
        *([("FRD (FRDv1, log d^2)", fid["frd"], "frd")] if fid.get("frd") else []),
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
    for name, entry in ((summary.get("anatomy") or {}).get("structures") or {}).items():
        presence = entry["presence"]
        table.append((f"Anatomy: {name} present", f"{100 * presence['synthetic']:.0f} %", "–",
                      f"{100 * presence['real']:.0f} % of REAL", EXPLANATIONS["anatomy"]))
    agreement = (summary.get("anatomy") or {}).get("label_agreement") or {}
    for name, dice in (agreement.get("dice") or {}).items():
        reference = agreement["real_reference_dice"].get(name)
        table.append((f"Labels agree: {name} Dice", _fmt(dice), "–", _fmt(reference) if reference is not None else "–",
                      EXPLANATIONS["label_agreement"]))
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
    verdict = summary.get("verdict") or {}
    verdict_html = f"<p><b>Verdict: {esc(verdict.get('line', ''))}</b></p>" + "".join(
        f"<li>{esc(m['reading'])}</li>" for m in (verdict.get("metrics") or {}).values()
    ).join(("<ul>", "</ul>")) + f"<p><small>{esc(verdict.get('rules', ''))}</small></p>"
    warnings = "".join(f"<p style='color:#b00'>warning: {esc(w)}</p>" for w in summary.get("warnings", []))
    anatomy_html = _anatomy_html(summary.get("anatomy"))
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
{verdict_html}{warnings}
<p>Harmonisation ({esc(h['function'])}): modality {esc(h['modality'])}, {esc(str(h['size']))} voxels at
{esc(str(h['spacing_mm']))} mm — {esc(h['grid']['reason'])}; {esc(h['orientation'])};
intensity {esc(json.dumps(h['intensity']))}.
Features: <b>{esc(summary['features']['extractor'])}</b> ({summary['features']['used_after_dropping_constant']} used,
standardised with REAL's mean/std) — values are only comparable with the same extractor and harmonisation.
MS-SSIM: {ms['scales']} scales, Gaussian kernel {ms['kernel_size']} (sigma {ms['kernel_sigma']}), data range {ms['data_range']}.
Confidence intervals: percentile bootstrap over volumes, {summary['bootstrap']['reps']} resamples, when both sets have at least
{summary['bootstrap']['min_n']} volumes.</p>
<h2>Metrics</h2>
<table><tr><th>Metric</th><th>Value</th><th>95% CI</th><th>REAL vs REAL</th><th>How to read it</th></tr>
{rows}</table>
{"<h2>Label volumes (mL)</h2><table><tr><th>Label</th><th>REAL mean</th><th>SYNTH mean</th><th>relative difference</th></tr>" + label_rows + "</table>" if labels else ""}
{anatomy_html}
{flagged}
<h2>Plots</h2>
{images}
<p>Computed in {summary['seconds']} s by meddiff {esc(str(summary['meddiff_version']))}.</p>
</body></html>
"""


def _anatomy_html(anatomy: dict[str, Any] | None) -> str:
    if not anatomy:
        return ""
    esc = html.escape
    rows = "\n".join(
        f"<tr><td>{esc(name)}</td><td>{100 * e['presence']['real']:.0f} %</td><td>{100 * e['presence']['synthetic']:.0f} %</td>"
        f"<td>{_fmt(e['volume_ml']['real']['mean'])}</td><td>{_fmt(e['volume_ml']['synthetic']['mean'])}</td>"
        f"<td>{_fmt(e['volume_ml']['wasserstein'])}</td><td>{_fmt(e['volume_ml']['baseline_real_vs_real'])}</td>"
        f"<td>{_fmt(e['components']['real']['mean'])}</td><td>{_fmt(e['components']['synthetic']['mean'])}</td></tr>"
        for name, e in anatomy["structures"].items()
    )
    source = anatomy["segmenter"]
    trust = f" Dice on held-out REAL: {esc(json.dumps(source['validation_dice']))}." if source.get("validation_dice") else ""
    return (f"<h2>Anatomy</h2><p>Segmenter: {esc(source['kind'])}.{trust} Present: {esc(anatomy['presence_rule'])}.</p>"
            "<table><tr><th>Structure</th><th>present REAL</th><th>present SYNTH</th><th>mean mL REAL</th>"
            "<th>mean mL SYNTH</th><th>volume W1 (mL)</th><th>REAL vs REAL</th><th>components REAL</th>"
            f"<th>components SYNTH</th></tr>{rows}</table>")


REPORT_KIND = "evaluate report"


def check_report_folder(folder: str | Path) -> None:
    """Refuse, before any computation, a ``--report`` path that is a file or a non-empty folder meddiff did not write."""
    owned_files(folder, REPORT_KIND)


def write_report(result: EvaluationResult, folder: str | Path) -> Path:
    """Write report.json, the PNGs and report.html into ``folder``, replacing only an earlier report's files."""
    folder = Path(folder)
    summary = result.summary
    images = {
        "montage.png": montage(result.real.arrays, result.synth.arrays),
        "histograms.png": histogram_plot(summary["intensity"]),
        "features_pca.png": pca_plot(result.features, summary["features"]["extractor"]),
    }
    if summary.get("anatomy"):
        images["anatomy.png"] = anatomy_plot(summary["anatomy"])
    if summary.get("memorization") is not None:
        images["memorization_pairs.png"], images["memorization_ncc.png"] = memorization_plots(result)
    pngs = {name: _png_bytes(image) for name, image in images.items()}
    files = {"report.json": (json.dumps(summary, indent=2) + "\n").encode("utf-8"), **pngs,
             "report.html": _html(summary, pngs).encode("utf-8")}
    return write_owned_files(folder, files, REPORT_KIND)
