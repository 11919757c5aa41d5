"""Settings precedence flag > env (MEDDIFF_<COMMAND>_<FLAG>) > TOML file (--config) > default, in real runs and
in `meddiff config show`; bad config files are one-line usage errors."""

from __future__ import annotations

import json

import numpy as np

from meddiff_cli.errors import ExitCode
from meddiff_cli.io import read_nifti


def _write(path, text: str):
    path.write_text(text)
    return path


def test_phantom_count_and_size_follow_flag_env_file_default(tmp_path, run_meddiff, monkeypatch):
    config = _write(tmp_path / "run.toml", '[phantom]\nmodality = "ct"\ncount = 3\nsize = 16\nseed = 4\n')

    def cases(out):
        return json.loads((out / "manifest.json").read_text())["cases"]

    code, _, err = run_meddiff("--config", config, "phantom", "--out", tmp_path / "file", "-q")
    assert code == 0, err
    assert len(cases(tmp_path / "file")) == 3  # file beats default (count has no default: required)
    monkeypatch.setenv("MEDDIFF_PHANTOM_COUNT", "2")
    code, _, err = run_meddiff("--config", config, "phantom", "--out", tmp_path / "env", "-q")
    assert code == 0 and len(cases(tmp_path / "env")) == 2  # env beats file
    code, _, err = run_meddiff("--config", config, "phantom", "--out", tmp_path / "flag", "-q", "--count", "1")
    assert code == 0 and len(cases(tmp_path / "flag")) == 1  # flag beats env
    image = read_nifti(sorted((tmp_path / "flag" / "images").iterdir())[0])
    assert image.shape == (16, 16, 16)  # size from the file, not the default 64
    same_seed = read_nifti(sorted((tmp_path / "env" / "images").iterdir())[0])
    np.testing.assert_array_equal(image.array, same_seed.array)  # seed 4 from the file in both runs


def test_preprocess_settings_through_env_config_var_and_show(tmp_path, run_meddiff, monkeypatch):
    code, _, _ = run_meddiff("phantom", "--modality", "ct", "-n", "1", "--size", "24", "--out", tmp_path / "ph", "-q")
    assert code == 0
    # TOML lists become the comma-separated values the flags take; dashes or underscores both work.
    config = _write(tmp_path / "run.toml", "[preprocess]\nspacing = [4, 4, 4]\nsize = 16\noverwrite = true\n"
                                            "[sample]\nbatch-size = 2\nsteps = 9\n")
    monkeypatch.setenv("MEDDIFF_CONFIG", str(config))  # instead of --config
    monkeypatch.setenv("MEDDIFF_PREPROCESS_SIZE", "12")
    code, out, err = run_meddiff("config", "show", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["config_file"] == str(config)
    prep, sample = shown["commands"]["preprocess"], shown["commands"]["sample"]
    assert prep["spacing"] == {"flag": "--spacing", "value": "4,4,4", "source": "file",
                               "env": "MEDDIFF_PREPROCESS_SPACING"}
    assert (prep["size"]["value"], prep["size"]["source"]) == ("12", "env")
    assert (prep["workers"]["value"], prep["workers"]["source"]) == (1, "default")
    assert (sample["batch_size"]["value"], sample["batch_size"]["source"]) == (2, "file")
    assert sample["file_format"]["env"] == "MEDDIFF_SAMPLE_FORMAT"  # env names follow the flag, not the variable
    assert "models list" in shown["commands"] and "cache_dir" in shown["commands"]["models list"]

    code, out, err = run_meddiff("preprocess", tmp_path / "ph", "--out", tmp_path / "prep", "--json", "-q")
    assert code == 0, err
    image = read_nifti(next((tmp_path / "prep" / "images").iterdir()))
    assert image.shape == (12, 12, 12) and np.allclose(image.spacing, 4.0)  # env size, file spacing
    code, _, err = run_meddiff("preprocess", tmp_path / "ph", "--out", tmp_path / "prep", "--size", "8", "-q")
    assert code == 0, err  # --overwrite came from the file, so changed settings are allowed
    assert read_nifti(next((tmp_path / "prep" / "images").iterdir())).shape == (8, 8, 8)  # flag wins


def test_bad_config_files_are_usage_errors_naming_the_problem(tmp_path, run_meddiff):
    cases = {
        "[sampel]\nsteps = 3\n": (ExitCode.USAGE, "unknown command table 'sampel'"),
        "[sample]\nstepz = 3\n": (ExitCode.USAGE, "unknown setting 'stepz' in table 'sample'"),
        "[models.lst]\njson = true\n": (ExitCode.USAGE, "unknown setting 'lst' in table 'models'"),
        "[sample\n": (ExitCode.BAD_INPUT, "not a valid TOML config file"),
    }
    for text, (expected, message) in cases.items():
        config = _write(tmp_path / "bad.toml", text)
        code, out, err = run_meddiff("--config", config, "config", "show")
        assert code == expected and message in err and str(config) in err, (text, err)
        assert err.count("\n") == 1 and out == ""
    code, _, err = run_meddiff("--config", tmp_path / "missing.toml", "models", "list")
    assert code == ExitCode.NO_INPUT and "config file not found" in err
    code, _, err = run_meddiff("--config", _write(tmp_path / "ok.toml", "[sample]\nsteps = 'many'\n"), "config", "show")
    assert code == 0  # a wrong value type only fails the run that uses it, with click's usual message
    code, _, err = run_meddiff("--config", tmp_path / "ok.toml", "sample", "--modality", "ct", "-n", "1", "--out",
                               tmp_path / "s")
    assert code == ExitCode.USAGE and "Invalid value for '--steps'" in err
