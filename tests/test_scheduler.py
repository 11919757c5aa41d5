"""The one rectified-flow sampler (model/scheduler.py): exact answers on a linear velocity field, the card's
``sampling.default_steps`` is what ``meddiff sample`` runs when --steps is not given, and the source noise
(``sampling.noise_offset``) is what the card says."""

from __future__ import annotations

import json
import math

import pytest
import torch

from meddiff_cli.model.card import ModelCard
from meddiff_cli.errors import ModelError
from meddiff_cli.model.scheduler import (
    SAMPLING_CONVENTION, build_scheduler, default_steps, noise_offset, sample_latents, source_noise,
)
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


def test_unknown_sampler_is_a_usage_error():
    from meddiff_cli.errors import UsageError

    with pytest.raises(UsageError, match="--sampler"):
        sample_latents(_linear_velocity, build_scheduler(_card()), torch.zeros(1, 3), torch.zeros(1), 10, "rk4")


def test_default_steps_come_from_the_card():
    card = _card()
    assert default_steps(card) == SAMPLING_CONVENTION["default_steps"]  # a card without the field
    card.sampling = {"default_steps": 3}
    assert default_steps(card) == 3


def test_source_noise_adds_one_gaussian_offset_per_volume_and_channel():
    """Offset 0 draws exactly torch.randn; an offset keeps those voxels and adds, per volume and channel, one
    constant drawn from N(0, offset^2) (12000 draws: the standard deviation within 5 %)."""
    shape = (3000, 4, 2, 3, 2)
    plain = source_noise(shape, 0.0, torch.Generator().manual_seed(5))
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(5)))
    added = source_noise(shape, 0.3, torch.Generator().manual_seed(5)) - plain
    constant = added[:, :, :1, :1, :1]
    torch.testing.assert_close(added, constant.expand(shape), rtol=0, atol=1e-6)
    assert abs(constant.std().item() - 0.3) < 0.015 and abs(constant.mean().item()) < 0.02
    per_channel = constant.flatten(1)  # [volumes, channels]: independent draws, not one value shared by channels
    assert abs(torch.corrcoef(per_channel.T)[0, 1].item()) < 0.06


def test_noise_offset_comes_from_the_card_and_is_checked():
    card = _card()
    assert noise_offset(card) == 0.0  # a card written before the field: plain Gaussian noise
    card.sampling = {"noise_offset": 0.1}
    assert noise_offset(card) == 0.1
    for bad in (-0.1, "0.1", True, float("nan"), float("inf")):
        card.sampling = {"noise_offset": bad}
        with pytest.raises(ModelError, match="noise_offset"):
            noise_offset(card)


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
