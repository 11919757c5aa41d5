"""`meddiff train` on CPU with the tiny preset: learning, bit-for-bit resume, model folder, CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from meddiff_cli.errors import ModelError, UsageError
from meddiff_cli.model import store
from meddiff_cli.model.card import ModelCard
from meddiff_cli.train import Reporter, TrainOptions, train_model
from meddiff_cli.train.checkpoint import CHECKPOINT_DIR, load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from train_support import make_data  # noqa: E402

# Small and quick: 16^3 volumes (the tiny pyramid needs multiples of 16), no periodic previews/validation.
# fp32: bf16 autocast on CPU (oneDNN AMX kernels) is not bit-deterministic, and these tests check bit-for-bit resume.
FAST = {"train.mixed_precision": "none", "train.val_every": 1000, "train.preview_every": 1000, "train.checkpoint_every": 1000,
        "train.adv_warmup_steps": 2, "train.adv_ramp_steps": 2, "train.warmup_steps": 1}


class Recorder(Reporter):
    """Collects per-step losses; optionally raises KeyboardInterrupt (like Ctrl-C) after a given step."""

    def __init__(self, interrupt: tuple[str, int] | None = None) -> None:
        self.losses: dict[str, list[dict[str, float]]] = {}
        self.interrupt = interrupt

    def step_done(self, stage: str, step: int, total_steps: int, losses: dict[str, float]) -> None:
        self.losses.setdefault(stage, []).append(losses)
        if self.interrupt == (stage, step):
            raise KeyboardInterrupt


def options(data: list[Path], cache: Path, name: str = "m", **kwargs) -> TrainOptions:
    kwargs.setdefault("overrides", dict(FAST))
    return TrainOptions(data=data, name=name, preset="tiny", device="cpu", workers=0, cache_dir=cache, **kwargs)


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data") / "ct", "ct", cases=4, size=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ct_data) -> tuple[Path, Path, Recorder]:
    """One model trained through both stages, shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("trained")
    mri = make_data(root / "mri", "mri", cases=3, size=16, seed=5, spacing=3.0)  # one grid, another field of view
    recorder = Recorder()
    result = train_model(options([ct_data, mri], root / "cache", ae_steps=3, diffusion_steps=3,
                                 overrides={**FAST, "train.val_every": 3, "train.preview_every": 3}), recorder)
    return result.folder, root, recorder


def test_autoencoder_loss_decreases_on_ct_phantoms(tmp_path):
    data = make_data(tmp_path / "ct", "ct", cases=4, size=32, seed=1, phantoms=True)
    recorder = Recorder()
    train_model(options([data], tmp_path / "cache", stage="autoencoder", steps=24, seed=3,
                        overrides={**FAST, "train.adv_warmup_steps": 1000, "train.lr": 1e-3}), recorder)
    l1 = [step["l1"] for step in recorder.losses["autoencoder"]]
    assert len(l1) == 24
    assert np.mean(l1[-4:]) < 0.5 * np.mean(l1[:4]), l1


def _all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    state, groups = load_checkpoint(folder)
    tensors = {f"checkpoint/{g}/{k}": v for g, group in groups.items() for k, v in group.items()}
    for name in (store.AUTOENCODER_FILE, store.DENOISER_FILE):
        tensors.update({f"{name}/{k}": v for k, v in load_file(str(folder / name)).items()})
    return tensors


def test_resume_after_interruption_is_bit_for_bit(tmp_path, ct_data):
    common = dict(ae_steps=4, diffusion_steps=4, seed=7)
    straight = train_model(options([ct_data], tmp_path / "a", **common))

    cache = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):  # stop in stage 1, after the discriminator has started
        train_model(options([ct_data], cache, **common), Recorder(interrupt=("autoencoder", 3)))
    state, _ = load_checkpoint(cache / "models" / "m")
    assert (state["stage"], state["step"]) == ("autoencoder", 3)
    with pytest.raises(KeyboardInterrupt):  # stop in stage 2
        train_model(options([ct_data], cache, resume=True, **common), Recorder(interrupt=("diffusion", 2)))
    resumed = train_model(options([ct_data], cache, resume=True, **common))
    assert resumed.steps_run == {"diffusion": 2}

    expected, actual = _all_tensors(straight.folder), _all_tensors(resumed.folder)
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not different, different[:5]
    assert resumed.card.training["steps"] == straight.card.training["steps"] == {"autoencoder": 4, "diffusion": 4}
    assert resumed.card.latent == straight.card.latent
    assert resumed.card.metrics == straight.card.metrics


def test_model_card_round_trips_and_holds_no_paths(trained):
    folder, root, _ = trained
    card = ModelCard.load(folder)
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    assert card.modalities == ["ct", "mri"]
    assert card.volume == {"shape": [16, 16, 16], "spacing": [2.0, 2.0, 2.0],
                           "spacing_by_modality": {"ct": [2.0, 2.0, 2.0], "mri": [3.0, 3.0, 3.0]}}
    assert card.spacing("ct") == [2.0, 2.0, 2.0] and card.spacing("mri") == [3.0, 3.0, 3.0]
    assert card.intensity["ct"] == {"kind": "ct_window", "window": [-1000, 1000], "unit": "HU"}
    assert card.intensity["mri"]["unit"] == "a.u." and card.intensity["mri"]["output_range"] == [0, 1000]
    assert card.training["cases"] == {"ct": {"train": 3, "val": 1}, "mri": {"train": 2, "val": 1}}
    assert card.training["steps"] == {"autoencoder": 3, "diffusion": 3}
    assert (card.training["config"]["autoencoder_steps"], card.training["config"]["diffusion_steps"]) == (3, 3)
    assert card.latent["channels"] == 4 and card.latent["shape"] == [4, 4, 4]
    assert len(card.latent["shift"]) == 4 and all(s > 0 for s in card.latent["scale"])
    assert card.sampling["velocity"] == "x0 - noise"
    assert {"autoencoder_val_l1", "autoencoder_val_psnr_db", "diffusion_val_loss"} <= card.metrics.keys()
    text = (folder / "model.json").read_text()
    assert str(root) not in text and "case0" not in text and "images/" not in text
    assert sorted(p.name for p in (folder / "previews").glob("*.png")) == ["autoencoder_0000003.png", "diffusion_0000003.png"]


def test_scheduler_kwargs_rebuild_monai_scheduler_and_reach_data(trained):
    """The card's scheduler + convention reproduce x0 exactly when the velocity is the true x0 - noise."""
    from monai.networks.schedulers import RFlowScheduler

    from meddiff_cli.model.scheduler import build_scheduler, sample_latents

    card = ModelCard.load(trained[0])
    assert RFlowScheduler(**card.scheduler).num_train_timesteps == 1000
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 4, 4, 4, generator=generator)
    noise = torch.randn(1, 4, 4, 4, 4, generator=generator)

    def ideal(latent, timesteps, class_ids):  # straight path: the velocity is constant
        return x0 - noise

    result = sample_latents(ideal, build_scheduler(card), noise, torch.tensor([0]), steps=7)
    assert torch.allclose(result, x0, atol=1e-5)
    scheduler = RFlowScheduler(**card.scheduler)
    noisy = scheduler.add_noise(x0, noise, torch.tensor([250.0]))
    assert torch.allclose(noisy, 0.75 * x0 + 0.25 * noise)


def test_store_loads_trained_model_and_refuses_tampering(trained, tmp_path):
    folder = trained[0]
    card, autoencoder, denoiser = store.load_model(folder)
    saved = load_file(str(folder / store.DENOISER_FILE))
    _, groups = load_checkpoint(folder)
    ema = {k.removeprefix("module."): v for k, v in groups["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(denoiser.state_dict()[k], saved[k]) and torch.equal(saved[k], ema[k]) for k in saved)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("model.json", store.AUTOENCODER_FILE, store.DENOISER_FILE):
        (copy / name).write_bytes((folder / name).read_bytes())
    blob = bytearray((copy / store.DENOISER_FILE).read_bytes())
    blob[-3] ^= 0x01
    (copy / store.DENOISER_FILE).write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        store.load_model(copy)


def test_existing_model_needs_resume_and_diffusion_needs_autoencoder(trained, ct_data, tmp_path):
    folder, root, _ = trained
    with pytest.raises(UsageError, match="already exists"):
        train_model(options([ct_data, root / "mri"], root / "cache", ae_steps=1))
    with pytest.raises(UsageError, match="already has a trained denoiser"):
        train_model(options([ct_data, root / "mri"], root / "cache", stage="diffusion", steps=1))
    with pytest.raises(ModelError, match="autoencoder first"):
        train_model(options([ct_data], tmp_path / "empty", stage="diffusion", steps=1))
    with pytest.raises(UsageError, match="does not match"):
        train_model(options([ct_data], root / "cache", resume=True))
    with pytest.raises(ModelError, match="no training checkpoint"):
        (tmp_path / "c" / "models" / "x").mkdir(parents=True)
        ModelCard.load(folder).save(tmp_path / "c" / "models" / "x")
        train_model(options([ct_data, root / "mri"], tmp_path / "c", name="x", resume=True))


def test_separate_stage_invocations_continue_the_same_model(tmp_path, ct_data):
    first = train_model(options([ct_data], tmp_path, stage="autoencoder", steps=2))
    assert first.card.training["steps"] == {"autoencoder": 2, "diffusion": 0}
    assert first.card.latent["scale"] is None
    second = train_model(options([ct_data], tmp_path, stage="diffusion", steps=2))
    assert second.card.training["steps"] == {"autoencoder": 2, "diffusion": 2}
    assert all(s > 0 for s in store.load_model(second.folder)[0].latent["scale"])
    assert (second.folder / CHECKPOINT_DIR / "state.json").is_file()


def test_autoencoder_patches_are_crops_of_the_volume():
    """ae_patch_size: a random cube taken from the volume itself (same voxels), reproducible from its seed."""
    from meddiff_cli.train.data import random_crop

    volume = np.arange(16 * 12 * 8, dtype=np.float32).reshape(16, 12, 8)
    patch = random_crop(volume, 8, np.random.default_rng(3))
    assert patch.shape == (8, 8, 8)
    i, j, k = (int(np.argwhere(volume == patch[0, 0, 0])[0][a]) for a in range(3))
    assert np.array_equal(volume[i:i + 8, j:j + 8, k:k + 8], patch)
    assert np.array_equal(random_crop(volume, 8, np.random.default_rng(3)), patch)
    assert random_crop(volume, 0, np.random.default_rng(3)) is volume


def test_latents_are_standardised_per_channel_and_the_decoder_inverts_it(trained, ct_data):
    """(z - shift) * scale of the training latents has mean 0 and std 1 in every channel (not just overall),
    and DecoderForExport decodes a normalised latent exactly as the autoencoder decodes the raw one."""
    from meddiff_cli.model.card import latent_normalization
    from meddiff_cli.model.networks import DecoderForExport, repair_box_edges
    from meddiff_cli.train.data import load_training_data, read_case

    folder, root, _ = trained
    card, autoencoder, _ = store.load_model(folder)
    data = load_training_data([ct_data, root / "mri"], None, 16, 0.1, int(card.training["seed"]))
    with torch.no_grad():
        raw = torch.cat([autoencoder.encode(torch.from_numpy(read_case(c))[None, None])[0] for c in data.train])
    shift, scale = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in latent_normalization(card))
    normalised = (raw - shift) * scale
    per_channel = normalised.transpose(0, 1).reshape(4, -1)
    assert torch.allclose(per_channel.mean(dim=1), torch.zeros(4), atol=1e-3)
    assert torch.allclose(per_channel.std(dim=1), torch.ones(4), atol=1e-3)
    with torch.no_grad():
        decoded = DecoderForExport(autoencoder, *latent_normalization(card))(normalised[:1])
        expected = repair_box_edges(autoencoder.decode(raw[:1]).clamp(-1, 1))
    assert torch.allclose(decoded, expected, atol=1e-5)


def test_mixed_precision_modes():
    from meddiff_cli.train.setup import training_amp_dtype

    cpu = torch.device("cpu")
    assert training_amp_dtype(cpu, "none") is None and training_amp_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(UsageError, match="mixed_precision"):
        training_amp_dtype(cpu, "fp8")


def test_a_committed_model_continues_from_its_sampling_weights(trained, ct_data, tmp_path, monkeypatch):
    """scripts/continue_denoiser.py: a bundled model has no checkpoint, so one is rebuilt from its sampling weights
    at the card's step (EMA weights as the online ones, the EMA's count = that step), which ``train --resume`` runs
    on to the new total; the autoencoder and the modalities' own decoders are carried over untouched."""
    import runpy
    import shutil

    from monai.networks.schedulers import RFlowScheduler

    folder, root, _ = trained
    source = tmp_path / "bundled"
    shutil.copytree(folder, source, ignore=shutil.ignore_patterns(CHECKPOINT_DIR, "previews"))
    card, autoencoder, _ = store.load_model(source)
    with torch.no_grad():
        for name, parameter in autoencoder.named_parameters():
            if name.startswith(store.DECODER_PREFIXES):
                parameter.add_(0.01)
    store.save_modality_decoder(card, autoencoder, "mri", source)
    target = tmp_path / "cache" / "models" / "m"
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "continue_denoiser.py")

    def continue_denoiser(*args: str) -> None:
        monkeypatch.setattr(sys, "argv", [script, *args])
        runpy.run_path(script, run_name="__main__")

    with pytest.raises(SystemExit, match="must exceed"):
        continue_denoiser(str(source), str(target), "--total", "3")
    uniform = tmp_path / "uniform"
    shutil.copytree(source, uniform)
    uniform_card = ModelCard.load(uniform)
    uniform_card.scheduler["sample_method"] = "uniform"
    uniform_card.save(uniform)
    with pytest.raises(SystemExit, match="logit-normal"):
        continue_denoiser(str(uniform), str(tmp_path / "never"), "--total", "5", "--timestep-loc", "0.5")
    # a card written before training.continuations kept only its last continuation, as continued_from
    legacy = ModelCard.load(source)
    legacy.training["continued_from"] = {"model": "older", "step": 1, "denoiser_sha256": "0" * 64}
    legacy.save(source)
    continue_denoiser(str(source), str(target), "--total", "5", "--timestep-loc", "0.5")
    state, groups = load_checkpoint(target)
    assert (state["stage"], state["step"], state["total_steps"]) == ("diffusion", 3, 5)
    sampling = load_file(str(source / store.DENOISER_FILE))
    assert all(torch.equal(groups["denoiser"][k], v) and torch.equal(groups["ema"][f"module.{k}"], v)
               for k, v in sampling.items())
    assert int(groups["ema"]["n_averaged"]) == 3
    with pytest.raises(SystemExit, match="already exists"):
        continue_denoiser(str(source), str(target), "--total", "5")

    result = train_model(options([ct_data, root / "mri"], tmp_path / "cache", resume=True, diffusion_steps=5))
    assert result.steps_run == {"diffusion": 2}
    assert result.card.training["steps"] == {"autoencoder": 3, "diffusion": 5}
    assert result.card.training["config"]["diffusion_steps"] == 5  # the continuation's total, not the first run's
    older, record = result.card.training["continuations"]
    assert older == {"model": "older", "step": 1, "denoiser_sha256": "0" * 64}
    assert "continued_from" not in result.card.training
    assert (record["step"], record["total"], record["timestep_loc"]) == (3, 5, 0.5)
    # the shifted location is what training draws from: median timestep at sigmoid(0.5) = 0.62 of the range
    scheduler = RFlowScheduler(**result.card.scheduler)
    drawn = scheduler.sample_timesteps(torch.zeros(20000, 1, 2, 2, 2)).float() / scheduler.num_train_timesteps
    assert abs(drawn.median().item() - 1 / (1 + math.exp(-0.5))) < 0.01
    trained_denoiser = load_file(str(target / store.DENOISER_FILE))
    assert not all(torch.equal(trained_denoiser[k], v) for k, v in sampling.items())
    before, after = load_file(str(source / store.AUTOENCODER_FILE)), load_file(str(target / store.AUTOENCODER_FILE))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert result.card.modality_decoders == ["mri"]
    assert (target / store.decoder_file("mri")).read_bytes() == (source / store.decoder_file("mri")).read_bytes()
    store.load_model(target, modality="mri")  # sha256-verified against the continued card
    # continued again without --timestep-loc: the shifted location stays, and the record grows by one
    continue_denoiser(str(target), str(tmp_path / "again"), "--total", "6")
    again = ModelCard.load(tmp_path / "again")
    assert again.scheduler["loc"] == 0.5
    steps = [(r["step"], r["total"], r["timestep_loc"]) for r in again.training["continuations"][1:]]
    assert steps == [(3, 5, 0.5), (5, 6, 0.5)]


def test_timestep_loc_is_the_denoisers_setting(tmp_path, ct_data):
    """train.timestep_loc reaches the card's scheduler when the denoiser starts, also on a model whose stage 1 ran
    with other settings; the scheduler then draws training timesteps around sigmoid(loc)."""
    from monai.networks.schedulers import RFlowScheduler

    folder = train_model(options([ct_data], tmp_path, stage="autoencoder", steps=1)).folder
    older = ModelCard.load(folder)
    del older.training["config"]["timestep_loc"]  # a model trained before the setting existed can still take it
    older.save(folder)
    result = train_model(options([ct_data], tmp_path, stage="diffusion", steps=1,
                                 overrides={**FAST, "train.timestep_loc": 1.0}))
    card = ModelCard.load(result.folder)
    assert card.scheduler["loc"] == 1.0 and card.training["config"]["timestep_loc"] == 1.0
    torch.manual_seed(0)
    drawn = RFlowScheduler(**card.scheduler).sample_timesteps(torch.zeros(4000, 1, 2, 2, 2)).float() / 1000
    assert abs(float(drawn.median()) - 1 / (1 + math.exp(-1.0))) < 0.02  # median t = sigmoid(1) = 0.73
    with pytest.raises(UsageError, match="cannot change on --resume"):
        train_model(options([ct_data], tmp_path, stage="diffusion", steps=2, resume=True,
                            overrides={"train.timestep_loc": 0.0}))
    new = train_model(options([ct_data], tmp_path / "b", steps=1, ae_steps=1, overrides={**FAST, "train.timestep_loc": 0.5}))
    assert new.card.scheduler["loc"] == 0.5
    for bad in ("x", float("inf")):
        with pytest.raises(UsageError, match="timestep_loc"):
            train_model(options([ct_data], tmp_path / "c", steps=1, ae_steps=1, overrides={**FAST, "train.timestep_loc": bad}))
    with pytest.raises(UsageError, match="timestep_loc"):
        train_model(options([ct_data], tmp_path / "d", steps=1, ae_steps=1,
                            overrides={**FAST, "train.timestep_loc": 0.5, "train.timestep_sampling": "uniform"}))
