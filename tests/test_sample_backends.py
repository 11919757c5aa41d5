"""Sampling backends: what `auto` picks, precision parity against fp32 PyTorch, batch invariance of the bf16 path,
threads from free cores, resuming with `auto`, and progress lines where stderr is not a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import meddiff_cli.runtime.choice as choice
from meddiff_cli.devices import CpuClock, DeviceRequest, cpu_has_fast_bf16, cpu_threads, free_cores
from meddiff_cli.errors import UsageError
from meddiff_cli.export import ensure_onnx
from meddiff_cli.runtime.choice import PARITY_BOUNDS, choose_runtime, choose_threads
from meddiff_cli.sample import SampleOptions, sample_volumes

STEPS = 4
CPU = DeviceRequest("cpu")


def _machine(monkeypatch, fast_bf16: bool, cuda: bool = False, ort_cuda: bool = False) -> None:
    monkeypatch.setattr(choice, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(choice, "_cuda", lambda request: (cuda and request.kind != "cpu", ort_cuda))


def _pick(backend="auto", precision="auto", request=DeviceRequest("auto"), weights=True, held=frozenset({"fp32"})):
    picked = choose_runtime(backend, precision, request, weights, set(held))
    return picked.backend, picked.precision


def test_auto_picks_by_hardware_and_model_folder(monkeypatch):
    _machine(monkeypatch, fast_bf16=True)
    assert _pick() == ("torch", "bf16")
    assert _pick(backend="onnx") == ("onnx", "fp32")  # ONNX Runtime's CPU provider has no bf16
    assert _pick(precision="fp32") == ("torch", "fp32")
    assert _pick(weights=False) == ("onnx", "fp32")  # an ONNX-only folder (meddiff export --out)
    assert _pick(weights=False, held={"fp16"}) == ("onnx", "fp16")
    _machine(monkeypatch, fast_bf16=False)
    assert _pick() == ("torch", "fp32")
    _machine(monkeypatch, fast_bf16=True, cuda=True, ort_cuda=True)
    assert _pick() == ("onnx", "fp16")
    assert _pick(request=CPU) == ("torch", "bf16")
    _machine(monkeypatch, fast_bf16=False, cuda=True, ort_cuda=False)
    assert _pick() == ("torch", "fp16")


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "onnx", "precision": "bf16"}, "bf16 runs in PyTorch"),
    ({"backend": "torch", "weights": False}, "needs the model's weights"),
    ({"backend": "onnx", "precision": "fp16", "weights": False}, "holds graphs for fp32"),
])
def test_impossible_choices_are_usage_errors(monkeypatch, kwargs, message):
    _machine(monkeypatch, fast_bf16=True)
    with pytest.raises(UsageError, match=message):
        _pick(**kwargs)


def test_threads_are_the_free_cores(monkeypatch):
    now = CpuClock(wall=100.0, idle=50.0, own=10.0)
    monkeypatch.setattr(CpuClock, "now", classmethod(lambda cls: now))
    one_core_busy = CpuClock(wall=99.0, idle=49.6, own=9.4)  # 1 s: 0.4 s idle + 0.6 s ours -> 1 core free
    assert free_cores(one_core_busy) == pytest.approx(1.0)
    assert choose_threads(None, one_core_busy)[0] == 1
    idle = CpuClock(wall=99.0, idle=50.0 - cpu_threads() + 1.0, own=9.0)
    assert choose_threads(None, idle)[0] == cpu_threads()
    assert choose_threads(None, CpuClock(wall=99.0, idle=50.0, own=10.0))[0] == 1  # nothing free: still one
    assert choose_threads(None, CpuClock(wall=99.99, idle=50.0, own=10.0))[0] == cpu_threads()  # too short to tell
    assert choose_threads(3, one_core_busy) == (3, "threads 3 (requested)")
    with pytest.raises(UsageError, match="--threads"):
        choose_threads(0, one_core_busy)


def test_free_cores_counts_this_process_as_free():
    since = CpuClock.now()
    if since.idle is None:
        pytest.skip("no /proc/stat")
    spin = CpuClock.now()
    while CpuClock.now().wall - spin.wall < 0.2:
        pass
    free = free_cores(since)
    used = CpuClock.now().own - since.own
    assert free is not None and used / 0.25 <= free + 0.1 and free <= cpu_threads() + 0.2


def _volumes(tiny_model: Path, out: Path, **overrides) -> np.ndarray:
    """Model-space volumes [-1, 1] (HU / 1000 for the tiny model's CT window of 2000 HU)."""
    options = SampleOptions(modality="ct", count=2, out=out, model=str(tiny_model), steps=STEPS, file_format="npy",
                            device="cpu", threads=1, **overrides)
    result = sample_volumes(options)
    assert len(result.generated) == options.count
    return np.stack([np.load(out / f"synth_ct_{i:04d}.npy") for i in range(options.count)]) / 1000.0


@pytest.mark.parametrize("backend, precision", [
    ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "fp16"), ("torch", "fp16"),
])
def test_every_backend_and_precision_stays_within_its_bound_of_fp32_torch(tiny_model, tmp_path, backend, precision):
    ensure_onnx(tiny_model, "fp16")
    reference = _volumes(tiny_model, tmp_path / "reference", backend="torch", precision="fp32")
    volumes = _volumes(tiny_model, tmp_path / "run", backend=backend, precision=precision)
    difference = np.abs(volumes - reference)
    mean_bound, max_bound = PARITY_BOUNDS[precision]
    assert difference.mean() <= mean_bound and difference.max() <= max_bound, (difference.mean(), difference.max())
    # not vacuous: the two seeds' volumes differ far more than the precisions do
    assert np.abs(reference[0] - reference[1]).mean() > 5 * max(difference.mean(), 1e-4)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert (manifest["backend"], manifest["precision"]) == (backend, precision)
    expected = "bf16 autocast" if precision == "bf16" else precision
    assert manifest["runtime"]["precision"] == expected and manifest["runtime"]["threads"] == 1


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="bf16 batch invariance is measured on AMX/AVX512-BF16 CPUs")
def test_bf16_path_gives_identical_bytes_for_any_batch_size_and_thread_count(tiny_model, tmp_path):
    runs = {}
    for batch_size, threads in ((3, 1), (1, 1), (2, 2)):
        out = tmp_path / f"b{batch_size}t{threads}"
        sample_volumes(SampleOptions(modality="ct", count=3, out=out, model=str(tiny_model), steps=2, file_format="npy",
                                     device="cpu", precision="bf16", batch_size=batch_size, threads=threads))
        manifest = json.loads((out / "manifest.json").read_text())
        runs[(batch_size, threads)] = [entry["sha256"] for entry in manifest["files"]]
        assert {entry["batch_size"] for entry in manifest["files"]} <= {batch_size, 1}
    assert runs[(3, 1)] == runs[(1, 1)] == runs[(2, 2)]


def test_auto_resumes_the_backend_of_the_run_in_the_folder(tiny_model, tmp_path, run_meddiff):
    out = tmp_path / "run"
    flags = ["sample", "-m", "ct", "--model", "tiny", "--steps", "2", "--device", "cpu", "--format", "npy", "-o", out]
    code, _, err = run_meddiff(*flags, "-n", "1", "--backend", "onnx", "--precision", "fp32", "-q")
    assert code == 0, err
    code, stdout, err = run_meddiff(*flags, "-n", "2", "--json", "-q")  # auto: finishes that run with ONNX fp32
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["skipped"] == 1 and summary["generated"] == 1
    assert (summary["backend"], summary["precision"]) == ("onnx", "fp32") and "resuming" in summary["choice"]
    code, _, err = run_meddiff(*flags, "-n", "3", "--backend", "torch", "-q")  # explicit: another run, refused
    assert code == 2 and "backend" in err


def test_plain_progress_lines_when_stderr_is_not_a_terminal(tiny_model, tmp_path, run_meddiff):
    flags = ["sample", "-m", "ct", "--model", "tiny", "--steps", "2", "--device", "cpu", "-n", "3", "-b", "2"]
    code, _, err = run_meddiff(*flags, "-o", tmp_path / "a")
    assert code == 0, err
    lines = [" ".join(line.split()) for line in err.splitlines()]
    running = [line for line in lines if line.startswith("running on cpu")]
    assert len(running) == 1 and "backend torch" in running[0] and "thread" in running[0] and "batch 2" in running[0]
    progress = [line for line in lines if line.startswith("sampled ")]
    assert [line.split(" (")[0] for line in progress] == ["sampled 2/3 volumes", "sampled 3/3 volumes"]
    assert all("s/volume, ETA " in line for line in progress)
    code, _, err = run_meddiff(*flags, "-o", tmp_path / "b", "-q")
    assert code == 0 and err == ""
