"""Copy a trained model into the package as bundled data, weights in fp16 (half the bytes, same sampler).

    python scripts/bundle_model.py ~/.cache/meddiff/models/default meddiff_cli/bundled/default

Only the card and the two sampling weight files are bundled (no checkpoint, no ONNX: `meddiff sample` copies
the bundled model into the user cache on first use, verifies its sha256 and exports ONNX there).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from meddiff_cli.fsutil import sha256_file
from meddiff_cli.model.card import ModelCard, latent_normalization
from meddiff_cli.model.store import AUTOENCODER_FILE, DENOISER_FILE, load_state_dict, save_state_dict
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
    for name in (AUTOENCODER_FILE, DENOISER_FILE):
        state = load_state_dict(args.source / name, card.files.get(name))
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
