"""ONNX export: parity with torch on random (non-zero) weights, refusal of untrained nets, card bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import make_tiny_card
from meddiff_cli.errors import ModelError
from meddiff_cli.export import export_model, onnx_files
from meddiff_cli.fsutil import sha256_file
from meddiff_cli.model.card import ModelCard, latent_normalization
from meddiff_cli.model.networks import DenoiserForExport, build_autoencoder, build_denoiser, repair_box_edges
from meddiff_cli.model.store import load_model, save_model


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual.astype(np.float64) - expected) / np.linalg.norm(expected))


def test_fp32_graphs_match_torch_on_unseen_inputs(tiny_model):
    result = export_model(tiny_model, "fp32")
    assert result.exporter in {"torchscript", "dynamo"}
    assert all(error < 1e-3 for error in result.relative_error.values())
    card = ModelCard.load(tiny_model)
    denoiser_file, decoder_file = onnx_files("fp32")
    for name in (denoiser_file, decoder_file):
        assert card.files[name] == sha256_file(tiny_model / name)  # the card records what is on disk

    # Independent check with our own inputs: another batch size (dynamic axis), both classes, extreme t.
    _, autoencoder, unet = load_model(tiny_model)
    generator = torch.Generator().manual_seed(123)
    latent = torch.randn(5, 4, 8, 8, 8, generator=generator)
    timestep = torch.tensor([0.0, 1.0, 250.5, 999.0, 1000.0])
    class_id = torch.tensor([0, 1, 0, 1, 1])
    session = ort.InferenceSession(str(tiny_model / denoiser_file), providers=["CPUExecutionProvider"])
    velocity = session.run(None, {"latent": latent.numpy(), "timestep": timestep.numpy(), "class_id": class_id.numpy()})[0]
    with torch.no_grad():
        expected = DenoiserForExport(unet)(latent, timestep, class_id).numpy()
    assert np.abs(expected).mean() > 1e-3  # weights are non-trivial, so the comparison means something
    assert _relative_error(velocity, expected) < 1e-3
    # the class label matters: same latent/t with the other modality gives another velocity
    assert _relative_error(expected[[0]], DenoiserForExport(unet)(latent[:1], timestep[:1], torch.tensor([1])).detach().numpy()) > 1e-3

    session = ort.InferenceSession(str(tiny_model / decoder_file), providers=["CPUExecutionProvider"])
    volume = session.run(None, {"latent": latent[:2].numpy()})[0]
    with torch.no_grad():
        shift, scale = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in latent_normalization(ModelCard.load(tiny_model)))
        # per-channel un-normalisation and the box-edge repair are in the graph
        expected = repair_box_edges(autoencoder.decode(latent[:2] / scale + shift).clamp(-1, 1)).numpy()
    assert volume.shape == (2, 1, 32, 32, 32)
    assert _relative_error(volume, expected) < 1e-3


def test_fp16_export_is_within_fp16_tolerance(tiny_model, tmp_path):
    result = export_model(tiny_model, "fp16")
    assert set(result.files) == set(onnx_files("fp16"))
    assert all(1e-7 < error < 1e-2 for error in result.relative_error.values())  # fp16 is measurably not fp32
    session = ort.InferenceSession(str(tiny_model / onnx_files("fp16")[0]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    assert session.get_inputs()[1].type == "tensor(float)" and session.get_inputs()[2].type == "tensor(int64)"
    card = ModelCard.load(tiny_model)
    assert set(onnx_files("fp32")) <= set(card.files)  # earlier exports stay listed

    # the fp16 graphs sample volumes close to the fp32 ones (same seeds), within a few HU
    from meddiff_cli.sample import SampleOptions, sample_volumes

    runs = {}
    for precision in ("fp16", "fp32"):
        out = tmp_path / precision
        sample_volumes(SampleOptions(modality="ct", count=1, out=out, model="tiny", steps=3, file_format="npy",
                                     device="cpu", backend="onnx", precision=precision))
        runs[precision] = np.load(out / "synth_ct_0000.npy")
        assert json.loads((out / "manifest.json").read_text())["precision"] == precision
    assert 0 < np.abs(runs["fp16"] - runs["fp32"]).max() < 20.0


def test_untrained_denoiser_is_refused(tmp_path):
    card = make_tiny_card("untrained")
    folder = save_model(card, build_autoencoder(card), build_denoiser(card), tmp_path / "untrained")
    before = (folder / "model.json").read_bytes()
    with pytest.raises(ModelError, match="all zeros"):
        export_model(folder, "fp32")
    assert not (folder / "onnx").exists() or not any((folder / "onnx").iterdir())
    assert (folder / "model.json").read_bytes() == before


def test_export_to_out_folder_makes_an_onnx_only_model(tiny_model, tmp_path, run_meddiff):
    out = tmp_path / "deploy"
    code, stdout, _ = run_meddiff("export", "tiny", "--out", out, "--json", "-q")
    assert code == 0
    report = json.loads(stdout)
    assert report["folder"] == str(out) and report["precision"] == "fp32"
    card = ModelCard.load(out)
    assert set(card.files) == set(onnx_files("fp32"))
    assert (out / onnx_files("fp32")[0]).is_file() and not (out / "denoiser.safetensors").exists()
    # the original model folder is untouched by --out
    assert ModelCard.load(tiny_model).files == ModelCard.load(tiny_model).files


def test_export_rejects_unknown_precision(run_meddiff, tiny_model):
    code, _, err = run_meddiff("export", "tiny", "--precision", "int8")
    assert code == 2 and "precision" in err


def test_graphs_of_an_older_revision_are_exported_again_on_first_use(tiny_model):
    """A cache holding graphs from before the decoder's box-edge repair must not keep serving them."""
    from meddiff_cli.export.graphs import ensure_onnx
    from meddiff_cli.export.options import GRAPH_REVISION

    assert ensure_onnx(tiny_model, "fp32") is False  # the fixture's graphs are current: reused
    card = ModelCard.load(tiny_model)
    assert card.sampling["onnx_graph_revision"] == GRAPH_REVISION
    del card.sampling["onnx_graph_revision"]  # as an export by an older meddiff left it
    card.save(tiny_model)
    assert ensure_onnx(tiny_model, "fp32") is True
    assert ModelCard.load(tiny_model).sampling["onnx_graph_revision"] == GRAPH_REVISION
