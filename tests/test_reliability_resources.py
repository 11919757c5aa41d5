"""Resource limits (issue 8): `sample` halves its batch on out-of-memory and honours --max-memory; jobs whose
estimated memory exceeds the machine's RAM (preprocess, evaluate at huge --size) are refused up front.

Seeds are per volume, so a run whose batch shrank must write exactly the files of a run that used the
smaller batch from the start (same batch composition, bit-identical arithmetic).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import meddiff_cli.io.limits as limits
from meddiff_cli.fsutil import sha256_file
from meddiff_cli.io import Volume, write_nifti
from meddiff_cli.sample import SampleOptions, sample_volumes
from meddiff_cli.runtime import OnnxBackend, TorchBackend

COUNT = 5


def digests(out: Path) -> dict[str, str]:
    return {path.name: sha256_file(path) for path in sorted(out.glob("synth_*"))}


def reference(tiny_model: Path, out: Path, backend: str, batch_size: int) -> dict[str, str]:
    sample_volumes(SampleOptions(modality="ct", count=COUNT, out=out, model=str(tiny_model), steps=3,
                                 batch_size=batch_size, device="cpu", backend=backend))
    return digests(out)


def ort_oom() -> Exception:
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    return RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                            "running Conv node. Failed to allocate memory for requested buffer of size 1073741824")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_out_of_memory_halves_the_batch_and_changes_no_voxel(tiny_model, tmp_path, run_meddiff, monkeypatch, backend):
    expected = reference(tiny_model, tmp_path / "batch2", backend, batch_size=2)
    cls = OnnxBackend if backend == "onnx" else TorchBackend
    real_denoise = cls.denoise
    batches: list[int] = []

    def denoise_with_small_memory(self, latent, timestep, class_id):
        batches.append(latent.shape[0])
        if latent.shape[0] > 2:
            raise ort_oom() if backend == "onnx" else torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_denoise(self, latent, timestep, class_id)

    monkeypatch.setattr(cls, "denoise", denoise_with_small_memory)
    out = tmp_path / "auto"
    code, stdout, err = run_meddiff("sample", "--model", "tiny", "--modality", "ct", "--count", COUNT, "--steps", "3",
                                    "--batch-size", "4", "--device", "cpu", "--backend", backend, "--out", out, "--json")
    assert code == 0, err
    assert "batch size 4 -> 2 (out of memory)" in " ".join(err.split())
    assert batches[0] == 4 and set(batches[1:]) <= {1, 2}  # the failed batch of 4 is retried as 2 + 2, then 1
    assert digests(out) == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(r["from"], r["to"]) for r in manifest["batch_size_reductions"]] == [(4, 2)]
    assert "out of memory" in manifest["batch_size_reductions"][0]["reason"]
    assert json.loads(stdout)["batch_size_reductions"] == manifest["batch_size_reductions"]


def test_out_of_memory_at_batch_one_is_a_device_error(tiny_model, tmp_path, run_meddiff, monkeypatch):
    def always_oom(self, latent, timestep, class_id):
        raise ort_oom()

    monkeypatch.setattr(OnnxBackend, "denoise", always_oom)
    out = tmp_path / "out"
    code, _, err = run_meddiff("sample", "--model", "tiny", "--modality", "ct", "--count", "2", "--steps", "2",
                               "--batch-size", "2", "--device", "cpu", "--backend", "onnx", "--out", out, "-q")
    assert code == 7 and "out of memory even with --batch-size 1" in " ".join(err.split())
    assert "Traceback" not in err and not list(out.glob("synth_*"))


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory():
    from meddiff_cli.sample.memory import is_out_of_memory

    assert is_out_of_memory(ort_oom()) and is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9e9 bytes"))
    assert not is_out_of_memory(RuntimeError("shape mismatch in Conv node"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator error type


def test_max_memory_lowers_the_batch_up_front_or_refuses(tiny_model, tmp_path, run_meddiff):
    from meddiff_cli.model.card import ModelCard
    from meddiff_cli.sample.memory import estimate_volume_memory

    per_volume = estimate_volume_memory(ModelCard.load(tiny_model), "fp32")
    # the decoder's full-resolution activations dominate: 32^3 voxels x 8 channels x 4 tensors x 4 bytes + output
    assert per_volume == 32**3 * 8 * 4 * 4 + 2 * 32**3 * 4
    expected = reference(tiny_model, tmp_path / "batch2", "onnx", batch_size=2)

    out = tmp_path / "limited"
    code, _, err = run_meddiff("sample", "--model", "tiny", "--modality", "ct", "--count", COUNT, "--steps", "3",
                               "--batch-size", "4", "--device", "cpu", "--backend", "onnx", "--max-memory", "0.012",
                               "--out", out)
    assert code == 0, err
    assert "batch size 4 -> 2 (--max-memory 0.012 GB)" in " ".join(err.split())
    assert digests(out) == expected

    code, stdout, err = run_meddiff("sample", "--model", "tiny", "--modality", "ct", "--count", "1", "--device", "cpu",
                                    "--max-memory", "0.001", "--out", tmp_path / "too_small")
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert "--max-memory 0.001 GB is too small for this model" in " ".join(err.split())
    assert not list((tmp_path / "too_small").glob("synth_*"))
    code, _, err = run_meddiff("sample", "--model", "tiny", "--modality", "ct", "--count", "1", "--device", "cpu",
                               "--max-memory", "0", "--out", tmp_path / "zero")
    assert code == 2 and "--max-memory must be a positive number of GB" in " ".join(err.split())


@pytest.fixture
def two_gib_machine(monkeypatch):
    """Pretend 2 GiB of RAM are available, so the refusal does not depend on the test machine."""
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 2 * 1024**3)


def test_available_memory_is_read_from_the_system():
    available = limits.available_memory_bytes()
    assert available is not None and 64 * 1024**2 < available < 1 << 50


def test_preprocess_at_a_huge_size_is_refused_before_any_work(tmp_path, run_meddiff, two_gib_machine):
    scans = tmp_path / "scans"
    write_nifti(Volume(np.zeros((8, 8, 8), np.float32), np.eye(4), "ct"), scans / "a.nii.gz")
    out = tmp_path / "prep"
    code, stdout, err = run_meddiff("preprocess", scans, "--out", out, "--modality", "ct", "--size", "512", "-q")
    assert code == 2 and stdout == "" and "Traceback" not in err
    text = " ".join(err.split())
    assert "--size 512x512x512 with 1 worker(s) needs about 6.0 GB of memory but only 2.0 GB is available" in text
    assert not out.exists()  # refused before the output folder was even created
    code, _, err = run_meddiff("preprocess", scans, "--out", out, "--modality", "ct", "--size", "32", "-q")
    assert code == 0, err


def test_evaluate_at_a_huge_size_is_refused_before_loading(tmp_path, run_meddiff, two_gib_machine):
    real, synth = tmp_path / "real", tmp_path / "synth"
    for folder in (real, synth):
        for n in range(2):
            write_nifti(Volume(np.full((8, 8, 8), -500, np.float32), np.eye(4), "ct"), folder / f"v{n}.nii.gz")
    report = tmp_path / "report"
    code, stdout, err = run_meddiff("evaluate", real, synth, "--modality", "ct", "--size", "384", "--report", report,
                                    "-q")
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert "evaluating 4 volumes at --size 384x384x384 needs about" in " ".join(err.split())
    assert not report.exists()
