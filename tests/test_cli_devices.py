"""One ``--device`` rule for every computing command: parsing, resolution, exit codes, the 'ran on' line."""

from __future__ import annotations

import pytest
import torch

from meddiff_cli.devices import DeviceRequest, describe_device, parse_device, resolve_device
from meddiff_cli.errors import DeviceError, ExitCode, UsageError
from tests.test_segmentation_cli import base_args, corpora  # noqa: F401  (session fixture)

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour without a GPU")


@pytest.mark.parametrize("text, expected", [
    ("auto", DeviceRequest("auto")), (" CPU ", DeviceRequest("cpu")), ("cuda", DeviceRequest("cuda")),
    ("cuda:0", DeviceRequest("cuda", 0)), ("Cuda:3", DeviceRequest("cuda", 3)), (None, DeviceRequest("auto")),
])
def test_parse_accepts_the_four_forms(text, expected):
    request = parse_device(text)
    assert request == expected
    assert str(request) == (text or "auto").strip().lower()


@pytest.mark.parametrize("text", ["tpu", "cuda:", "cuda:x", "cuda:-1", "cuda0", "mps", ""])
def test_parse_rejects_anything_else_as_usage_error(text):
    if text == "":  # empty means the default, like an unset option
        assert parse_device(text) == DeviceRequest("auto")
        return
    with pytest.raises(UsageError, match="auto, cpu, cuda or cuda:N"):
        parse_device(text)


@no_cuda
def test_resolution_without_a_gpu():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert describe_device(resolve_device("auto")).startswith("cpu (")
    for text in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device(text)


def test_cuda_index_beyond_visible_gpus_is_a_device_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="only 1 CUDA device"):
        resolve_device("cuda:1")


def test_torchrun_rank_picks_its_local_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert parse_device("cuda").cuda_index == 2 and parse_device("auto").cuda_index == 2
    assert parse_device("cuda:1").cuda_index == 1  # an explicit index wins


@no_cuda
def test_every_computing_command_exits_7_for_cuda_and_2_for_a_bad_device(
        tiny_model, corpora, tmp_path, run_meddiff):  # noqa: F811
    phantoms = corpora["train"] / "images"
    commands = {
        "sample-onnx": ["sample", "--modality", "ct", "-n", "1", "--out", tmp_path / "s1", "--model", "tiny",
                        "--backend", "onnx"],
        "sample-auto": ["sample", "--modality", "ct", "-n", "1", "--out", tmp_path / "s3", "--model", "tiny"],
        "sample-torch": ["sample", "--modality", "ct", "-n", "1", "--out", tmp_path / "s2", "--model", "tiny",
                         "--backend", "torch"],
        "evaluate": ["evaluate", phantoms, phantoms, "--size", "16"],
        "augment-seg": [*base_args(corpora, tmp_path / "seg")],
        "train": ["train", tmp_path / "unused-prep", "--name", "x"],
    }
    for name, args in commands.items():
        args = [a for a in args if a != "cpu"]  # augment-seg's base args pin --device cpu
        if "--device" in args:
            args.remove("--device")
        code, out, err = run_meddiff(*args, "--device", "cuda:0")
        assert code == ExitCode.DEVICE, (name, err)
        assert err.count("\n") == 1 and "cuda" in err and out == "", (name, err)
        code, _, err = run_meddiff(*args, "--device", "gpu0")
        assert code == ExitCode.USAGE, (name, err)
        assert "auto, cpu, cuda or cuda:N" in err, (name, err)


def test_the_device_that_ran_is_reported(tiny_model, corpora, tmp_path, run_meddiff):  # noqa: F811
    code, _, err = run_meddiff("sample", "--modality", "ct", "-n", "1", "--steps", "1", "--out", tmp_path / "s",
                               "--model", "tiny", "--device", "cpu", "--backend", "onnx")
    assert code == 0 and "running on cpu (CPUExecutionProvider" in err
    phantoms = corpora["train"] / "images"
    code, _, err = run_meddiff("evaluate", phantoms, corpora["test"] / "images", "--size", "16", "--bootstrap", "0",
                               "--device", "cpu")
    assert code == 0 and "features: radiomics-v1 ran on cpu" in err
