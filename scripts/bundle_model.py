"""Copy a trained model into the package as bundled data, weights in fp16 (half the bytes, same sampler).

    python scripts/bundle_model.py ~/.cache/meddiff/models/default meddiff_cli/bundled/default

Only the card and the sampling weight files (autoencoder, denoiser and, when trained, the label decoder and the
modalities' own decoders) are
bundled (no checkpoint, no ONNX: `meddiff sample` copies the bundled model into the user cache on first use,
verifies its sha256 and exports ONNX there). A file that is already fp16 (a model continued from the bundled
one) is copied byte for byte, so its sha256 — and every sampling run's model identity — stays the same.
The modalities' own decoders are copied as they are (fp32, 1 MB each more): the GAN-tuned CT decoder rounded to
fp16 took the bundled CT samples from 3.8x to 4.3x real-vs-real and precision from 0.34 to 0.19 (docs/model.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from meddiff_cli.fsutil import sha256_file
from meddiff_cli.model.card import ModelCard, latent_normalization
from meddiff_cli.model.labels import LABEL_DECODER_FILE
from meddiff_cli.model.store import AUTOENCODER_FILE, DENOISER_FILE, decoder_file, load_state_dict, save_state_dict
from meddiff_cli.model.registry import verify_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="trained model folder (in the cache)")
    parser.add_argument("target", type=Path, help="bundled folder, e.g. meddiff_cli/bundled/default")
    parser.add_argument("--name", default="default")
    args = parser.parse_args()

    card = ModelCard.load(args.source)
    latent_normalization(card)  # refuses a model without a trained denoiser
    if int(card.training["steps"]["diffusion"]) == 0:
        raise SystemExit("refusing to bundle a model whose diffusion stage has not been trained")
    if args.target.exists():
        shutil.rmtree(args.target)
    args.target.mkdir(parents=True)
    files: dict[str, str] = {}
    for name in (AUTOENCODER_FILE, DENOISER_FILE, LABEL_DECODER_FILE, *map(decoder_file, card.modality_decoders)):
        if name not in card.files:
            continue
        state = load_state_dict(args.source / name, card.files.get(name))
        own_decoder = name in map(decoder_file, card.modality_decoders)
        if own_decoder or all(value.dtype == torch.float16 for value in state.values() if value.is_floating_point()):
            shutil.copy2(args.source / name, args.target / name)
            files[name] = sha256_file(args.target / name)
            continue
        half = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
        files[name] = save_state_dict(half, args.target / name, metadata={"dtype": "float16", "source_sha256": card.files[name]})
    card.name = args.name
    card.files = files
    card.training["bundled_weights_dtype"] = "float16"
    card.save(args.target)
    verify_model(args.target)
    total = sum((args.target / f).stat().st_size for f in files)
    print(f"bundled {args.target}: {total / 1e6:.1f} MB; " + ", ".join(f"{f} {sha256_file(args.target / f)[:12]}" for f in files))


if __name__ == "__main__":
    main()
