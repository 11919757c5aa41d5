"""Core plumbing: exit codes, atomic writes, model card and weight store."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from meddiff_cli.errors import BadInputError, ExitCode, ModelError
from meddiff_cli.fsutil import atomic_path, atomic_write_json, remove_stale_temps, sha256_file
from meddiff_cli.model import ModelCard, preset_config
from meddiff_cli.model.store import DENOISER_FILE, load_model, save_model
from meddiff_cli.model.networks import build_autoencoder, build_denoiser


def test_exit_codes_are_pinned():
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0, "INTERNAL": 1, "USAGE": 2, "NO_INPUT": 3, "BAD_INPUT": 4,
        "PARTIAL": 5, "MODEL": 6, "DEVICE": 7, "OUTPUT": 8, "INTERRUPTED": 130,
    }


def test_error_message_is_one_line_naming_the_file():
    error = BadInputError("truncated\nheader", "/data/case 1.nii.gz")
    assert error.one_line() == "/data/case 1.nii.gz: truncated header"
    assert error.exit_code == ExitCode.BAD_INPUT


def test_atomic_path_keeps_old_content_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_remove_stale_temps(tmp_path):
    (tmp_path / ".meddiff-tmp-abc.nii.gz").write_bytes(b"x")
    (tmp_path / "keep.nii.gz").write_bytes(b"y")
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nii.gz"]


def _tiny_card() -> ModelCard:
    preset = preset_config("tiny")
    return ModelCard(
        name="t", preset="tiny", modalities=["ct", "mri"], volume={"shape": [32, 32, 32], "spacing": [2.0] * 3},
        intensity={"ct": {"kind": "ct_window", "window": [-1000, 1000], "unit": "HU"}},
        autoencoder=preset["autoencoder"], denoiser=preset["denoiser"],
    )


def test_model_card_round_trip(tmp_path):
    card = _tiny_card()
    card.save(tmp_path)
    assert ModelCard.load(tmp_path) == card
    assert card.class_id("mri") == 1
    with pytest.raises(ModelError):
        card.class_id("pet")


def test_store_round_trip_and_tamper_refusal(tmp_path):
    card = _tiny_card()
    ae, unet = build_autoencoder(card), build_denoiser(card)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_model(card, ae, unet, tmp_path)
    _, _, loaded = load_model(tmp_path)
    for (k, a), (_, b) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    weights = tmp_path / DENOISER_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert sha256_file(weights) != card.files[DENOISER_FILE]
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_model(tmp_path)


def _meddiff(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "meddiff_cli", *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_version_and_usage_error():
    done = _meddiff("--version")
    assert done.returncode == 0 and done.stdout.startswith("meddiff ")
    bad = _meddiff("no-such-command")
    assert bad.returncode == ExitCode.USAGE
    assert "Traceback" not in bad.stderr
