"""The one rectified-flow sampler (model/scheduler.py): exact answers on a linear velocity field, and the
card's ``sampling.default_steps`` is what ``meddiff sample`` runs when --steps is not given."""

from __future__ import annotations

import json
import math

import pytest
import torch

from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.scheduler import SAMPLING_CONVENTION, build_scheduler, default_steps, sample_latents
from meddiff_cli.sample import SampleOptions, SampleProgress, sample_volumes

A, C = 0.8, 0.5  # velocity v(x, t) = A x + C t/T


def _card() -> ModelCard:
    # Continuous timesteps; step counts that divide T keep every timestep an integer (exact in float16,
    # which RFlowScheduler.set_timesteps stores them in).
    return ModelCard("linear", "tiny", ["ct"], {}, {}, {}, {}, scheduler={
        "num_train_timesteps": 1000, "use_discrete_timesteps": False, "sample_method": "uniform",
        "use_timestep_transform": False})


def _linear_velocity(latent: torch.Tensor, timesteps: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    return A * latent + C * (timesteps / 1000.0).view(-1, *[1] * (latent.dim() - 1))


def _exact(start: torch.Tensor) -> torch.Tensor:
    """x(0) for dx/ds = -(A x + C s), s = t/T from 1 to 0: x(1) e^A + C (e^A (A - 1) + 1) / A^2."""
    return start * math.exp(A) + C * (math.exp(A) * (A - 1) + 1) / A**2


def _error(sampler: str, steps: int) -> float:
    start = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)
    result = sample_latents(_linear_velocity, build_scheduler(_card()), start, torch.zeros(2), steps, sampler)
    return float((result - _exact(start)).abs().max())


def test_heun_solves_a_linear_velocity_field_to_second_order():
    heun = [_error("heun", n) for n in (10, 20, 40)]
    euler = [_error("euler", n) for n in (10, 20, 40)]
    assert heun[1] < 0.01 and heun[2] < 0.002  # close to the exact solution
    for coarse, fine in zip(heun, heun[1:]):  # halving the step quarters the error: second order
        assert 3.5 < coarse / fine < 4.5
    for coarse, fine in zip(euler, euler[1:]):  # Euler halves it: first order
        assert 1.7 < coarse / fine < 2.3
    assert all(h < e / 5 for h, e in zip(heun, euler))


def test_euler_narrows_a_known_distribution_and_heun_keeps_it():
    """Gaussian data (std 0.5) and its exact velocity E[x0 - n | x_s]: 30 Euler steps end 4 % narrow (the
    discretisation shrinks the spread, so samples come out more alike), 15 Heun steps (the same 30 evaluations)
    within 1 % (docs/model.md cites this for Euler's share of the samples' excess similarity)."""
    std = 0.5
    card = _card()
    card.scheduler["use_discrete_timesteps"] = True

    def exact(latent: torch.Tensor, timesteps: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        s = (timesteps / 1000.0).view(-1, 1)
        return ((1 - s) * std**2 - s) * latent / ((1 - s) ** 2 * std**2 + s**2)

    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    euler = sample_latents(exact, build_scheduler(card), noise, torch.zeros(20000), 30, "euler").std().item()
    heun = sample_latents(exact, build_scheduler(card), noise, torch.zeros(20000), 15, "heun").std().item()
    assert 0.94 * std < euler < 0.97 * std
    assert abs(heun - std) < 0.01 * std


def test_unknown_sampler_is_a_usage_error():
    from meddiff_cli.errors import UsageError

    with pytest.raises(UsageError, match="--sampler"):
        sample_latents(_linear_velocity, build_scheduler(_card()), torch.zeros(1, 3), torch.zeros(1), 10, "rk4")


def test_default_steps_come_from_the_card():
    card = _card()
    assert default_steps(card) == SAMPLING_CONVENTION["default_steps"]  # a card without the field
    card.sampling = {"default_steps": 3}
    assert default_steps(card) == 3


class _CountSteps(SampleProgress):
    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> None:
        self.steps += 1


def test_sample_runs_the_cards_default_steps(tiny_model, tmp_path, run_meddiff):
    card = ModelCard.load(tiny_model)
    card.sampling = {**card.sampling, "default_steps": 3}
    card.save(tiny_model)
    progress = _CountSteps()
    result = sample_volumes(SampleOptions(modality="ct", count=1, out=tmp_path / "lib", model="tiny", file_format="npy",
                                          device="cpu"), progress)
    assert progress.steps == 3 and result.steps == 3
    assert json.loads((tmp_path / "lib" / "manifest.json").read_text())["steps"] == 3
    code, out, err = run_meddiff("sample", "--modality", "ct", "-n", "1", "--out", tmp_path / "cli", "--model", "tiny",
                                 "--format", "npy", "--device", "cpu", "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["steps"] == 3
    # An explicit --steps equal to the default is the same run: the finished volume is kept, not redone.
    code, out, err = run_meddiff("sample", "--modality", "ct", "-n", "1", "--out", tmp_path / "cli", "--model", "tiny",
                                 "--format", "npy", "--device", "cpu", "--steps", "3", "--json", "-q")
    assert code == 0 and json.loads(out)["skipped"] == 1, err
