"""Feature extractors: MedicalNet weights from the cache (safetensors / weights-only .pth), user ONNX models, auto."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file

from meddiff_cli.errors import DeviceError, ModelError, UsageError
from meddiff_cli.evaluate import EvaluateOptions, evaluate_folders
from meddiff_cli.evaluate.features import (
    MedicalNetExtractor,
    OnnxExtractor,
    RadiomicsExtractor,
    load_medicalnet,
    make_extractor,
    medicalnet_folder,
    resolve_device,
)
from tests.test_evaluate_metrics import smooth_volumes
from tests.test_evaluate_phantoms import SPACING, phantom_sets  # noqa: F401  (session fixture)


def medicalnet_style_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ResNet-10 state dict laid out like MedicalNet's release: DataParallel prefixes + seg head."""
    from monai.networks.nets import resnet10

    torch.manual_seed(seed)
    network = resnet10(
        spatial_dims=3, n_input_channels=1, conv1_t_size=7, conv1_t_stride=2,
        shortcut_type="B", bias_downsample=False, feed_forward=False,
    )
    state = {f"module.{k}": v.contiguous() for k, v in network.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(8, 512, 1, 1, 1)
    return state


def test_auto_without_weights_is_radiomics_and_medicalnet_requires_them():
    assert isinstance(make_extractor("auto"), RadiomicsExtractor)
    with pytest.raises(ModelError, match="no MedicalNet weights"):
        make_extractor("medicalnet")


def test_medicalnet_safetensors_in_cache_is_picked_by_auto(isolated_cache):
    state = medicalnet_style_state()
    folder = medicalnet_folder()
    folder.mkdir(parents=True)
    save_file(state, str(folder / "resnet_10.safetensors"))
    extractor = make_extractor("auto", device="cpu")
    assert isinstance(extractor, MedicalNetExtractor) and extractor.name == "medicalnet-resnet10"
    volumes = smooth_volumes(3)
    features = extractor(volumes)
    assert features.shape == (3, 512) and np.all(np.isfinite(features))
    # The loaded weights are the saved ones (not MONAI's random init): compare with a direct forward pass.
    direct = load_medicalnet(folder / "resnet_10.safetensors")
    assert torch.equal(direct.conv1.weight, state["module.conv1.weight"])
    x = torch.from_numpy(volumes[:1])
    x = (x - x.mean()) / (x.flatten().std() + 1e-6)
    with torch.no_grad():
        expected = direct(x[:, None]).double().numpy()
    np.testing.assert_allclose(features[:1], expected, rtol=1e-4, atol=1e-5)


def test_medicalnet_pth_is_read_weights_only_and_mismatches_are_errors(tmp_path):
    state = medicalnet_style_state()
    path = tmp_path / "resnet_10.pth"
    torch.save({"state_dict": state}, path)
    loaded = load_medicalnet(path)  # torch.load(weights_only=True), nested {"state_dict": ...} accepted
    assert torch.equal(loaded.layer4[0].conv1.weight, state["module.layer4.0.conv1.weight"])
    broken = {k: v for k, v in state.items() if "layer4" not in k}
    save_file(broken, str(tmp_path / "resnet_10.safetensors"))
    with pytest.raises(ModelError, match="do not fit"):
        load_medicalnet(tmp_path / "resnet_10.safetensors")
    (tmp_path / "resnet_99.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="must be named"):
        load_medicalnet(tmp_path / "resnet_99.safetensors")
    (tmp_path / "resnet_50.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot read"):
        load_medicalnet(tmp_path / "resnet_50.safetensors")


def write_mean_max_onnx(path: Path) -> Path:
    """An ONNX extractor [B,1,X,Y,Z] -> [B,2]: (global mean, global max)."""
    x = helper.make_tensor_value_info("volume", TensorProto.FLOAT, ["B", 1, "X", "Y", "Z"])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", 2])
    nodes = [
        helper.make_node("GlobalAveragePool", ["volume"], ["mean5"]),
        helper.make_node("GlobalMaxPool", ["volume"], ["max5"]),
        helper.make_node("Flatten", ["mean5"], ["mean"], axis=1),
        helper.make_node("Flatten", ["max5"], ["max"], axis=1),
        helper.make_node("Concat", ["mean", "max"], ["features"], axis=1),
    ]
    model = helper.make_model(helper.make_graph(nodes, "mean_max", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime of this era loads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_extractor_runs_the_user_model(tmp_path):
    extractor = make_extractor(str(write_mean_max_onnx(tmp_path / "fx.onnx")), device="cpu")
    assert isinstance(extractor, OnnxExtractor) and extractor.name == "onnx:fx.onnx"
    volumes = smooth_volumes(2)
    expected = np.stack([volumes.reshape(2, -1).mean(1), volumes.reshape(2, -1).max(1)], axis=1)
    np.testing.assert_allclose(extractor(volumes), expected, rtol=1e-5)
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError):
        make_extractor(str(tmp_path / "bad.onnx"), device="cpu")
    with pytest.raises(UsageError):
        make_extractor(str(tmp_path / "missing.onnx"))


def test_cuda_request_without_cuda_is_a_device_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(DeviceError):
        resolve_device("cuda")
    with pytest.raises(DeviceError):
        evaluate_folders("unused-real", "unused-synth", options=EvaluateOptions(device="cuda:1"))
    with pytest.raises(UsageError):
        resolve_device("tpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_evaluate_with_onnx_features_names_the_extractor(phantom_sets, tmp_path):  # noqa: F811
    onnx_path = write_mean_max_onnx(tmp_path / "fx.onnx")
    settings = EvaluateOptions(features=str(onnx_path), size=32, spacing=SPACING, bootstrap_reps=0, anatomy=False)
    summary = evaluate_folders(phantom_sets["real"], phantom_sets["noise270.0"], None, settings).summary
    assert summary["features"]["extractor"] == "onnx:fx.onnx" and summary["features"]["dimension"] == 2
    assert summary["fidelity"]["frechet_distance"]["value"] > summary["fidelity"]["frechet_distance"]["baseline_real_vs_real"]
