"""Pipelines: every command's --json is one parseable document alone on stdout; -q is silent; help has examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meddiff_cli import __version__
from tests.test_segmentation_cli import corpora  # noqa: F401  (session fixture: tiny labelled CT phantoms)

SEG_TINY = ["--size", "16", "--device", "cpu", "--seeds", "1", "--n-labelled", "2", "--epochs", "1",
            "--pretrain-epochs", "1", "--steps-per-epoch", "1"]


def run_piped(*args: object, home: Path) -> tuple[dict, str]:
    """A real `python -m meddiff_cli` process with stdout and stderr pipes (not TTYs); stdout must be pure JSON."""
    done = subprocess.run([sys.executable, "-m", "meddiff_cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "MEDDIFF_HOME": str(home)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stderr and "━" not in done.stderr  # no colours or bars when stderr is not a TTY
    return json.loads(done.stdout), done.stderr


def test_phantom_preprocess_and_models_list_pipe_clean_json(tmp_path, isolated_cache):
    phantoms, stderr = run_piped("phantom", "--modality", "mri", "--count", "2", "--size", "16", "--out",
                                 tmp_path / "ph", "--json", home=isolated_cache)
    assert phantoms["generated"] == 2 and "2 generated" in stderr
    prep, _ = run_piped("preprocess", tmp_path / "ph", "--out", tmp_path / "prep", "--size", "16", "--json", "-q",
                        home=isolated_cache)
    assert prep["done"] == 2 and prep["failed"] == 0
    listing, _ = run_piped("models", "list", "--json", home=isolated_cache)
    assert listing == {"cache": str(isolated_cache / "models"), "models": []}  # MEDDIFF_HOME still honoured


def test_train_pipes_clean_json_and_names_its_device(tmp_path, isolated_cache):
    from tests.train_support import make_data

    data = make_data(tmp_path / "data", "ct", cases=4, size=16)
    summary, stderr = run_piped("train", data, "--name", "piped", "--preset", "tiny", "--device", "cpu", "--workers", "0",
                                "--ae-steps", "2", "--diffusion-steps", "2", "--batch-size", "1", "--json",
                                home=isolated_cache)
    assert summary["steps"] == {"autoencoder": 2, "diffusion": 2}
    assert summary["folder"] == str(isolated_cache / "models" / "piped")
    assert "running on cpu" in stderr


def test_json_of_every_other_command_parses(tiny_model, corpora, tmp_path, run_meddiff):  # noqa: F811
    def run_json(*args: object) -> dict:
        code, out, err = run_meddiff(*args, "--json")
        assert code == 0, (args[0], err)
        assert "-q" not in args or err == "", (args[0], err)  # quiet means quiet, also for the heavy commands
        return json.loads(out)

    assert run_json("models", "info", "tiny")["card"]["name"] == "tiny"
    assert "tiny" in run_json("models", "verify")["verified"]
    export = run_json("export", "tiny", "--out", tmp_path / "onnx-only", "-q")
    assert sorted(export["files"]) == ["onnx/decoder.fp32.onnx", "onnx/denoiser.fp32.onnx"]
    sample = run_json("sample", "--modality", "ct", "-n", "1", "--steps", "1", "--out", tmp_path / "synth",
                      "--model", tmp_path / "onnx-only", "-q")
    assert sample["device"] == "cpu" and sample["generated"] == 1
    imported = run_json("models", "import", tmp_path / "onnx-only", "--name", "copy", "-q")
    assert imported["name"] == "copy"
    assert run_json("models", "rm", "copy", "--yes", "-q")["removed"] == "copy"
    evaluation = run_json("evaluate", corpora["train"] / "images", corpora["test"] / "images", "--size", "16",
                          "--bootstrap", "0", "-q")
    assert evaluation["format"] == "meddiff-evaluation" and evaluation["features"]["device"] == "cpu (numpy)"
    seg = run_json("augment-seg", "--images", corpora["train"] / "images", "--labels", corpora["train"] / "labels",
                   "--synthetic", corpora["synthetic"], "--out", tmp_path / "seg", *SEG_TINY, "-q")
    assert seg["device"] == "cpu" and {r["arm"] for r in seg["runs"]} == {"A", "B"}
    settings = run_json("config", "show", "sample")
    assert settings["commands"]["sample"]["steps"]["source"] == "default"


def test_quiet_success_prints_nothing_on_stderr(tiny_model, tmp_path, run_meddiff):
    for args in (["phantom", "--modality", "ct", "-n", "1", "--size", "16", "--out", tmp_path / "ph"],
                 ["preprocess", tmp_path / "ph", "--out", tmp_path / "prep", "--size", "16"],
                 ["sample", "--modality", "mri", "-n", "1", "--steps", "1", "--out", tmp_path / "s", "--model", "tiny"],
                 ["models", "verify", "tiny"]):
        code, out, err = run_meddiff(*args, "-q")
        assert code == 0 and err == "", (args[0], err)
        code, out, err = run_meddiff(*args, "-q", "--json")
        assert code == 0 and err == "" and json.loads(out), args[0]


def test_verbose_shows_settings_with_their_source_and_timing(tmp_path, run_meddiff, monkeypatch):
    monkeypatch.setenv("MEDDIFF_PHANTOM_SEED", "3")
    code, out, err = run_meddiff("phantom", "--modality", "ct", "-n", "2", "--size", "16", "--out", tmp_path, "-v")
    assert code == 0 and out == ""
    assert "--count = 2 (flag)" in err and "--seed = 3 (env)" in err and "--workers = 1 (default)" in err
    assert "phantom_ct_0001 written" in err and "s wall time" in err


def test_version_names_the_runtime_stack_and_config_devices_what_it_can_use(run_meddiff):
    import monai
    import onnxruntime
    import torch

    code, out, _ = run_meddiff("--version")  # from package metadata: instant (tests/test_cli_startup.py)
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"meddiff {__version__}"
    assert f"torch {torch.__version__}" in lines and f"monai {monai.__version__}" in lines
    assert any(line.startswith("onnxruntime") and line.endswith(f" {onnxruntime.__version__}") for line in lines)
    code, out, _ = run_meddiff("config", "devices")
    assert code == 0 and f"torch {torch.__version__}" in out
    assert f"CUDA available: {'yes' if torch.cuda.is_available() else 'no'}" in out
    assert all(provider in out for provider in onnxruntime.get_available_providers())
    code, out, _ = run_meddiff("config", "devices", "--json")
    report = json.loads(out)
    assert code == 0 and report["cuda_available"] == torch.cuda.is_available()
    assert report["onnxruntime_providers"] == onnxruntime.get_available_providers()


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


@pytest.mark.parametrize("flag", ["--json", "--quiet", "--verbose"])
def test_every_command_has_the_pipeline_flags_and_an_example(flag):
    import typer

    from meddiff_cli.cli.app import app

    commands = dict(_commands(typer.main.get_command(app)))
    assert {("train",), ("sample",), ("evaluate",), ("models", "list"), ("config", "show")} <= set(commands)
    for path, command in commands.items():
        assert any(flag in param.opts for param in command.params), (path, flag)
        assert "Example: meddiff" in (command.epilog or ""), path
        if flag == "--quiet":
            assert any("-q" in param.secondary_opts + param.opts for param in command.params), path


def test_every_help_page_renders_with_its_example_and_env_vars(run_meddiff):
    import typer

    from meddiff_cli.cli.app import app

    for path, _ in _commands(typer.main.get_command(app)):
        code, out, err = run_meddiff(*path, "--help")
        text = " ".join(out.split())
        assert code == 0 and err == "", (path, err)
        assert "Example: meddiff" in text, path
        env_prefix = "MEDDIFF_" + "_".join(p.upper().replace("-", "_") for p in path) + "_"
        assert f"env var: {env_prefix}" in text.replace("│ ", "").replace(" │", ""), path
