"""Sampler speed, side by side in one run: ONNX Runtime vs PyTorch eager (fp32, fp16, bf16 autocast) vs torch.compile,
and (``--end-to-end``) whole ``meddiff sample`` processes against a plain MONAI eager-fp32 sampling loop.

Per-step mode: for each backend x precision x batch size, milliseconds per denoiser step, volumes/s of denoising
(all steps) + decoding, achieved TFLOP/s (torch.utils.flop_counter) and the difference of the decoded volumes from
fp32 PyTorch on the same noise (mean / max |diff| in model space, the units of ``runtime.choice.PARITY_BOUNDS``).
The row ``--backend auto`` would pick here is marked.

    python benchmarks/sample_speed.py --model default --device cpu --batch-sizes 1,2,4,8
    python benchmarks/sample_speed.py --preset small --latent 32 --device cuda --peak-tflops 989   # H100 dense bf16

End-to-end mode (warm cache; machine load printed before and after): wall time of ``meddiff sample --modality ct
--count N`` with the defaults, with ``--backend onnx --precision fp32`` (the default before auto) and of a plain
MONAI loop process (RFlowScheduler + DiffusionModelUNet + AutoencoderKL.decode in eager fp32, nibabel writes) with
the same weights, steps, batch and threads; ``--count 1`` of the default; and, in this process, denoise + decode
throughput of the default backend against the plain loop on the same noise, with their difference.

    python benchmarks/sample_speed.py --end-to-end --model default --count 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from meddiff_cli.devices import CpuClock, DeviceRequest, free_cores, parse_device
from meddiff_cli.export import ensure_onnx, onnx_files
from meddiff_cli.export.graphs import has_onnx
from meddiff_cli.model.card import ModelCard, latent_normalization
from meddiff_cli.model.networks import DenoiserForExport, build_autoencoder, build_denoiser
from meddiff_cli.model.presets import preset_config
from meddiff_cli.model.registry import resolve_model
from meddiff_cli.model.scheduler import build_scheduler, sample_latents
from meddiff_cli.model.store import load_model, save_model
from meddiff_cli.runtime import OnnxBackend, TorchBackend
from meddiff_cli.runtime.choice import PARITY_BOUNDS, choose_runtime, choose_threads
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


def noise_batch(card: ModelCard, batch: int) -> torch.Tensor:
    """The noise ``meddiff sample --seed 0`` starts volumes 0..batch-1 from."""
    shape = (int(card.latent["channels"]), *card.latent["shape"])
    return torch.stack([initial_noise(0, i, shape) for i in range(batch)])


def time_backend(backend, card: ModelCard, batch: int, steps: int, repeats: int) -> tuple[float, float, np.ndarray]:
    """(ms per denoiser step at this batch, volumes/s of sampling + decoding, the decoded volumes)."""
    latent = noise_batch(card, batch).to(backend.torch_device)
    timestep = torch.full((batch,), 500.0, device=backend.torch_device)
    classes = torch.zeros(batch, dtype=torch.int64, device=backend.torch_device)
    for _ in range(2):  # warm-up: ORT arena, oneDNN primitives, cuDNN algorithm search, torch.compile
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
    volumes = backend.decode(latents, volume_shape).clamp(-1.0, 1.0).cpu().numpy()
    synchronize(backend.torch_device)
    return step_ms, batch / (time.perf_counter() - start), volumes


def plain_monai_loop(autoencoder, unet, card: ModelCard, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """What one writes with MONAI alone: RFlowScheduler steps over the eager fp32 UNet, then decode and clip."""
    from monai.networks.schedulers import RFlowScheduler

    scheduler = RFlowScheduler(**card.scheduler)
    scheduler.set_timesteps(steps, input_img_size_numel=int(math.prod(noise.shape[2:])))
    classes = torch.zeros(noise.shape[0], dtype=torch.long)
    shift, scale = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in latent_normalization(card))
    x = noise
    with torch.no_grad():
        times = list(scheduler.timesteps)
        for i, t in enumerate(times):
            next_t = times[i + 1] if i + 1 < len(times) else 0
            velocity = unet(x, timesteps=torch.full((x.shape[0],), float(t)), class_labels=classes)
            x, _ = scheduler.step(velocity, t, x, next_t)
        return autoencoder.decode(x / scale + shift).clamp(-1.0, 1.0)


def difference(volumes: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    delta = np.abs(volumes.astype(np.float64) - reference)
    return float(delta.mean()), float(delta.max())


def per_step(args: argparse.Namespace, folder: Path, threads: int) -> None:
    cuda = torch.cuda.is_available() and args.device != "cpu"
    precisions = (args.precisions or ("fp32,fp16,bf16" if cuda else "fp32,bf16")).split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    card, autoencoder, unet = load_model(folder)
    flops = denoiser_flops(unet, card)
    norm = latent_normalization(card)
    auto = choose_runtime("auto", "auto", parse_device(args.device), True, set())
    ort_cuda = cuda and "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers()
    if cuda and not ort_cuda:
        print("onnxruntime has no CUDA provider here (onnxruntime-gpu not installed): no ONNX Runtime rows",
              file=sys.stderr)
    print(f"model {card.name}: latent {card.latent['channels']}x{'x'.join(map(str, card.latent['shape']))}, volume "
          f"{'x'.join(map(str, card.volume['shape']))}, denoiser {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} "
          f"M params, {flops / 1e9:.3f} GFLOP/step/volume; torch {torch.__version__}, {threads} threads; "
          f"auto picks {auto.backend} {auto.precision}", file=sys.stderr)
    columns = ["backend", "provider", "precision", "batch", "ms / denoiser step", "ms / step / volume",
               "volumes/s sample+decode", "denoiser TFLOP/s", "mean / max diff vs torch fp32"]
    columns += ["% of peak"] if args.peak_tflops else []
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)
    reference = {}
    for precision in ["fp32"] + [p for p in precisions if p != "fp32"]:  # fp32 torch first: the reference
        candidates = [("torch eager", lambda p=precision: TorchBackend(autoencoder, unet, norm, args.device, p))]
        if precision != "bf16" and (ort_cuda or not cuda):  # ONNX Runtime has no bf16 convolutions on CPU
            ensure_onnx(folder, precision)
            candidates.append(("onnx", lambda p=precision: OnnxBackend(
                *(folder / f for f in onnx_files(p)), args.device, p, threads)))
        if cuda or args.compile:
            candidates.append(("torch.compile", lambda p=precision: _compiled(autoencoder, unet, norm, args.device, p)))
        for label, make in candidates:
            backend = make()
            for batch in batch_sizes:
                step_ms, volumes_per_s, volumes = time_backend(backend, card, batch, args.steps, args.repeats)
                if (label, precision) == ("torch eager", "fp32"):
                    reference[batch] = volumes
                mean, peak = difference(volumes, reference[batch])
                picked = (label.split()[0], precision) == (auto.backend, auto.precision)
                tflops = flops * batch / (step_ms / 1000.0) / 1e12
                line = (f"| {label}{' (auto)' if picked else ''} | {backend.provider} | {backend.precision_label} | "
                        f"{batch} | {step_ms:.1f} | {step_ms / batch:.1f} | {volumes_per_s:.3f} | {tflops:.4f} | "
                        f"{mean:.1e} / {peak:.1e} |")
                # each row as soon as it is measured: a run cut short by a time limit keeps what it measured
                print(line + (f" {100.0 * tflops / args.peak_tflops:.2f} |" if args.peak_tflops else ""), flush=True)
    print(f"({args.steps} Euler steps + decode per volumes/s figure; step time = mean of {args.repeats} calls after 2 "
          f"warm-ups; bounds {PARITY_BOUNDS})")


def _compiled(autoencoder, unet, norm, device: str, precision: str) -> TorchBackend:
    backend = TorchBackend(autoencoder, unet, norm, device, precision)
    backend.denoiser = torch.compile(backend.denoiser)
    backend.provider += "-compile"
    return backend


def end_to_end(args: argparse.Namespace, folder: Path, threads: int) -> None:
    """Whole processes (python start to exit) side by side, then in-process throughput and parity."""
    ensure_onnx(folder, "fp32")  # warm cache: the old default's graphs exist, as they would after its first use
    card = ModelCard.load(folder)
    steps = args.steps_e2e or int(card.sampling.get("default_steps", 30))
    meddiff = [sys.executable, "-m", "meddiff_cli", "sample", "--modality", "ct", "--model", str(folder),
               "--device", "cpu", "-q", "--json"]
    runs = [
        ("meddiff sample (defaults)", [*meddiff, "--count", str(args.count)]),
        ("meddiff sample --backend onnx --precision fp32 (old default)",
         [*meddiff, "--count", str(args.count), "--backend", "onnx", "--precision", "fp32"]),
        (f"plain MONAI eager fp32 loop ({threads} threads)",
         [sys.executable, __file__, "--plain-loop", "--model", str(folder), "--count", str(args.count),
          "--threads", str(threads), "--steps-e2e", str(steps)]),
        ("meddiff sample --count 1 (defaults)", [*meddiff, "--count", "1"]),
    ]
    if args.old_checkout:  # today's default as an older commit ran it: its code first on the path
        runs.insert(2, (f"meddiff sample (defaults of {args.old_checkout})", [*meddiff, "--count", str(args.count)]))
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    subprocess.run([*meddiff, "--count", "1", "--out", tempfile.mkdtemp()], check=True, capture_output=True)  # warm
    table = []
    with tempfile.TemporaryDirectory() as scratch:
        for n, (label, command) in enumerate(runs):
            env = {**os.environ, "PYTHONPATH": str(args.old_checkout)} if "defaults of" in label else None
            started = time.perf_counter()
            done = subprocess.run([*command, "--out", f"{scratch}/run{n}"], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"{label} failed: {done.stderr[-2000:]}")
            summary = json.loads(done.stdout) if done.stdout.strip() else {}
            table.append((label, wall, summary.get("backend", ""), summary.get("precision", ""),
                          summary.get("threads", ""), summary.get("batch_size", "")))
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    default_wall = table[0][1]
    print(f"| whole process, --count {args.count} unless noted | wall s | vs defaults | backend | precision | threads | batch |")
    print("|---|---|---|---|---|---|---|")
    for label, wall, backend, precision, used_threads, batch in table:
        print(f"| {label} | {wall:.1f} | {wall / default_wall:.2f}x | {backend} | {precision} | {used_threads} | {batch} |")

    # in-process: denoise + decode of one batch, the default backend vs the plain loop, same noise and threads
    from meddiff_cli.sample.options import SampleOptions

    batch = SampleOptions.__dataclass_fields__["batch_size"].default
    card, autoencoder, unet = load_model(folder)
    auto = choose_runtime("auto", "auto", DeviceRequest("cpu"), True, {"fp32"} if has_onnx(card, folder, "fp32") else set())
    if auto.backend == "torch":
        backend = TorchBackend(autoencoder, unet, latent_normalization(card), "cpu", auto.precision)
    else:
        backend = OnnxBackend(*(folder / f for f in onnx_files(auto.precision)), "cpu", auto.precision, threads)
    noise = noise_batch(card, batch)
    classes = torch.zeros(batch, dtype=torch.int64)
    shape = tuple(int(s) for s in card.volume["shape"])
    timings: dict[str, list[float]] = {"default": [], "plain": []}
    for _ in range(2):  # interleaved, so both see the same machine load
        started = time.perf_counter()
        ours = backend.decode(sample_latents(backend.denoise, build_scheduler(card), noise, classes, steps), shape)
        timings["default"].append(time.perf_counter() - started)
        started = time.perf_counter()
        plain = plain_monai_loop(autoencoder, unet, card, noise, steps)
        timings["plain"].append(time.perf_counter() - started)
    mean, peak = difference(ours.clamp(-1, 1).numpy(), plain.numpy())
    best = {key: min(values) for key, values in timings.items()}
    print(f"\ndenoise ({steps} steps) + decode, batch {batch}, {threads} threads, best of 2 interleaved: default "
          f"{backend.name} {backend.precision_label} {batch / best['default']:.3f} volumes/s, plain MONAI eager fp32 "
          f"{batch / best['plain']:.3f} volumes/s: {best['plain'] / best['default']:.2f}x; difference mean {mean:.1e} / "
          f"max {peak:.1e} (bound {PARITY_BOUNDS[auto.precision]})")


def plain_loop_process(args: argparse.Namespace, folder: Path) -> None:
    """The plain MONAI baseline as a whole process: load, sample, write NIfTI int16 HU with nibabel."""
    import nibabel as nib

    from meddiff_cli.sample.writers import centred_ras_affine

    card, autoencoder, unet = load_model(folder)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = [int(s) for s in card.volume["shape"]]
    affine = centred_ras_affine(shape, card.spacing("ct"))
    low, high = card.intensity["ct"]["window"]
    from meddiff_cli.sample.options import SampleOptions

    batch = SampleOptions.__dataclass_fields__["batch_size"].default
    for first in range(0, args.count, batch):
        size = min(batch, args.count - first)
        noise = torch.stack([initial_noise(0, i, (int(card.latent["channels"]), *card.latent["shape"]))
                             for i in range(first, first + size)])
        volumes = plain_monai_loop(autoencoder, unet, card, noise, args.steps_e2e).numpy()
        for k in range(size):
            hu = np.rint(low + (volumes[k, 0] + 1.0) / 2.0 * (high - low)).astype(np.int16)
            nib.save(nib.Nifti1Image(hu, affine), str(out / f"plain_ct_{first + k:04d}.nii.gz"))
    print(json.dumps({"backend": "monai", "precision": "fp32", "threads": torch.get_num_threads(), "batch_size": batch}))


def main() -> int:
    since = CpuClock.now()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name or folder (default: random weights of --preset)")
    parser.add_argument("--preset", default="tiny", help="preset for a random-weights model (tiny|small|base)")
    parser.add_argument("--latent", type=int, default=8, help="latent side for --preset (volume side = 4x)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--precisions", default=None, help="default: fp32,bf16 on CPU, fp32,fp16,bf16 on CUDA")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps for the volumes/s figures")
    parser.add_argument("--repeats", type=int, default=5, help="denoiser calls timed per configuration")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on CPU (slow to compile)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the utilisation column")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: what meddiff sample picks)")
    parser.add_argument("--end-to-end", action="store_true", help="time whole meddiff sample processes (CPU)")
    parser.add_argument("--count", type=int, default=20, help="--end-to-end: volumes per process")
    parser.add_argument("--steps-e2e", type=int, default=None, help="--end-to-end: steps (default: the card's)")
    parser.add_argument("--old-checkout", type=Path, default=None,
                        help="--end-to-end: also time the defaults of meddiff as checked out there (git worktree)")
    parser.add_argument("--plain-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = resolve_model(args.model) if args.model else random_model(Path(scratch) / "model", args.preset, args.latent)
        threads, note = choose_threads(args.threads, since)
        torch.set_num_threads(threads)
        if args.plain_loop:
            plain_loop_process(args, folder)
        elif args.end_to_end:
            free = free_cores(since)
            print(f"{note}; free cores at start {free if free is None else round(free, 2)}", file=sys.stderr)
            end_to_end(args, folder, threads)
        else:
            per_step(args, folder, threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
