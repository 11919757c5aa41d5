"""An overall verdict a person can read: each number as a multiple of what REAL scores against itself.

A Fréchet distance of 1447 means nothing alone; 180x the distance between two halves of the real set
does. For every distance the verdict divides SYNTH-vs-REAL by REAL-vs-REAL (the baseline the report already
computes); for precision/recall it compares the fractions; for the anatomy check it compares how often each
structure is found. Each metric gets a category — ``close`` (ratio <= :data:`CLOSE_RATIO`, the target of
the bundled model), ``different`` or ``far`` (ratio > :data:`FAR_RATIO`) — and the overall verdict is the
worst of them, with the reasons in one line.

KID is reported but does not vote when its baseline is <= 0: its estimator is unbiased, so two samples of
one distribution score around 0, negative about half the time, and a ratio to such a baseline is noise.
"""

from __future__ import annotations

import math
from typing import Any

CLOSE_RATIO = 1.5
FAR_RATIO = 5.0
CATEGORIES = ("close", "different", "far")
WORDS = {"close": "close to real", "different": "noticeably different from real", "far": "far from real"}


def _category_of_ratio(ratio: float) -> str:
    return "close" if ratio <= CLOSE_RATIO else ("different" if ratio <= FAR_RATIO else "far")


def _distance(name: str, entry: dict[str, Any] | None, log_scale: bool = False) -> dict[str, Any] | None:
    """Ratio of a distance to its REAL-vs-REAL baseline (FRD: of d^2, undoing its log)."""
    if not entry or entry.get("value") is None or entry.get("baseline_real_vs_real") is None:
        return None
    value, baseline = float(entry["value"]), float(entry["baseline_real_vs_real"])
    ratio = math.exp(value - baseline) if log_scale else (value / baseline if baseline > 0 else None)
    if ratio is None:
        return {"value": value, "baseline": baseline, "ratio": None, "category": None,
                "reading": f"{name} {value:.4g}; the REAL halves score {baseline:.4g} (no ratio)"}
    scale = " (of d^2)" if log_scale else ""
    return {"value": value, "baseline": baseline, "ratio": ratio, "category": _category_of_ratio(ratio),
            "reading": f"{name} {ratio:.3g}x the real-vs-real distance{scale}"}


def _kid(entry: dict[str, Any]) -> dict[str, Any]:
    value, baseline = entry["value"], entry.get("baseline_real_vs_real")
    if baseline is not None and baseline > 0:
        found = _distance("KID", entry)
        assert found is not None
        return found
    note = ("KID is unbiased: two halves of REAL score around 0 and here " + f"{baseline:.3g}" if baseline is not None
            else "no REAL-vs-REAL baseline (fewer than 4 REAL volumes)")
    return {"value": value, "baseline": baseline, "ratio": None, "category": None,
            "reading": f"KID {value:.3g} ({note}; not used for the verdict)"}


def _coverage(name: str, entry: dict[str, Any], meaning: str) -> dict[str, Any] | None:
    value, baseline = entry["value"], entry.get("baseline_real_vs_real")
    if baseline is None or value is None:
        return None
    reference = max(float(baseline), 1e-9)
    share = value / reference
    category = "close" if share >= 1.0 / CLOSE_RATIO else ("different" if share >= 1.0 / FAR_RATIO else "far")
    return {"value": value, "baseline": baseline, "ratio": share, "category": category,
            "reading": f"{name} {100 * value:.0f} % of {meaning} (REAL halves: {100 * baseline:.0f} %)"}


def _structures(anatomy: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per structure found in most REAL volumes: presence share and the volume W1 as a multiple of REAL-vs-REAL."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in ((anatomy or {}).get("structures") or {}).items():
        real, synth = entry["presence"]["real"], entry["presence"]["synthetic"]
        if real < 0.5:  # rare in REAL too (e.g. nodules): not a presence test
            continue
        share = synth / real
        category = "close" if share >= 0.9 else ("different" if share >= 0.5 else "far")
        reading = f"{name} present in {100 * synth:.0f} % of samples vs {100 * real:.0f} % of real"
        volume = entry.get("volume_ml") or {}
        ratio = None
        if volume.get("baseline_real_vs_real"):
            ratio = volume["wasserstein"] / volume["baseline_real_vs_real"]
            category = max(category, _category_of_ratio(ratio), key=CATEGORIES.index)
            reading += f", its volume distribution {ratio:.3g}x as far as real-vs-real (W1)"
        out[name] = {"real": real, "synthetic": synth, "volume_ratio": ratio, "category": category, "reading": reading}
    return out


def make_verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """The ``verdict`` object of ``report.json`` (see the module docstring)."""
    fid = summary["fidelity"]
    metrics: dict[str, dict[str, Any] | None] = {
        "frechet_distance": _distance(f"Fréchet distance ({summary['features']['extractor']})", fid["frechet_distance"]),
        "frd": _distance("FRD", fid.get("frd"), log_scale=True),
        "kid": _kid(fid["kid"]),
        "precision": _coverage("precision:", fid["precision"], "samples look real"),
        "recall": _coverage("recall:", fid["recall"], "real volumes covered by samples"),
        "intensity_wasserstein": _distance("intensity W1", summary["intensity"]["wasserstein"]),
    }
    present = {k: v for k, v in metrics.items() if v is not None}
    anatomy = _structures(summary.get("anatomy"))
    voting = [m for m in present.values() if m["category"]] + list(anatomy.values())
    if not voting:
        overall, line = None, "no verdict: REAL needs at least 4 volumes for a real-vs-real baseline"
        return {"overall": None, "line": line, "metrics": present, "anatomy": anatomy, "rules": _rules()}
    overall = max((m["category"] for m in voting), key=CATEGORIES.index)
    reasons = [m["reading"] for m in voting if m["category"] == overall]
    line = f"{WORDS[overall]}: " + "; ".join(reasons[:4])
    div = summary.get("diversity") or {}
    if div.get("ms_ssim_synthetic") and div.get("ms_ssim_real"):
        ms_s, ms_r = div["ms_ssim_synthetic"]["value"], div["ms_ssim_real"]["value"]
        if ms_s - ms_r > 0.05:
            present["diversity"] = {"reading": f"samples are more alike than real volumes (MS-SSIM {ms_s:.2f} vs {ms_r:.2f})"}
        elif ms_r - ms_s > 0.05:
            present["diversity"] = {"reading": f"samples are less alike than real volumes (MS-SSIM {ms_s:.2f} vs {ms_r:.2f}): noise?"}
    return {"overall": overall, "line": line, "metrics": present, "anatomy": anatomy, "rules": _rules()}


def _rules() -> str:
    return (f"distance ratio SYNTH/REAL-halves <= {CLOSE_RATIO:g}: close, <= {FAR_RATIO:g}: different, above: far; "
            f"precision/recall as a share of REAL's (>= {1 / CLOSE_RATIO:.2g} close, >= {1 / FAR_RATIO:.2g} different); "
            "a structure found in REAL is close when found in >= 90 % as many samples, far below 50 %, and its "
            "volume W1 is read like a distance ratio; "
            "the overall verdict is the worst category")
