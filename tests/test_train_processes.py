"""Training in real processes: 2-process torchrun DDP (gloo on CPU), SIGKILL mid-run then --resume, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from meddiff_cli.model import store
from meddiff_cli.model.card import ModelCard
from meddiff_cli.train import TrainOptions, train_model
from meddiff_cli.train.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from train_support import make_data  # noqa: E402

SETTINGS = ["--set", "train.adv_warmup_steps=1", "--set", "train.adv_ramp_steps=1", "--set", "train.val_every=100"]


def _layout(folder: Path) -> dict:
    state, groups = load_checkpoint(folder)
    return {
        "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
        "checkpoint": {g: {k: tuple(v.shape) for k, v in t.items()} for g, t in groups.items()},
        "state_keys": sorted(state),
        "weights": {n: {k: tuple(v.shape) for k, v in load_file(str(folder / n)).items()}
                    for n in (store.AUTOENCODER_FILE, store.DENOISER_FILE)},
        "card_keys": sorted(ModelCard.load(folder).to_dict()),
    }


def test_two_process_gloo_ddp_matches_single_process_format(tmp_path):
    data = make_data(tmp_path / "ct", "ct", cases=5, size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDDIFF_HOME": str(tmp_path / "ddp")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "meddiff_cli", "train", str(data), "--name", "m", "--preset", "tiny", "--ae-steps", "2", "--diffusion-steps", "2",
               "--batch-size", "1", "--device", "cpu", "--workers", "0", "--json", *SETTINGS]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, no orphans
        pytest.fail(f"torchrun did not finish: {process.communicate()[1][-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)  # rank 0 alone prints, exactly one JSON document
    assert summary["steps"] == {"autoencoder": 2, "diffusion": 2}
    ddp_folder = Path(summary["folder"])
    card = ModelCard.load(ddp_folder)
    assert card.training["world_size"] == 2 and card.training["global_batch_size"] == 2
    store.load_model(ddp_folder)  # sha256-verified and loadable

    single = train_model(TrainOptions([data], "m", preset="tiny", ae_steps=2, diffusion_steps=2, device="cpu",
                                      cache_dir=tmp_path / "single", overrides={
                                          "train.adv_warmup_steps": 1, "train.adv_ramp_steps": 1,
                                          "train.val_every": 100, "train.batch_size": 1}))
    assert _layout(ddp_folder) == _layout(single.folder)


def test_sigkill_at_any_moment_then_resume_matches_uninterrupted_run(tmp_path):
    """Kill -9 a run that checkpoints every step (so the kill often lands mid-save), resume it, and get
    exactly the weights of an uninterrupted run: the checkpoint on disk is never torn."""
    import time

    import torch

    data = make_data(tmp_path / "ct", "ct", cases=3, size=16)
    settings = {"train.checkpoint_every": 1, "train.val_every": 100, "train.preview_every": 100,
                "train.adv_warmup_steps": 2, "train.adv_ramp_steps": 2}
    cache = tmp_path / "killed"
    command = [sys.executable, "-m", "meddiff_cli", "train", str(data), "--name", "m", "--stage", "autoencoder",
               "--preset", "tiny", "--steps", "8", "--device", "cpu", "--workers", "0", "--cache-dir", str(cache), "-q"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    state_file = cache / "models" / "m" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(state_file.read_text()).get("step", 0) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-swap
            pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(cache / "models" / "m")[0]["step"]
    assert 2 <= killed_at <= 8

    overrides = dict(settings)
    resumed = train_model(TrainOptions([data], "m", preset="tiny", stage="autoencoder", steps=8, device="cpu", cache_dir=cache,
                                       resume=True, overrides=overrides))
    straight = train_model(TrainOptions([data], "m", preset="tiny", stage="autoencoder", steps=8, device="cpu",
                                        cache_dir=tmp_path / "straight", overrides=overrides))
    _, a = load_checkpoint(resumed.folder)
    _, b = load_checkpoint(straight.folder)
    assert all(torch.equal(a[g][k], b[g][k]) for g in b for k in b[g])
    assert resumed.card.training["steps"]["autoencoder"] == 8


def test_sigterm_to_the_process_group_stops_cleanly_with_a_checkpoint(tmp_path):
    """A scheduler's SIGTERM (sent to the whole group, DataLoader workers included) ends the step, writes a
    checkpoint and exits 130 — not a crash from a dead worker."""
    import time

    data = make_data(tmp_path / "ct", "ct", cases=3, size=16)
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "meddiff_cli", "train", str(data), "--name", "m", "--stage", "autoencoder",
               "--preset", "tiny", "--steps", "500", "--device", "cpu", "--workers", "1", "--cache-dir", str(cache), "-q",
               "--val-every", "1000", "--preview-every", "1000", "--checkpoint-every", "1"]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                               stderr=subprocess.PIPE, text=True)
    state_file = cache / "models" / "m" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not state_file.is_file():
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "internal error" not in stderr
    state, _ = load_checkpoint(cache / "models" / "m")
    assert 1 <= state["step"] < 500
