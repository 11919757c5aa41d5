"""Sampler speed, side by side in one process: ONNX Runtime vs PyTorch eager vs torch.compile.

For each backend × precision × batch size it reports milliseconds per denoiser step, end-to-end
volumes/s (all sampling steps + decoding, no file I/O), and the denoiser's achieved TFLOP/s (FLOPs
counted with torch.utils.flop_counter.FlopCounterMode) against ``--peak-tflops``.

    python benchmarks/sample_speed.py --preset tiny --device cpu --peak-tflops 0.1
    python benchmarks/sample_speed.py --preset small --latent 32 --device cuda --peak-tflops 989   # H100 dense bf16
    python benchmarks/sample_speed.py --model my-model --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from meddiff_cli.export import ensure_onnx, onnx_files
from meddiff_cli.model.card import ModelCard, latent_normalization
from meddiff_cli.model.networks import DenoiserForExport, build_autoencoder, build_denoiser
from meddiff_cli.model.presets import preset_config
from meddiff_cli.model.registry import resolve_model
from meddiff_cli.model.scheduler import build_scheduler, sample_latents
from meddiff_cli.model.store import load_model, save_model
from meddiff_cli.runtime import OnnxBackend, TorchBackend
from meddiff_cli.sample.seeds import initial_noise


def random_model(folder: Path, preset: str, latent_side: int) -> Path:
    """A preset's networks with every weight random (MONAI zero-initialises output convs) at a latent size."""
    config = preset_config(preset)
    factor = 2 ** (len(config["autoencoder"]["channels"]) - 1)
    side = latent_side * factor
    card = ModelCard(
        name=f"bench-{preset}", preset=preset, modalities=["ct", "mri"],
        volume={"shape": [side] * 3, "spacing": [1.5] * 3},
        intensity={"ct": {"kind": "ct_window", "window": [-1000, 1000], "unit": "HU"},
                   "mri": {"kind": "percentile", "unit": "a.u.", "output_range": [0, 1000]}},
        autoencoder=config["autoencoder"], denoiser=config["denoiser"],
        scheduler={"num_train_timesteps": 1000, "use_discrete_timesteps": False},
        latent={"channels": config["autoencoder"]["latent_channels"], "shape": [latent_side] * 3, "scale_factor": 1.0},
    )
    torch.manual_seed(0)
    autoencoder, denoiser = build_autoencoder(card), build_denoiser(card)
    with torch.no_grad():
        for parameter in [*autoencoder.parameters(), *denoiser.parameters()]:
            torch.nn.init.normal_(parameter, std=0.02)
    return save_model(card, autoencoder, denoiser, folder)


def denoiser_flops(unet: torch.nn.Module, card: ModelCard) -> float:
    """FLOPs of one denoiser evaluation for one volume (FlopCounterMode counts a multiply-add as 2)."""
    latent = torch.randn(1, int(card.latent["channels"]), *card.latent["shape"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        DenoiserForExport(unet)(latent, torch.tensor([500.0]), torch.tensor([0]))
    return float(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backend(backend, card: ModelCard, batch: int, steps: int, repeats: int) -> tuple[float, float]:
    """(ms per denoiser step at this batch, volumes/s end to end)."""
    shape = (int(card.latent["channels"]), *card.latent["shape"])
    noise = torch.stack([initial_noise(0, i, shape) for i in range(batch)])
    latent = noise.to(backend.torch_device)
    timestep = torch.full((batch,), 500.0, device=backend.torch_device)
    classes = torch.zeros(batch, dtype=torch.int64, device=backend.torch_device)
    for _ in range(2):  # warm-up: ORT arena, cuDNN algorithm search, torch.compile
        backend.denoise(latent, timestep, classes)
    synchronize(backend.torch_device)
    start = time.perf_counter()
    for _ in range(repeats):
        backend.denoise(latent, timestep, classes)
    synchronize(backend.torch_device)
    step_ms = (time.perf_counter() - start) / repeats * 1000.0
    volume_shape = tuple(int(s) for s in card.volume["shape"])
    start = time.perf_counter()
    latents = sample_latents(backend.denoise, build_scheduler(card), latent, classes, steps)
    backend.decode(latents, volume_shape).cpu()
    synchronize(backend.torch_device)
    return step_ms, batch / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name or folder (default: random weights of --preset)")
    parser.add_argument("--preset", default="tiny", help="preset for a random-weights model (tiny|small|base)")
    parser.add_argument("--latent", type=int, default=8, help="latent side for --preset (volume side = 4x)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--precisions", default=None, help="default: fp32 on CPU, fp32,fp16 on CUDA")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps for the end-to-end timing")
    parser.add_argument("--repeats", type=int, default=5, help="denoiser calls timed per configuration")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on CPU (slow to compile)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the utilisation column")
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and args.device != "cpu"
    precisions = (args.precisions or ("fp32,fp16" if cuda else "fp32")).split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        folder = resolve_model(args.model) if args.model else random_model(Path(scratch) / "model", args.preset, args.latent)
        card, autoencoder, unet = load_model(folder)
        flops = denoiser_flops(unet, card)
        scale = latent_normalization(card)
        print(f"model {card.name}: latent {card.latent['channels']}x{'x'.join(map(str, card.latent['shape']))}, "
              f"volume {'x'.join(map(str, card.volume['shape']))}, denoiser "
              f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M params, {flops / 1e9:.3f} GFLOP/step/volume; "
              f"torch {torch.__version__}", file=sys.stderr)
        rows = []
        for precision in precisions:
            ensure_onnx(folder, precision)
            card = ModelCard.load(folder)
            candidates = [("onnx", lambda p=precision: OnnxBackend(*(folder / f for f in onnx_files(p)), args.device, p)),
                          ("torch eager", lambda p=precision: TorchBackend(autoencoder, unet, scale, args.device, p))]
            if cuda or args.compile:
                candidates.append(("torch.compile", lambda p=precision: _compiled(autoencoder, unet, scale, args.device, p)))
            for label, make in candidates:
                backend = make()
                for batch in batch_sizes:
                    step_ms, volumes_per_s = time_backend(backend, card, batch, args.steps, args.repeats)
                    tflops = flops * batch / (step_ms / 1000.0) / 1e12
                    rows.append((label, backend.provider, precision, batch, step_ms, volumes_per_s, tflops))
    header = "| backend | provider | precision | batch | ms / denoiser step | volumes/s end-to-end | denoiser TFLOP/s |"
    if args.peak_tflops:
        header += " % of peak |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, provider, precision, batch, step_ms, volumes_per_s, tflops in rows:
        line = f"| {label} | {provider} | {precision} | {batch} | {step_ms:.2f} | {volumes_per_s:.2f} | {tflops:.4f} |"
        if args.peak_tflops:
            line += f" {100.0 * tflops / args.peak_tflops:.2f} |"
        print(line)
    print(f"(end-to-end = {args.steps} Euler steps + decode; step time = mean of {args.repeats} calls after 2 warm-ups)")
    return 0


def _compiled(autoencoder, unet, scale: float, device: str, precision: str) -> TorchBackend:
    backend = TorchBackend(autoencoder, unet, scale, device, precision)
    backend.denoiser = torch.compile(backend.denoiser)
    backend.provider += "-compile"
    return backend


if __name__ == "__main__":
    sys.exit(main())
