"""Weights and cache (issue 8): every model file is sha256-checked before use on every loading path, ONNX
graphs before an inference session exists, nothing is unpickled, and two processes exporting on first use
do not corrupt the cache.

Each tamper test flips ONE byte of one file: the run must end with exit code 6, one line naming the file,
and write no output.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import meddiff_cli
from meddiff_cli.errors import ExitCode, ModelError
from meddiff_cli.io import Volume, write_nifti
from tests.conftest import save_random_tiny_model


def flip_byte(path: Path, position: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * position)] ^= 0x01
    path.write_bytes(bytes(data))


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


SAMPLE = ["sample", "--model", "tiny", "--modality", "ct", "--count", "1", "--steps", "2", "--device", "cpu", "-q"]


@pytest.mark.parametrize(("backend", "name"), [
    ("torch", "autoencoder.safetensors"), ("torch", "denoiser.safetensors"),
    ("onnx", "onnx/denoiser.fp32.onnx"), ("onnx", "onnx/decoder.fp32.onnx"),
])
def test_sample_refuses_a_flipped_byte_in_every_file_it_loads(tiny_model, tmp_path, run_meddiff, backend, name):
    flip_byte(tiny_model / name)
    out = tmp_path / "out"
    code, stdout, err = run_meddiff(*SAMPLE, "--backend", backend, "--out", out)
    assert code == ExitCode.MODEL == 6 and stdout == ""
    line = one_line(err)
    assert "sha256 mismatch" in line and name.split("/")[-1] in line
    assert not list(out.glob("synth_*"))


def test_export_refuses_tampered_weights(tiny_model, tmp_path, run_meddiff):
    flip_byte(tiny_model / "autoencoder.safetensors", 0.9)
    code, _, err = run_meddiff("export", "tiny", "--out", tmp_path / "onnx_only", "-q")
    assert code == 6 and "autoencoder.safetensors" in one_line(err)
    assert not list((tmp_path / "onnx_only").rglob("*.onnx"))


def test_onnx_graphs_are_hash_checked_before_any_inference_session(tiny_model, tmp_path, run_meddiff, monkeypatch):
    """ORT must never parse an unverified graph: a tampered one is refused before InferenceSession exists,
    and a valid one reaches it as the very bytes that were hashed (no second read of the path)."""
    import onnxruntime

    real_session = onnxruntime.InferenceSession
    received: list[object] = []

    def recording_session(model, *args, **kwargs):
        received.append(model)
        return real_session(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)
    card = json.loads((tiny_model / "model.json").read_text())
    flip_byte(tiny_model / "onnx" / "decoder.fp32.onnx")
    code, _, err = run_meddiff(*SAMPLE, "--backend", "onnx", "--out", tmp_path / "a")
    assert code == 6 and "decoder.fp32.onnx" in one_line(err)
    assert received == [], "an InferenceSession was created before the graphs were verified"

    flip_byte(tiny_model / "onnx" / "decoder.fp32.onnx")  # flip it back: valid again
    code, _, err = run_meddiff(*SAMPLE, "--backend", "onnx", "--out", tmp_path / "b")
    assert code == 0, err
    digests = [hashlib.sha256(model).hexdigest() for model in received if isinstance(model, bytes)]
    assert len(digests) == len(received) == 2
    assert digests == [card["files"]["onnx/denoiser.fp32.onnx"], card["files"]["onnx/decoder.fp32.onnx"]]


def _medicalnet_state() -> dict[str, torch.Tensor]:
    from monai.networks.nets import resnet10

    torch.manual_seed(0)
    network = resnet10(spatial_dims=3, n_input_channels=1, conv1_t_size=7, conv1_t_stride=2, shortcut_type="B",
                       bias_downsample=False, feed_forward=False)
    return {k: v.contiguous() for k, v in network.state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_medicalnet_weights_are_pinned_on_first_use_and_refused_when_changed(tmp_path, run_meddiff, suffix):
    from meddiff_cli.evaluate.features import load_medicalnet, medicalnet_folder

    folder = medicalnet_folder()
    folder.mkdir(parents=True)
    weights = folder / f"resnet_10{suffix}"
    if suffix == ".safetensors":
        save_file(_medicalnet_state(), str(weights))
    else:
        torch.save(_medicalnet_state(), str(weights))
    load_medicalnet(weights)  # first use pins the sha256 beside the file
    pinned = (folder / f"resnet_10{suffix}.sha256").read_text().split()[0]
    assert pinned == hashlib.sha256(weights.read_bytes()).hexdigest()
    load_medicalnet(weights)  # unchanged: accepted again

    flip_byte(weights, 0.95)
    with pytest.raises(ModelError, match="sha256 mismatch") as refused:
        load_medicalnet(weights)
    assert refused.value.exit_code == 6

    real, synth = tmp_path / "real", tmp_path / "synth"
    rng = np.random.default_rng(0)
    for folder_, n in ((real, 0), (real, 1), (synth, 0), (synth, 1)):
        write_nifti(Volume(rng.normal(-500, 300, (16, 16, 16)).astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0]), "ct"),
                    folder_ / f"v{n}.nii.gz")
    report = tmp_path / "report"
    code, _, err = run_meddiff("evaluate", real, synth, "--features", "medicalnet", "--modality", "ct", "--size", "16",
                               "--spacing", "4", "--bootstrap", "0", "--device", "cpu", "--report", report, "-q")
    assert code == 6 and weights.name in one_line(err) and not report.exists()


def test_segmentation_network_with_a_flipped_byte_is_refused(tmp_path):
    from meddiff_cli.segmentation import NetworkConfig, SegmentationNet, load_network, save_network

    path = save_network(SegmentationNet(NetworkConfig(channels=(4, 8), strides=(2,), features=4)),
                        tmp_path / "seg.safetensors", {"arm": "A"})
    load_network(path)
    flip_byte(path, 0.9)
    with pytest.raises(ModelError, match="sha256 mismatch") as refused:
        load_network(path)
    assert refused.value.exit_code == 6 and str(path) in refused.value.one_line()


UNSAFE_PATTERNS = {
    "pickle": re.compile(r"\bimport\s+pickle\b|\bfrom\s+pickle\b|\bpickle\.|\bcPickle\b|\bdill\b|\bjoblib\b"),
    "np.load with allow_pickle=True": re.compile(r"\bn(?:p|umpy)\.load\([^)]*allow_pickle\s*=\s*True"),
}


def unsafe_torch_loads(text: str) -> list[str]:
    """Every ``torch.load(...)`` call (parentheses balanced, across lines) lacking ``weights_only=True``."""
    calls = []
    for match in re.finditer(r"torch\.load\(", text):
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        call = text[match.start():end]
        if not re.search(r"weights_only\s*=\s*True", call):
            calls.append(call)
    return calls


def test_the_package_never_unpickles():
    """No module of the package may import pickle or load files that can carry code."""
    package = Path(meddiff_cli.__file__).parent
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 40
    found = [f"{path.relative_to(package)}: {what}" for path in sources
             for what, pattern in UNSAFE_PATTERNS.items() if pattern.search(path.read_text(encoding="utf-8"))]
    found += [f"{path.relative_to(package)}: {call}" for path in sources
              for call in unsafe_torch_loads(path.read_text(encoding="utf-8"))]
    assert found == []
    # the checks do catch what they are meant to catch
    assert unsafe_torch_loads("torch.load(io.BytesIO(data), map_location='cpu')")
    assert unsafe_torch_loads("torch.load(path,\n   weights_only=False)")
    assert not unsafe_torch_loads("torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)")
    assert UNSAFE_PATTERNS["np.load with allow_pickle=True"].search("np.load(path, allow_pickle=True)")
    assert UNSAFE_PATTERNS["pickle"].search("import pickle")


def test_two_processes_exporting_on_first_use_share_the_cache_safely(isolated_cache, tmp_path):
    """Two `meddiff sample` processes start together on a model without ONNX graphs: one exports under the
    model lock, the other waits and uses its graphs; both succeed, and the cache verifies afterwards."""
    save_random_tiny_model(isolated_cache / "models" / "fresh", name="fresh")
    command = [sys.executable, "-m", "meddiff_cli", "sample", "--model", "fresh", "--modality", "ct", "--count", "2",
               "--steps", "2", "--device", "cpu", "--backend", "onnx", "--json", "-q"]
    processes = [subprocess.Popen([*command, "--out", str(tmp_path / f"out{n}")], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for n in range(2)]
    results = [process.communicate(timeout=300) for process in processes]
    for process, (stdout, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr
    summaries = [json.loads(stdout) for stdout, _ in results]
    assert sorted(summary["exported_onnx"] for summary in summaries) == [False, True]  # exported exactly once
    verify = subprocess.run([sys.executable, "-m", "meddiff_cli", "models", "verify", "fresh", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stderr
    card = json.loads((isolated_cache / "models" / "fresh" / "model.json").read_text())
    assert {"onnx/denoiser.fp32.onnx", "onnx/decoder.fp32.onnx"} <= set(card["files"])
    leftovers = [p for p in (isolated_cache / "models").rglob("*") if p.name.startswith(".meddiff-tmp-")]
    assert leftovers == []
    # both runs sampled the same volumes from the same graphs
    for name in ("synth_ct_0000.nii.gz", "synth_ct_0001.nii.gz"):
        assert (tmp_path / "out0" / name).read_bytes() == (tmp_path / "out1" / name).read_bytes()
