"""Experiment: `meddiff sample` with a re-noising rectified-flow sampler in place of its own (docs/model.md, "A
re-noising sampler trades diversity for fidelity").

    python benchmarks/stochastic_sampler.py --eta 0.5 sample --modality ct --count 100 --seed 1 --out synth_ct
    meddiff evaluate HELDOUT_PREP_CT synth_ct --size 64 --spacing 6 --train PREP_CT --json > evaluate_ct.json

Each step predicts the clean latent x0 = x + s v and the noise n = x - (1 - s) v (s = t / T, v the denoiser's
velocity), then moves to the next time s' as x = (1 - s') x0 + s' (sqrt(1 - eta^2) n + eta z) with fresh noise z;
eta 0 is exactly the Euler step. z comes from a generator seeded by each volume's own starting noise, so a volume's
bytes do not depend on the batch it is in. Everything else (model, decoding, files, manifest) is `meddiff sample`'s;
the manifest still says "euler", which is why this stays an experiment and not a `--sampler`.

    python benchmarks/stochastic_sampler.py --eta 0.5 --gaussian-check

prints the standard deviation this sampler ends at for 1-D Gaussian data (standard deviation 0.5) driven by its
exact velocity, for 30 and 100 steps: what the sampler does to the spread of a distribution it knows perfectly.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys

import torch

import meddiff_cli.sample.pipeline as pipeline
from meddiff_cli.cli.app import main as meddiff


def stochastic_sampler(eta: float):
    def sample(denoise, scheduler, noise, class_ids, steps, sampler="euler", on_step=None):
        scheduler.set_timesteps(steps, input_img_size_numel=int(math.prod(noise.shape[2:])))
        timesteps = [float(t) for t in scheduler.timesteps.cpu()]
        total = scheduler.num_train_timesteps
        generators = [torch.Generator().manual_seed(
            int.from_bytes(hashlib.sha256(volume.cpu().numpy().tobytes()).digest()[:8], "little") >> 1)
            for volume in noise]
        latent, batch = noise, noise.shape[0]
        with torch.no_grad():
            for position, t in enumerate(timesteps):
                next_t = int(timesteps[position + 1]) if position + 1 < len(timesteps) else 0  # as RFlowScheduler.step
                velocity = denoise(latent, torch.full((batch,), t, device=noise.device), class_ids).to(latent.dtype)
                s, s_next = t / total, next_t / total
                clean = latent + s * velocity
                if s_next == 0:
                    latent = clean
                else:
                    fresh = torch.stack([torch.randn(latent.shape[1:], generator=g) for g in generators]).to(latent)
                    predicted = latent - (1 - s) * velocity
                    latent = (1 - s_next) * clean + s_next * (math.sqrt(1 - eta**2) * predicted + eta * fresh)
                if on_step is not None:
                    on_step()
        return latent

    return sample


def gaussian_spread(eta: float, steps: int, std: float = 0.5, draws: int = 20000) -> float:
    """Spread of samples of N(0, std^2) from this sampler with the exact rectified-flow velocity
    E[x0 - n | x_s] = ((1 - s) std^2 - s) x_s / ((1 - s)^2 std^2 + s^2)."""
    from meddiff_cli.model.card import ModelCard
    from meddiff_cli.model.scheduler import build_scheduler

    def velocity(x: torch.Tensor, timesteps: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        s = (timesteps / 1000.0).view(-1, 1)
        return ((1 - s) * std**2 - s) * x / ((1 - s) ** 2 * std**2 + s**2)

    card = ModelCard("gaussian", "tiny", ["ct"], {}, {}, {}, {}, scheduler={
        "num_train_timesteps": 1000, "use_discrete_timesteps": True, "sample_method": "uniform",
        "use_timestep_transform": False})
    noise = torch.randn(draws, 1, generator=torch.Generator().manual_seed(0))
    return float(stochastic_sampler(eta)(velocity, build_scheduler(card), noise, torch.zeros(draws), steps).std())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eta", type=float, required=True, help="share of fresh noise per step, 0 <= eta <= 1")
    parser.add_argument("--gaussian-check", action="store_true", help="print the spread it gives Gaussian data, exit")
    args, rest = parser.parse_known_args()
    if not 0.0 <= args.eta <= 1.0:
        sys.exit(f"--eta must be within [0, 1], got {args.eta}")
    if args.gaussian_check:
        print(f"eta {args.eta}: std {gaussian_spread(args.eta, 30):.3f} (30 steps), "
              f"{gaussian_spread(args.eta, 100):.3f} (100 steps); data 0.5")
        sys.exit(0)
    pipeline.sample_latents = stochastic_sampler(args.eta)
    sys.argv = ["meddiff", *rest]
    meddiff()
