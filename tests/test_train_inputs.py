"""Bad DATA fails with one clear line and a documented exit code; the CLI's --json is one JSON document;
the pieces that make training deterministic and resumable behave as documented."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiff_cli.cli.app import main
from meddiff_cli.errors import ExitCode
from meddiff_cli.io import Volume, write_nifti
from meddiff_cli.train.autoencoder import discriminator_input
from meddiff_cli.train.checkpoint import (
    CHECKPOINT_DIR, flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer,
)
from meddiff_cli.train.data import StepBatchSampler, augment, load_training_data
from meddiff_cli.train.schedules import EmaWithWarmup, adversarial_weight, warmup_cosine

sys.path.insert(0, str(Path(__file__).parent))
from train_support import make_data  # noqa: E402


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["meddiff", "train", "--preset", "tiny", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture
def data(tmp_path) -> Path:
    return make_data(tmp_path / "ct", "ct", cases=3, size=16)


def _edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("problem, code, message", [
    ("no_folder", ExitCode.NO_INPUT, "does not exist"),
    ("no_manifest", ExitCode.NO_INPUT, "manifest.json"),
    ("wrong_format", ExitCode.BAD_INPUT, "format"),
    ("missing_image", ExitCode.BAD_INPUT, "is missing"),
    ("wrong_image_shape", ExitCode.BAD_INPUT, "differs from the manifest size"),
    ("indivisible", ExitCode.BAD_INPUT, "not a multiple of 16"),
    ("mixed_sizes", ExitCode.BAD_INPUT, "differs from"),
    ("one_case", ExitCode.BAD_INPUT, "at least 2"),
    ("out_of_range", ExitCode.BAD_INPUT, "not [-1, 1]"),
])
def test_bad_data_fails_with_one_line(problem, code, message, data, tmp_path, monkeypatch, capsys):
    inputs = [data]
    if problem == "no_folder":
        inputs = [tmp_path / "nowhere"]
    elif problem == "no_manifest":
        (data / "manifest.json").unlink()
    elif problem == "wrong_format":
        _edit_manifest(data, format="something-else")
    elif problem == "missing_image":
        (data / "images" / "case001.nii.gz").unlink()
    elif problem == "wrong_image_shape":
        write_nifti(Volume(np.zeros((16, 16, 8), np.float32), np.eye(4), "ct"), data / "images" / "case002.nii.gz")
    elif problem == "indivisible":
        inputs = [make_data(tmp_path / "odd", "ct", cases=2, size=24)]
    elif problem == "mixed_sizes":
        inputs = [data, make_data(tmp_path / "big", "mri", cases=2, size=32)]
    elif problem == "one_case":
        manifest = json.loads((data / "manifest.json").read_text())
        _edit_manifest(data, cases=manifest["cases"][:1])
    elif problem == "out_of_range":  # a training case, so the error comes through a DataLoader worker
        train_cases = load_training_data([data], None, 16, 0.1, seed=0).train
        for case in train_cases:
            write_nifti(Volume(np.full((16, 16, 16), 500.0, np.float32), np.eye(4), "ct"), case.image)
    code_seen, out, err = run_cli(monkeypatch, capsys, *map(str, inputs), "--name", "m", "--device", "cpu",
                                  "--workers", "1", "--ae-steps", "1", "--diffusion-steps", "1",
                                  "--cache-dir", str(tmp_path / "cache"), "--json")
    assert code_seen == code, err
    document = json.loads(out)  # --json: the failure is one JSON document on stdout
    assert document["exit_code"] == code and document["error"]["kind"] == code.name.lower()
    # Errors found while training (in a DataLoader worker) come after the "running on <device>" notice.
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("running on ")]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert "Traceback" not in err


def test_cli_json_summary_and_usage_errors(data, tmp_path, monkeypatch, capsys):
    cache = str(tmp_path / "cache")
    args = [str(data), "--name", "cli", "--device", "cpu", "--workers", "1", "--ae-steps", "2", "--steps", "2",
            "--batch-size", "1", "--lr", "0.0005", "--seed", "4", "--ema-decay", "0.9", "--val-every", "1",
            "--set", "train.adv_warmup_steps=1", "--cache-dir", cache, "--json"]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["name"] == "cli" and summary["steps"] == {"autoencoder": 2, "diffusion": 2}
    assert Path(summary["folder"]) == tmp_path / "cache" / "models" / "cli"
    card = json.loads((Path(summary["folder"]) / "model.json").read_text())
    assert card["training"]["lr"] == 0.0005 and card["training"]["seed"] == 4
    assert card["training"]["config"]["ema_decay"] == 0.9 and card["training"]["batch_size"] == 1

    for bad, expected in ((["--set", "train.nonsense=1"], "unknown setting"), (["--stage", "both"], "--stage"),
                          (["--name", "../x"], "--name"), (["--device", "tpu"], "--device"),
                          (["--set", "train.adv_input=clamp"], "train.adv_input")):
        code, out, err = run_cli(monkeypatch, capsys, str(data), "--name", "other", "--cache-dir", cache,
                                 "--device", "cpu", *bad)
        assert code in (ExitCode.USAGE, ExitCode.DEVICE) and expected in err and out == "", err


def test_batches_are_sharded_like_distributed_sampler_and_addressable_by_step():
    whole = StepBatchSampler(7, batch_size=4, seed=1, stage_code=1, start=0, end=7)
    shards = [StepBatchSampler(7, batch_size=2, seed=1, stage_code=1, start=0, end=7, rank=r, world_size=2)
              for r in range(2)]
    for step in range(7):
        cases = [c for c, _ in whole.batch_for_step(step)]
        assert cases == [c for shard in shards for c, _ in shard.batch_for_step(step)]
    flat = [c for batch in whole for c, _ in batch]
    for epoch in range(4):  # every epoch is a permutation of all cases
        assert sorted(flat[epoch * 7:(epoch + 1) * 7]) == list(range(7))
    resumed = list(StepBatchSampler(7, batch_size=4, seed=1, stage_code=1, start=3, end=7))
    assert resumed == list(whole)[3:]


def test_augmentation_is_seeded_bounded_and_flips_only_when_allowed():
    volume = np.linspace(-1, 1, 4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    first = augment(volume, np.random.default_rng(3), 0.05, flip_lr=False)
    assert np.array_equal(first, augment(volume, np.random.default_rng(3), 0.05, flip_lr=False))
    assert first.min() >= -1 and first.max() <= 1
    ratio = (first[1:] - first[:-1]) / (volume[1:] - volume[:-1])
    assert np.all(np.abs(ratio[np.abs(first[1:]) < 0.9] - 1) <= 0.05 + 1e-6)  # a small scale, never mirrored
    flipped = [augment(volume, np.random.default_rng(s), 0.0, flip_lr=True)[0, 0, 0] for s in range(20)]
    assert {float(volume[0, 0, 0]), float(volume[-1, 0, 0])} == set(map(float, flipped))


def test_schedules():
    lr = warmup_cosine(warmup=10, total=110)
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.5) and lr(110) == pytest.approx(0.0)
    config = {"adv_warmup_steps": 5, "adv_ramp_steps": 4, "adv_weight": 0.02}
    assert [adversarial_weight(s, config) for s in (4, 5, 6, 8, 100)] == pytest.approx([0, 0.005, 0.01, 0.02, 0.02])


def test_discriminator_input_judges_the_written_volume():
    """raw: as decoded; clip: the [-1, 1] volume samplers write, no gradient where clipped; clip-st: the same
    values with the gradient passed straight through (so clipped air still learns)."""
    expected_grad = {"raw": [1, 1, 1, 1], "clip": [0, 1, 1, 0], "clip-st": [1, 1, 1, 1]}
    for mode, grad in expected_grad.items():
        decoded = torch.tensor([-1.5, -0.5, 0.5, 1.2], requires_grad=True)
        shown = discriminator_input(decoded, mode)
        values = [-1.5, -0.5, 0.5, 1.2] if mode == "raw" else [-1.0, -0.5, 0.5, 1.0]
        assert shown.detach().tolist() == pytest.approx(values), mode
        shown.sum().backward()
        assert decoded.grad.tolist() == grad, mode
    with pytest.raises(ValueError, match="adv_input"):
        discriminator_input(torch.zeros(1), "clamp")


def test_ema_matches_reference_formula():
    average, current = [torch.zeros(3)], [torch.ones(3)]
    EmaWithWarmup(0.999)(average, current, torch.tensor(0))  # early: decay (1+0)/(10+0) = 0.1
    assert torch.allclose(average[0], torch.full((3,), 0.9))
    EmaWithWarmup(0.5)(average, [torch.full((3,), 2.0)], torch.tensor(1000))  # late: the configured decay
    assert torch.allclose(average[0], torch.full((3,), 1.45))


def test_optimizer_state_round_trips_through_safetensors_and_checkpoint_swap_is_atomic(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    tensors, meta = flatten_optimizer(optimizer.state_dict())
    save_checkpoint(tmp_path, {"stage": "autoencoder", "step": 1, "meta": meta}, {"optimizer": tensors})
    state, groups = load_checkpoint(tmp_path)
    restored = torch.optim.AdamW(model.parameters(), lr=5.0)
    restored.load_state_dict(unflatten_optimizer(groups["optimizer"], json.loads(json.dumps(state["meta"]))))
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(value, restored.state_dict()["state"][0][key])
    assert restored.param_groups[0]["lr"] == 1e-3

    with pytest.raises(RuntimeError):  # a crash while writing the next checkpoint leaves the old one
        from meddiff_cli.fsutil import atomic_dir
        with atomic_dir(tmp_path / CHECKPOINT_DIR, replace=True) as tmp:  # as save_checkpoint does
            (tmp / "state.json").write_text("{half")
            raise RuntimeError("killed")
    assert load_checkpoint(tmp_path)[0]["step"] == 1
    # a kill between the two renames of the swap: only the temp copy of the old checkpoint remains
    stash = tmp_path / ".meddiff-tmp-crash"
    stash.mkdir()
    shutil.move(str(tmp_path / CHECKPOINT_DIR), str(stash / "old"))
    assert load_checkpoint(tmp_path)[0]["step"] == 1
    (tmp_path / CHECKPOINT_DIR / "optimizer.safetensors").write_bytes(b"garbage")
    from meddiff_cli.errors import ModelError
    with pytest.raises(ModelError, match="sha256"):
        load_checkpoint(tmp_path)
