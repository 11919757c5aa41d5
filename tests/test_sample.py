"""Sampling: backend agreement, seed/shard/batch invariance, geometry and units, resume, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import save_random_tiny_model
from meddiff_cli.errors import ModelError, UsageError
from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.scheduler import build_scheduler, sample_latents
from meddiff_cli.model.store import load_model
from meddiff_cli.runtime import TorchBackend
from meddiff_cli.sample import SampleOptions, initial_noise, sample_volumes, volume_seed

STEPS = 4


def _sample(out: Path, **overrides) -> dict:
    options = SampleOptions(modality="ct", count=4, out=out, model="tiny", steps=STEPS, file_format="npy",
                            device="cpu", batch_size=4)
    for key, value in overrides.items():
        setattr(options, key, value)
    return sample_volumes(options).to_dict()


def _flat(stderr: str) -> str:
    """Undo rich's line wrapping of the one-line error (it may break inside a path)."""
    return stderr.replace("\n", "")


def _arrays(out: Path, modality: str = "ct") -> dict[int, np.ndarray]:
    return {int(p.stem.split("_")[-1]): np.load(p) for p in sorted(out.glob(f"synth_{modality}_*.npy"))}


def test_euler_loop_integrates_velocity_from_noise_to_data(tiny_model):
    """The sampler driving a backend equals a hand-written Euler integration of dx/dt = v from t=T to 0."""
    card, autoencoder, unet = load_model(tiny_model)
    backend = TorchBackend(autoencoder, unet, ([0.0] * 4, [1.0] * 4), "cpu", "fp32")
    noise = torch.stack([initial_noise(7, i, (4, 8, 8, 8)) for i in range(2)])
    classes = torch.ones(2, dtype=torch.long)
    result = sample_latents(backend.denoise, build_scheduler(card), noise, classes, steps=STEPS)
    x = noise.clone()
    times = [1000.0 * (1 - i / STEPS) for i in range(STEPS)] + [0.0]
    with torch.no_grad():
        for t, next_t in zip(times[:-1], times[1:]):
            v = unet(x, timesteps=torch.full((2,), t), class_labels=torch.ones(2, dtype=torch.long))
            x = x + v * (t - next_t) / 1000.0
    torch.testing.assert_close(result, x, rtol=1e-5, atol=1e-5)


def test_onnx_and_torch_backends_give_the_same_volumes(tiny_model, tmp_path):
    onnx = _sample(tmp_path / "onnx", count=2, backend="onnx", precision="fp32")
    torch_run = _sample(tmp_path / "torch", count=2, backend="torch", precision="fp32")
    assert onnx["provider"] == "CPUExecutionProvider" and torch_run["provider"].startswith("torch-cpu")
    a, b = _arrays(tmp_path / "onnx"), _arrays(tmp_path / "torch")
    assert a.keys() == b.keys() == {0, 1}
    for index in a:
        assert a[index].std() > 1.0  # real structure in HU, not a constant
        np.testing.assert_allclose(a[index], b[index], atol=0.5)  # HU; window 2000 HU → 2.5e-4 of the range
    assert np.abs(a[0] - a[1]).mean() > 1.0  # different seeds, different volumes


def test_seed_shard_and_batch_size_do_not_change_a_volume(tiny_model, tmp_path):
    _sample(tmp_path / "whole", count=4, batch_size=4)
    _sample(tmp_path / "sharded", count=4, batch_size=1, shard=(1, 2))
    _sample(tmp_path / "sharded", count=4, batch_size=3, shard=(0, 2))
    whole, sharded = _arrays(tmp_path / "whole"), _arrays(tmp_path / "sharded")
    assert whole.keys() == sharded.keys() == {0, 1, 2, 3}
    for index in whole:
        np.testing.assert_allclose(whole[index], sharded[index], atol=0.05)
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert manifest["complete"] and [e["index"] for e in manifest["files"]] == [0, 1, 2, 3]
    assert [e["seed"] for e in manifest["files"]] == [volume_seed(0, i) for i in range(4)]
    _sample(tmp_path / "other_seed", count=1, seed=1)
    assert np.abs(_arrays(tmp_path / "other_seed")[0] - whole[0]).mean() > 1.0


def test_concurrent_shards_merge_into_one_manifest(tiny_model, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    out = tmp_path / "shared"
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = [pool.submit(_sample, out, count=6, steps=2, batch_size=1, shard=(rank, 3)) for rank in range(3)]
        summaries = [run.result() for run in runs]
    assert sorted(e["index"] for s in summaries for e in s["files"]) == list(range(6))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [e["index"] for e in manifest["files"]] == list(range(6))
    assert not [p for p in out.iterdir() if p.name.startswith(".meddiff-tmp")]


def test_nifti_geometry_units_manifest_and_preview(tiny_model, tmp_path):
    out = tmp_path / "ct"
    summary = _sample(out, count=2, file_format="nifti", preview=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "meddiff-synthetic" and manifest["synthetic"] and manifest["complete"]
    assert manifest["model"]["name"] == "tiny" and manifest["steps"] == STEPS and manifest["sampler"] == "euler"
    card = ModelCard.load(tiny_model)
    assert manifest["model"]["weights"]["denoiser.safetensors"] == card.files["denoiser.safetensors"]
    assert manifest["device"] == "cpu" and summary["generated"] == 2
    for entry in manifest["files"]:
        image = nib.load(str(out / entry["file"]))
        data = np.asarray(image.dataobj)
        assert data.dtype == np.int16 and data.shape == (32, 32, 32)
        assert data.min() >= -1000 and data.max() <= 1000 and data.std() > 1
        assert np.allclose(image.header.get_zooms(), (2.0, 2.0, 2.0))
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        centre = image.affine @ np.array([15.5, 15.5, 15.5, 1.0])
        assert np.allclose(centre[:3], 0.0)  # centred on the world origin
        assert (out / "previews" / (entry["file"].split(".")[0] + ".png")).is_file()
        from meddiff_cli.fsutil import sha256_file
        assert sha256_file(out / entry["file"]) == entry["sha256"]

    mri = tmp_path / "mri"
    _sample(mri, modality="mri", count=1, file_format="nifti")
    data = np.asarray(nib.load(str(mri / "synth_mri_0000.nii.gz")).dataobj)
    assert data.dtype == np.float32 and 0.0 <= data.min() and data.max() <= 1000.0 and data.std() > 1


def test_dicom_output_is_readable_and_marked_synthetic(tiny_model, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    sitk = pytest.importorskip("SimpleITK")
    from meddiff_cli.io import read_volume

    _sample(tmp_path / "dcm", count=1, file_format="dicom")
    _sample(tmp_path / "npy", count=1)
    series = tmp_path / "dcm" / "synth_ct_0000"
    assert series.is_dir()
    volume = read_volume(series)
    reference = _arrays(tmp_path / "npy")[0]
    assert volume.shape == (32, 32, 32)
    assert np.allclose(volume.spacing, (2.0, 2.0, 2.0))
    assert np.abs(volume.array - reference).max() <= 1.0  # HU stored as integers
    first = pydicom.dcmread(sorted(series.iterdir())[0])
    assert first.get((0x0008, 0x001C)).value == "YES"
    assert "tiny" in first.SeriesDescription and "SYNTHETIC" in first.SeriesDescription.upper()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    image = reader.Execute()
    assert image.GetSize() == (32, 32, 32) and np.allclose(image.GetSpacing(), (2.0, 2.0, 2.0))


def test_interrupted_run_resumes_without_redoing_finished_volumes(tiny_model, tmp_path):
    out = tmp_path / "run"
    _sample(out, count=2, batch_size=1)
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("synth_*.npy")}
    # a crash while staging volume 2 leaves a temp file; a crash after the manifest update, a missing file
    (out / ".meddiff-tmp-1234abcd.npy").write_bytes(b"partial")
    (out / ".meddiff-tmp-shard-0-of-1").mkdir()
    (out / ".meddiff-tmp-shard-0-of-1" / "synth_ct_0002.npy").write_bytes(b"partial")
    summary = _sample(out, count=4, batch_size=1)
    assert summary["skipped"] == 2 and summary["generated"] == 2
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("synth_*_000[01].npy")} == finished
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".meddiff-tmp")) == []
    (out / "synth_ct_0003.npy").unlink()  # listed in the manifest but gone: regenerated
    kept = {p.name: p.stat().st_ino for p in out.glob("synth_*.npy")}
    summary = _sample(out, count=4)
    assert summary["generated"] == 1 and (out / "synth_ct_0003.npy").is_file()
    assert {p.name: p.stat().st_ino for p in out.glob("synth_*.npy") if p.name in kept} == kept
    reference = tmp_path / "reference"
    _sample(reference, count=4)
    for index, array in _arrays(reference).items():
        np.testing.assert_allclose(_arrays(out)[index], array, atol=0.05)


def test_existing_outputs_are_never_overwritten_without_flag(tiny_model, tmp_path, run_meddiff):
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "synth_ct_0001.nii.gz"
    foreign.write_bytes(b"not ours")
    code, _, err = run_meddiff("sample", "--modality", "ct", "--count", "2", "--out", out, "--model", "tiny",
                               "--steps", "2", "--device", "cpu", "-q")
    assert code == 2 and "synth_ct_0001.nii.gz" in _flat(err) and "--overwrite" in _flat(err)
    assert foreign.read_bytes() == b"not ours" and not (out / "synth_ct_0000.nii.gz").exists()
    code, stdout, _ = run_meddiff("sample", "--modality", "ct", "--count", "2", "--out", out, "--model", "tiny",
                                  "--steps", "2", "--device", "cpu", "--overwrite", "--json", "-q")
    assert code == 0 and json.loads(stdout)["generated"] == 2 and foreign.read_bytes() != b"not ours"
    code, _, err = run_meddiff("sample", "--modality", "ct", "--count", "2", "--out", out, "--model", "tiny",
                               "--steps", "3", "--device", "cpu", "-q")
    assert code == 2 and "steps" in _flat(err)  # same folder, other settings: refused, not mixed
    save_random_tiny_model(tiny_model, seed=1)  # retrained under the same name
    code, _, err = run_meddiff("sample", "--modality", "ct", "--count", "3", "--out", out, "--model", "tiny",
                               "--steps", "2", "--device", "cpu", "-q")
    assert code == 2 and "model_sha256" in _flat(err) and not (out / "synth_ct_0002.nii.gz").exists()


def test_tampered_weights_are_refused(tiny_model, tmp_path, run_meddiff):
    weights = tiny_model / "denoiser.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, _, err = run_meddiff("sample", "--modality", "ct", "--count", "1", "--out", tmp_path / "a", "--model",
                               "tiny", "--backend", "torch", "--device", "cpu", "-q")
    assert code == 6 and "sha256 mismatch" in _flat(err) and "denoiser.safetensors" in _flat(err)
    graph = tiny_model / "onnx" / "decoder.fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    code, _, err = run_meddiff("sample", "--modality", "ct", "--count", "1", "--out", tmp_path / "b", "--model",
                               "tiny", "--backend", "onnx", "--device", "cpu", "-q")
    assert code == 6 and "decoder.fp32.onnx" in _flat(err)
    assert not list((tmp_path / "b").glob("synth_*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a machine without CUDA")
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_device_cuda_without_cuda_exits_7(tiny_model, tmp_path, run_meddiff, backend):
    code, stdout, err = run_meddiff("sample", "--modality", "ct", "--count", "1", "--out", tmp_path, "--model", "tiny",
                                    "--device", "cuda", "--backend", backend, "--json")
    assert code == 7 and json.loads(stdout)["error"]["kind"] == "device"  # --json: the error document
    assert "cuda" in err.lower() and "--device cpu" in _flat(err)


def test_missing_model_and_wrong_modality_exit_6(tmp_path, run_meddiff):
    code, _, err = run_meddiff("sample", "--modality", "ct", "--count", "1", "--out", tmp_path / "o",
                               "--model", "not-trained-yet")
    assert code == 6 and "not-trained-yet" in _flat(err) and "meddiff train" in _flat(err)
    folder = save_random_tiny_model(Path(os.environ["MEDDIFF_HOME"]) / "models" / "ctonly")
    card = ModelCard.load(folder)
    card.modalities = ["ct"]
    card.save(folder)
    with pytest.raises(ModelError, match="not 'mri'"):
        _sample(tmp_path / "o", model="ctonly", modality="mri")
    card.latent["scale"] = None  # autoencoder stage only: no denoiser to sample with
    card.save(folder)
    with pytest.raises(ModelError, match="no trained denoiser"):
        _sample(tmp_path / "o", model="ctonly")


def test_first_use_exports_onnx_and_json_summary_parses(tmp_path, run_meddiff):
    folder = save_random_tiny_model(Path(os.environ["MEDDIFF_HOME"]) / "models" / "fresh")
    assert not (folder / "onnx").exists()
    code, stdout, err = run_meddiff("sample", "--modality", "mri", "--count", "1", "--out", tmp_path / "o",
                                    "--model", "fresh", "--steps", "2", "--device", "auto", "--backend", "onnx", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["exported_onnx"] is True and summary["generated"] == 1 and summary["provider"]
    assert "running on cpu" in _flat(err) and "exported the ONNX graphs" in _flat(err) and "CPUExecutionProvider" in _flat(err)
    assert "onnx/denoiser.fp32.onnx" in ModelCard.load(folder).files


@pytest.mark.parametrize("flags, message", [
    (["--shard", "2/2"], "shard"), (["--steps", "0"], "steps"), (["--format", "png"], "format"),
    (["--device", "tpu"], "device"), (["--sampler", "ddpm"], "sampler"),
])
def test_bad_flags_exit_2(tmp_path, run_meddiff, tiny_model, flags, message):
    code, _, err = run_meddiff("sample", "--modality", "ct", "--count", "1", "--out", tmp_path, "--model", "tiny", *flags)
    assert code == 2 and message in _flat(err)


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tolerance_hu", [("fp32", 0.5), ("fp16", 20.0)])
def test_cuda_onnx_with_io_binding_matches_cpu_torch(tiny_model, tmp_path, precision, tolerance_hu):
    gpu = _sample(tmp_path / "gpu", count=2, device="cuda", backend="onnx", precision=precision)
    assert gpu["provider"] == "CUDAExecutionProvider" and gpu["device"] == "cuda:0"
    _sample(tmp_path / "cpu", count=2, backend="torch", precision="fp32")
    for index, array in _arrays(tmp_path / "cpu").items():
        np.testing.assert_allclose(_arrays(tmp_path / "gpu")[index], array, atol=tolerance_hu)


def test_each_modality_gets_its_own_spacing(tiny_model, tmp_path):
    """One network, two fields of view: the card's spacing_by_modality sets each output's affine."""
    import nibabel as nib

    card_path = tiny_model / "model.json"
    card = json.loads(card_path.read_text())
    card["volume"]["spacing_by_modality"] = {"ct": [2.0, 2.0, 2.0], "mri": [3.0, 3.0, 3.0]}
    card_path.write_text(json.dumps(card))
    _sample(tmp_path / "ct", count=1, file_format="nifti")
    _sample(tmp_path / "mri", count=1, file_format="nifti", modality="mri")
    assert np.allclose(nib.load(tmp_path / "ct" / "synth_ct_0000.nii.gz").header.get_zooms(), 2.0)
    assert np.allclose(nib.load(tmp_path / "mri" / "synth_mri_0000.nii.gz").header.get_zooms(), 3.0)


def test_overwrite_never_deletes_a_folder_meddiff_did_not_write(tiny_model, tmp_path, run_meddiff):
    out = tmp_path / "dicom"
    args = ["sample", "--modality", "ct", "--count", "1", "--out", out, "--model", "tiny", "--steps", "1",
            "--device", "cpu", "--backend", "torch", "--format", "dicom", "-q"]
    assert run_meddiff(*args)[0] == 0
    series = out / "synth_ct_0000"
    first = sorted(p.name for p in series.iterdir())

    def series_uid() -> str:
        import pydicom

        return pydicom.dcmread(series / first[0], stop_before_pixels=True).SeriesInstanceUID

    before = series_uid()
    # A meddiff series in the way is replaced by --overwrite (here: another seed's series)...
    assert run_meddiff(*args, "--seed", "5", "--overwrite")[0] == 0
    assert sorted(p.name for p in series.iterdir()) == first and series_uid() != before
    # ...but a folder that also holds a user's file is refused, and nothing in it is touched.
    (series / "notes.txt").write_text("mine")
    code, _, err = run_meddiff(*args, "--seed", "6", "--overwrite")
    assert code == 2 and "did not write" in _flat(err)
    assert (series / "notes.txt").read_text() == "mine" and len(list(series.iterdir())) == len(first) + 1


def test_intensity_calibration_maps_decoded_voxels_and_is_part_of_the_run_identity(tiny_model, tmp_path, run_meddiff):
    """A card's calibration is np.interp over its knots, applied in model space to every decoded voxel; runs
    with and without it never share an output folder; a non-monotone one is refused before any denoising."""
    _sample(tmp_path / "plain", count=2, backend="torch", precision="fp32")
    card = ModelCard.load(tiny_model)
    low, high = card.intensity["ct"]["window"]
    knots = {"decoded": [-1.0, -0.2, 1.0], "real": [-1.0, -0.8, 0.5]}
    card.intensity["ct"]["calibration"] = knots
    card.save(tiny_model)
    _sample(tmp_path / "calibrated", count=2, backend="torch", precision="fp32")
    plain, calibrated = _arrays(tmp_path / "plain"), _arrays(tmp_path / "calibrated")
    for index in plain:
        model_space = (plain[index] - low) / (high - low) * 2.0 - 1.0
        expected = low + (np.interp(model_space, knots["decoded"], knots["real"]) + 1.0) / 2.0 * (high - low)
        np.testing.assert_allclose(calibrated[index], expected, atol=1.0)  # HU
        assert np.abs(calibrated[index] - plain[index]).max() > 50.0  # the map did change the volume
    with pytest.raises(UsageError, match="model_sha256"):  # the uncalibrated run's folder is not resumed
        _sample(tmp_path / "plain", count=2, backend="torch", precision="fp32")

    card.intensity["ct"]["calibration"] = {"decoded": [-1.0, 0.5, 0.2, 1.0], "real": [-1.0, 0.0, 0.1, 1.0]}
    card.save(tiny_model)
    code, _, err = run_meddiff("sample", "--modality", "ct", "--count", "1", "--out", tmp_path / "bad", "--model",
                               "tiny", "--backend", "torch", "--device", "cpu", "-q")
    assert code == 6 and "calibration must be monotone" in _flat(err) and "model.json" in _flat(err)
    assert not (tmp_path / "bad").exists()


def test_a_modality_decoder_of_its_own_decodes_that_modality_only_on_every_backend(tiny_model, tmp_path):
    """With an MRI decoder of its own (card ``modality_decoders``), MRI volumes are that decoder's, on the torch
    backend and on ONNX Runtime (its own graph, exported on first use); CT volumes and CT runs' identity stay as
    they were, while an MRI run made before is not resumed with the new decoder."""
    from meddiff_cli.export import graph_files
    from meddiff_cli.model.store import DECODER_PREFIXES, decoder_file, save_modality_decoder

    _sample(tmp_path / "ct", count=2, backend="torch", precision="fp32")
    _sample(tmp_path / "mri_shared", modality="mri", count=2, backend="torch", precision="fp32")
    card, autoencoder, _ = load_model(tiny_model)
    shared = {k: v.clone() for k, v in autoencoder.state_dict().items()}
    torch.manual_seed(5)
    with torch.no_grad():
        for name, parameter in autoencoder.named_parameters():
            if name.startswith(DECODER_PREFIXES):
                parameter.add_(torch.randn_like(parameter) * 0.05)
    save_modality_decoder(card, autoencoder, "mri", tiny_model)
    assert ModelCard.load(tiny_model).modality_decoders == ["mri"]

    tuned = load_model(tiny_model, modality="mri")[1].state_dict()
    for key, value in load_model(tiny_model, modality="ct")[1].state_dict().items():
        torch.testing.assert_close(value, shared[key], rtol=0, atol=0)  # CT: the shared autoencoder, untouched
        changed = not torch.equal(tuned[key], value)
        assert changed == key.startswith(DECODER_PREFIXES) or not value.is_floating_point()

    ct_again = _sample(tmp_path / "ct", count=2, backend="torch", precision="fp32")
    assert ct_again["skipped"] == 2 and ct_again["generated"] == 0  # same CT identity: the run is complete
    with pytest.raises(UsageError, match="model_sha256"):  # MRI volumes of the shared decoder are another run
        _sample(tmp_path / "mri_shared", modality="mri", count=2, backend="torch", precision="fp32")
    _sample(tmp_path / "mri_torch", modality="mri", count=2, backend="torch", precision="fp32")
    onnx = _sample(tmp_path / "mri_onnx", modality="mri", count=2, backend="onnx", precision="fp32")
    assert onnx["exported_onnx"]  # the decoder_mri graph was missing: exported on first use
    card = ModelCard.load(tiny_model)
    assert "onnx/decoder_mri.fp32.onnx" in graph_files(card, "fp32") and set(graph_files(card, "fp32")) <= set(card.files)
    manifest = json.loads((tmp_path / "mri_onnx" / "manifest.json").read_text())
    assert "onnx/decoder_mri.fp32.onnx" in manifest["model"]["files"]
    assert manifest["model"]["weights"][decoder_file("mri")] == card.files[decoder_file("mri")]
    shared_mri, own_torch, own_onnx = (_arrays(tmp_path / d, "mri") for d in ("mri_shared", "mri_torch", "mri_onnx"))
    for index in own_torch:
        scale = np.abs(own_torch[index]).max()
        assert np.abs(own_torch[index] - shared_mri[index]).max() > 0.05 * scale  # the own decoder made these
        np.testing.assert_allclose(own_onnx[index], own_torch[index], atol=2e-3 * scale)


def test_a_modality_decoder_file_must_be_listed_and_hold_exactly_the_decoder(tiny_model):
    from meddiff_cli.fsutil import sha256_file
    from meddiff_cli.model.store import decoder_file, save_modality_decoder, save_state_dict

    card, autoencoder, _ = load_model(tiny_model)
    path = save_modality_decoder(card, autoencoder, "mri", tiny_model)
    state = load_model(tiny_model)[1].state_dict()
    save_state_dict({"encoder.extra": torch.zeros(1), **{k: v for k, v in state.items() if k.startswith("decoder.")}},
                    path)
    card.files[decoder_file("mri")] = sha256_file(path)
    card.save(tiny_model)
    with pytest.raises(ModelError, match="decoder_mri.safetensors"):
        load_model(tiny_model, modality="mri")
    load_model(tiny_model, modality="ct")  # CT never reads it
    card.files.pop(decoder_file("mri"))
    card.save(tiny_model)
    with pytest.raises(ModelError, match="not listed"):
        load_model(tiny_model, modality="mri")
    data = card.to_dict()
    data["modality_decoders"] = ["../ct"]
    with pytest.raises(ModelError, match="modality_decoders"):
        ModelCard.from_dict(data)
