"""Fit a model's intensity calibration for one modality and store it in its card.

    python scripts/fit_intensity_calibration.py MODEL_FOLDER PREP_CT --modality ct --count 100

Why: the decoder returns the mean of p(x | z), which bends the intensity distribution — in CT it smooths bone
and lung boundaries and lifts parts of the air — and no denoiser can undo that. The calibration is the
monotone map that sends the quantiles of the decoder's reconstructions of training cases (posterior mean,
clipped, box edges repaired: exactly what sampling decodes) onto the quantiles of the same cases, i.e. quantile
mapping of decoded onto real intensities. ``meddiff sample`` applies it in model space after decoding
(``card.intensity[modality]["calibration"]``). Fitted on training cases only (the first ``--count`` of the
folder); judged on held-out phantoms by ``benchmarks/quality_default.sh``. Measured in docs/model.md: it pays for
CT and not for MRI, whose volumes are normalised per volume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from meddiff_cli.model.card import ModelCard, intensity_calibration, latent_normalization
from meddiff_cli.model.networks import DecoderForExport
from meddiff_cli.model.store import load_model
from meddiff_cli.train.data import load_training_data, read_case

KNOTS = 513  # quantile levels kept in the card (the tails are where CT's air and bone sit: spaced finer there)


def quantile_levels(knots: int) -> np.ndarray:
    """Levels in [0, 1], denser near 0 and 1 (a cosine spacing)."""
    return 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, knots))


def fit(decoded: np.ndarray, real: np.ndarray, knots: int = KNOTS) -> dict[str, list[float]]:
    """The monotone piecewise-linear map taking ``decoded``'s quantiles to ``real``'s (duplicates merged)."""
    levels = quantile_levels(knots)
    source, target = np.quantile(decoded, levels), np.quantile(real, levels)
    source, first = np.unique(np.round(source, 6), return_index=True)  # strictly increasing knots for np.interp
    target = np.maximum.accumulate(target[first])
    return {"decoded": [float(v) for v in source], "real": [float(round(v, 6)) for v in target]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model folder (its card is rewritten)")
    parser.add_argument("data", type=Path, help="a preprocess output folder of training cases of --modality")
    parser.add_argument("--modality", required=True)
    parser.add_argument("--count", type=int, default=100, help="cases to fit on (the first ones of DATA)")
    parser.add_argument("--remove", action="store_true", help="remove the modality's calibration instead")
    args = parser.parse_args()

    card, autoencoder, _ = load_model(args.model, modality=args.modality)  # its own decoder where it has one
    mapping = card.intensity.get(args.modality)
    if mapping is None:
        sys.exit(f"{args.model}: the model has no {args.modality!r} intensity mapping")
    if args.remove:
        mapping.pop("calibration", None)
        card.save(args.model)
        return
    data = load_training_data([args.data], None, 1, 0.0001, 0)
    cases = sorted((c for c in data.train + data.val if data.modalities[c.class_id] == args.modality),
                   key=lambda c: str(c.image))[:args.count]
    if not cases:
        sys.exit(f"{args.data}: no {args.modality} cases")
    decoder = DecoderForExport(autoencoder, *latent_normalization(card)).eval()
    shift, scale = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in latent_normalization(card))
    decoded, real = [], []
    with torch.no_grad():
        for n, case in enumerate(cases):
            image = torch.from_numpy(read_case(case))[None, None]
            z_mu, _ = autoencoder.encode(image)
            decoded.append(decoder((z_mu - shift) * scale)[0, 0].numpy())
            real.append(image[0, 0].numpy())
            if (n + 1) % 20 == 0 or n + 1 == len(cases):
                print(f"{n + 1}/{len(cases)} cases decoded", file=sys.stderr, flush=True)
    mapping["calibration"] = {**fit(np.stack(decoded), np.stack(real)),
                              "fitted_on": f"{len(cases)} training cases, decoded posterior means"}
    intensity_calibration(mapping)  # the card written is one sampling accepts
    card.save(args.model)
    ModelCard.load(args.model)
    print(f"{args.model}: {args.modality} calibration with {len(mapping['calibration']['decoded'])} knots",
          file=sys.stderr)


if __name__ == "__main__":
    main()
