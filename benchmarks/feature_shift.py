"""Where a set of volumes departs from real ones, feature by feature: the diagnostic behind docs/model.md's findings.

    # the autoencoder's floor: phantoms never used in training, encoded (posterior mean) and decoded
    python benchmarks/feature_shift.py --modality ct --real build/q/heldout_prep_ct --reconstruct build/q/fresh_prep_ct
    # ... with fine-tuned autoencoder weights (scripts/finetune_decoder.py --work DIR)
    python benchmarks/feature_shift.py --modality ct --real ... --reconstruct ... --weights DIR/autoencoder.safetensors
    # ... kept for `meddiff evaluate` (MS-SSIM, intensity): the floor table of docs/model.md
    python benchmarks/feature_shift.py --modality ct --real build/q/heldout_prep_ct --reconstruct build/q/fresh_prep_ct --keep recon_ct
    # samples (any folder `meddiff evaluate` reads)
    python benchmarks/feature_shift.py --modality mri --real build/q/heldout_prep_mri --synthetic synth_mri

Prints the Fréchet distance, k-NN precision and recall (k = 3) of the radiomics-v1 features as `meddiff evaluate`
computes them (features standardised by the real set), the same for two random halves of the real set (the
baseline), and the features whose mean is farthest from real in real standard deviations (z) with the ratio of
spreads. Why: one feature far ahead of the rest points at one artefact (the decoder's box edges were found this
way); a uniform shift of texture features points at smoothness. Decoding runs in bf16 autocast (as sampling does
on such CPUs), with the modality's own decoder and intensity calibration when the card has them (no calibration
with ``--weights``: it was fitted to the card's decoder); reconstructions go to a temporary folder (or to
``--keep``), read back as `evaluate` reads samples.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from meddiff_cli.evaluate.loading import list_cases, load_set
from meddiff_cli.evaluate.metrics import frechet_distance, precision_recall, random_halves, standardise
from meddiff_cli.evaluate.options import EvaluateOptions
from meddiff_cli.evaluate.radiomics import radiomics_feature_names

SPACING_MM = {"ct": 6.0, "mri": 3.5}  # the bundled model's grid (64^3)


def write_reconstructions(prep: Path, out: Path, modality: str, model: str, weights: Path | None, count: int) -> None:
    """Posterior-mean reconstructions of a preprocess folder's volumes, written as `meddiff sample` writes volumes
    (the card's intensity mapping, the input's affine), so `evaluate`'s harmonisation treats them alike."""
    import nibabel as nib
    import torch
    from safetensors.torch import load_file

    from meddiff_cli.model.card import intensity_calibration
    from meddiff_cli.model.networks import DecoderForExport
    from meddiff_cli.model.registry import resolve_model
    from meddiff_cli.model.store import load_model
    from meddiff_cli.sample.writers import to_physical

    card, autoencoder, _ = load_model(resolve_model(model, None), modality=modality)
    if weights is not None:
        autoencoder.load_state_dict(load_file(str(weights)))
    autoencoder = autoencoder.float().eval()
    channels = int(card.latent["channels"])
    decoder = DecoderForExport(autoencoder, [0.0] * channels, [1.0] * channels).eval()  # raw latents: no normalisation
    calibration = None if weights is not None else intensity_calibration(card.intensity[modality])  # the card's decoder's
    for path in sorted((prep / "images").glob("*.nii.gz"))[:count]:
        image = nib.load(path)
        x = torch.from_numpy(np.asarray(image.dataobj, np.float32))[None, None]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            mean, _ = autoencoder.encode(x)
            volume = decoder(mean).float()[0, 0].numpy()  # clipped, box edges repaired: what sampling writes
        if calibration is not None:
            volume = np.interp(volume, *calibration).astype(np.float32)
        physical = to_physical(volume, card.intensity[modality])
        array = np.round(physical).astype(np.int16) if modality == "ct" else physical.astype(np.float32)
        nib.save(nib.Nifti1Image(array, image.affine), out / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", choices=sorted(SPACING_MM), required=True)
    parser.add_argument("--real", type=Path, required=True, help="real volumes (a preprocess folder of held-out cases)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--synthetic", type=Path, help="a folder of volumes to compare (e.g. `meddiff sample` output)")
    group.add_argument("--reconstruct", type=Path, help="a preprocess folder to encode and decode, then compare")
    parser.add_argument("--model", default="default", help="model whose autoencoder reconstructs (--reconstruct)")
    parser.add_argument("--weights", type=Path, help="autoencoder safetensors to load into it instead")
    parser.add_argument("--count", type=int, default=100, help="volumes to reconstruct")
    parser.add_argument("--top", type=int, default=12, help="how many of the most shifted features to list")
    parser.add_argument("--keep", type=Path, help="write the reconstructions into this new folder and keep them")
    args = parser.parse_args()

    spacing = (SPACING_MM[args.modality],) * 3
    settings = EvaluateOptions().preprocess_settings(args.modality, (64, 64, 64), spacing)
    real = load_set(args.real, list_cases(args.real, "real"), "real", settings, "radiomics").features
    with tempfile.TemporaryDirectory(prefix="feature_shift_") as scratch:
        folder = args.synthetic
        if folder is None:
            folder = Path(scratch)
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=False)
                folder = args.keep
            write_reconstructions(args.reconstruct, folder, args.modality, args.model, args.weights, args.count)
        other = load_set(folder, list_cases(folder, "synthetic"), "synthetic", settings, "radiomics").features

    first, second = random_halves(len(real))
    baseline = frechet_distance(*standardise(real[first], real[second]))
    real_z, other_z = standardise(real, other)
    distance = frechet_distance(real_z, other_z)
    pr = precision_recall(real_z, other_z)
    print(f"{args.modality}: Fréchet distance {distance:.1f} (real halves {baseline:.2f}), "
          f"precision {pr['precision']:.2f}, recall {pr['recall']:.2f}, {len(other)} vs {len(real)} volumes")
    names = radiomics_feature_names()
    spread = real.std(axis=0)
    pooled = np.concatenate([real, other]).std(axis=0)
    scale = np.where(spread > 1e-12, spread, np.where(pooled > 1e-12, pooled, 1.0))  # as standardise() does
    shift = (other.mean(axis=0) - real.mean(axis=0)) / scale
    ratio = other.std(axis=0) / scale
    for index in np.argsort(-np.abs(shift))[: args.top]:
        print(f"  {names[index]:<24} z {shift[index]:+6.2f}   spread x{ratio[index]:.2f}   "
              f"real {real[:, index].mean():+.4f}  other {other[:, index].mean():+.4f}")


if __name__ == "__main__":
    main()
