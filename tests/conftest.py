"""Shared test fixtures. Every test gets its own empty model cache (MEDDIFF_HOME) so nothing leaks between tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Point the model cache at a fresh temp folder for each test."""
    home = tmp_path_factory.mktemp("meddiff_home")
    monkeypatch.setenv("MEDDIFF_HOME", str(home))
    return home


def pytest_collection_modifyitems(config, items):
    """Skip @pytest.mark.gpu tests when no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------ tiny random-weight models (export/sample tests)

def make_tiny_card(name: str = "tiny"):
    """A model card for the tiny preset: CT + MRI, 32^3 volumes at 2 mm, latent 4x8^3, rectified flow."""
    from meddiff_cli.model.card import ModelCard
    from meddiff_cli.model.presets import preset_config

    preset = preset_config("tiny")
    return ModelCard(
        name=name, preset="tiny", modalities=["ct", "mri"],
        volume={"shape": [32, 32, 32], "spacing": [2.0, 2.0, 2.0]},
        intensity={"ct": {"kind": "ct_window", "window": [-1000, 1000], "unit": "HU"},
                   "mri": {"kind": "percentile", "unit": "a.u.", "output_range": [0, 1000]}},
        autoencoder=preset["autoencoder"], denoiser=preset["denoiser"],
        scheduler={"num_train_timesteps": 1000, "use_discrete_timesteps": False, "sample_method": "uniform",
                   "use_timestep_transform": False},
        latent={"channels": 4, "shape": [8, 8, 8], "shift": [0.1, -0.2, 0.3, 0.0], "scale": [1.5, 0.8, 1.0, 2.0]},
    )


def save_random_tiny_model(folder, name: str = "tiny", seed: int = 0, std: float = 0.05):
    """Build the tiny networks with ALL weights random (MONAI zero-initialises output convs) and save them."""
    import torch

    from meddiff_cli.model.networks import build_autoencoder, build_denoiser
    from meddiff_cli.model.store import save_model

    card = make_tiny_card(name)
    torch.manual_seed(seed)
    autoencoder, denoiser = build_autoencoder(card), build_denoiser(card)
    with torch.no_grad():
        for parameter in [*autoencoder.parameters(), *denoiser.parameters()]:
            torch.nn.init.normal_(parameter, std=std)
    return save_model(card, autoencoder, denoiser, folder)


@pytest.fixture(scope="session")
def tiny_model_source(tmp_path_factory):
    """One random-weight tiny model with its fp32 ONNX graphs, built once per session (copy before changing)."""
    from meddiff_cli.export import ensure_onnx

    folder = save_random_tiny_model(tmp_path_factory.mktemp("tiny_source") / "tiny")
    ensure_onnx(folder, "fp32")
    return folder


@pytest.fixture
def tiny_model(tiny_model_source, isolated_cache):
    """The tiny model copied into this test's cache as ``models/tiny`` (returns its folder)."""
    import shutil

    target = isolated_cache / "models" / "tiny"
    shutil.copytree(tiny_model_source, target)
    return target


@pytest.fixture
def run_meddiff(capsys, monkeypatch):
    """Run the ``meddiff`` entry point in-process: returns (exit code, stdout, stderr)."""
    import sys

    from meddiff_cli.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["meddiff", *map(str, args)])
        with pytest.raises(SystemExit) as done:
            main()
        captured = capsys.readouterr()
        return int(done.value.code or 0), captured.out, captured.err

    return run
