"""Does sampling the decoder's likelihood (mean + fitted noise) instead of its mean bring samples closer to real?

The decoder returns the posterior mean of p(x | z): smooth, without the scanner grain and fine texture real volumes
have. This experiment fits a noise model on what the autoencoder loses — the residual x - D(mu(E(x))) of real
training-pool volumes: its robust std per reconstructed-intensity bin, and its correlation length (a Gaussian
filter width whose lag-1 autocorrelation matches the residual's) — and adds such noise to a sample folder:

    python benchmarks/decoder_noise.py fit PREP --model default --out noise.json
    python benchmarks/decoder_noise.py apply noise.json SYNTH NOISY --modality ct [--scale 0.25]
    meddiff evaluate HELDOUT_PREP NOISY ...   # next to the same evaluate of SYNTH

Measured results: docs/model.md ("Sampling the decoder's likelihood").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

BINS = 20
FOREGROUND = -0.97  # model-space level above which a voxel counts as inside the body / head


def lag1_correlation(x: np.ndarray, mask: np.ndarray) -> float:
    """Mean lag-1 autocorrelation over the three axes, on neighbour pairs inside ``mask``."""
    num = den = 0.0
    for axis in range(3):
        a, m = np.moveaxis(x, axis, 0), np.moveaxis(mask, axis, 0)
        both = m[1:] & m[:-1]
        num += float((a[1:] * a[:-1])[both].sum())
        den += float((0.5 * (a[1:] ** 2 + a[:-1] ** 2))[both].sum())
    return num / max(den, 1e-12)


def filter_width_for(rho: float) -> float:
    """The Gaussian filter sigma (voxels) that gives white noise a lag-1 autocorrelation of ``rho``."""
    rng = np.random.default_rng(0)
    widths = np.arange(0.0, 2.01, 0.05)
    rhos = []
    for width in widths:
        noise = rng.standard_normal((48, 48, 48)).astype(np.float32)
        if width > 0:
            noise = ndimage.gaussian_filter(noise, width, mode="wrap")
        rhos.append(lag1_correlation(noise, np.ones(noise.shape, bool)))
    return float(np.interp(rho, rhos, widths))


def fit(prep: Path, model: str) -> dict:
    import torch

    from meddiff_cli.model.registry import resolve_model
    from meddiff_cli.model.store import load_model

    _, autoencoder, _ = load_model(resolve_model(model, None))
    residuals, levels, rhos = [], [], []
    for path in sorted((prep / "images").glob("*.nii.gz")):
        x = np.asarray(nib.load(path).dataobj, np.float32)
        with torch.no_grad():
            mu, _ = autoencoder.encode(torch.from_numpy(x)[None, None])
            y = autoencoder.decode(mu)[0, 0].clamp(-1, 1).numpy()
        residual, inside = x - y, y > FOREGROUND
        rhos.append(lag1_correlation(residual, inside))
        residuals.append(residual[inside])
        levels.append(y[inside])
    residual, level = np.concatenate(residuals), np.concatenate(levels)
    edges = np.linspace(-1, 1, BINS + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    std = np.full(BINS, np.nan)
    for b in range(BINS):
        chosen = residual[(level >= edges[b]) & (level < edges[b + 1])]
        if chosen.size > 2000:
            std[b] = 1.4826 * np.median(np.abs(chosen - np.median(chosen)))
    known = ~np.isnan(std)
    std = np.interp(centres, centres[known], std[known])
    rho = float(np.median(rhos))
    return {"centres": centres.tolist(), "std": std.tolist(), "rho": rho, "sigma": filter_width_for(rho),
            "cases": len(rhos)}


def add_noise(x: np.ndarray, params: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    noise = rng.standard_normal(x.shape).astype(np.float32)
    if params["sigma"] > 0.05:
        noise = ndimage.gaussian_filter(noise, params["sigma"], mode="wrap")
    noise /= noise.std()
    std = np.interp(x, params["centres"], params["std"]).astype(np.float32) * scale
    return np.clip(x + noise * std, -1, 1)


def apply(params: dict, synth: Path, out: Path, modality: str, scale: float, seed: int) -> None:
    """Noisy copies of a sample folder's NIfTI volumes (bundled intensity mappings: CT ±1000 HU, MRI 0..1000)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for path in sorted(synth.glob("*.nii.gz")):
        image = nib.load(path)
        v = np.asarray(image.dataobj, np.float32)
        x = v / 1000.0 if modality == "ct" else v / 500.0 - 1.0
        y = add_noise(x, params, rng, scale)
        physical = y * 1000.0 if modality == "ct" else (y + 1.0) * 500.0
        array = np.round(physical).astype(np.int16) if modality == "ct" else physical.astype(np.float32)
        nib.save(nib.Nifti1Image(array, image.affine, image.header), out / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p_fit = commands.add_parser("fit", help="fit the noise model on a preprocess folder of real volumes")
    p_fit.add_argument("prep", type=Path)
    p_fit.add_argument("--model", default="default")
    p_fit.add_argument("--out", type=Path, required=True)
    p_apply = commands.add_parser("apply", help="write noisy copies of a sample folder")
    p_apply.add_argument("params", type=Path)
    p_apply.add_argument("synth", type=Path)
    p_apply.add_argument("out", type=Path)
    p_apply.add_argument("--modality", choices=("ct", "mri"), required=True)
    p_apply.add_argument("--scale", type=float, default=1.0, help="multiplies the fitted std")
    p_apply.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.command == "fit":
        params = fit(args.prep, args.model)
        args.out.write_text(json.dumps(params, indent=1))
        print(json.dumps({k: v for k, v in params.items() if not isinstance(v, list)}))
    else:
        apply(json.loads(args.params.read_text()), args.synth, args.out, args.modality, args.scale, args.seed)


if __name__ == "__main__":
    main()
