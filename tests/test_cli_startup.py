"""The CLI starts without its heavy stages: ``meddiff --help``, ``--version``, every command's ``--help`` and
TAB completion import neither torch, MONAI nor ONNX Runtime (checked through ``sys.modules`` in a fresh
interpreter, not by timing), and a short flag means the same option in every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("torch", "monai", "onnxruntime")

PROBE = """
import contextlib, io, json, os, sys
argv, env = json.loads(sys.argv[1]), json.loads(sys.argv[2])
os.environ.update(env)
from meddiff_cli.cli.app import app
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        app(argv, standalone_mode=False, prog_name="meddiff")
    except SystemExit:
        pass
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[3])))
print(json.dumps({"heavy": heavy, "out": out.getvalue()}))
"""


def _probe(argv: list[str], env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(env or {}), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_help_version_and_every_command_help_import_no_heavy_stage():
    from meddiff_cli.cli.app import COMMAND_MODULES  # noqa: F401  (importing the root is itself light: checked below)

    for argv in (["--help"], ["--version"], ["sample", "--help"], ["train", "--help"], ["evaluate", "--help"],
                 ["augment-seg", "--help"], ["export", "--help"], ["preprocess", "--help"], ["phantom", "--help"],
                 ["models", "list", "--help"], ["config", "show", "sample"]):
        result = _probe(argv)
        assert result["heavy"] == [], (argv, result["heavy"])
    assert "Usage: meddiff" in _probe(["--help"])["out"]
    assert _probe(["--version"])["out"].splitlines()[0].startswith("meddiff ")


def test_completion_imports_no_heavy_stage_and_offers_values(isolated_cache):
    (isolated_cache / "models" / "body-ct").mkdir(parents=True)
    (isolated_cache / "models" / "body-ct" / "model.json").write_text("{}")
    cases = {
        "meddiff sample --modality ": {"ct", "mri"},
        "meddiff sample --format ": {"nifti", "dicom", "npy"},
        "meddiff sample --backend ": {"auto", "onnx", "torch"},
        "meddiff train data/ --preset ": {"tiny", "compact", "small", "base"},
        "meddiff sample --model bo": {"body-ct"},
        "meddiff models info ": {"body-ct", "default"},
        "meddiff preprocess in/ --modality ": {"ct", "mri", "auto"},
    }
    for words, expected in cases.items():
        env = {"_MEDDIFF_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
               "MEDDIFF_HOME": str(isolated_cache)}
        result = _probe([], env)
        assert result["heavy"] == [], (words, result["heavy"])
        assert set(result["out"].split()) == expected, (words, result["out"])


def test_importing_the_cli_root_imports_no_heavy_stage():
    code = "import sys, json; import meddiff_cli.cli.app; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r)))" % (HEAVY,)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stdout + done.stderr


def _all_commands(command, path=()):
    for name, sub in getattr(command, "commands", {}).items():
        yield (*path, name), sub
        yield from _all_commands(sub, (*path, name))


def test_a_short_flag_means_the_same_option_everywhere():
    from typer.main import get_command

    from meddiff_cli.cli.app import app

    meaning: dict[str, set[str]] = {}
    for _, command in _all_commands(get_command(app)):
        for param in (p for p in command.params if p.param_type_name == "option"):
            longs = [opt for opt in param.opts if opt.startswith("--")]
            for short in (opt for opt in [*param.opts, *param.secondary_opts] if not opt.startswith("--")):
                meaning.setdefault(short, set()).update(longs)
    assert all(len(longs) == 1 for longs in meaning.values()), meaning
    assert meaning["-m"] == {"--modality"} and meaning["-n"] == {"--count"} and meaning["-o"] == {"--out"}


def test_reading_nifti_cases_does_not_import_simpleitk(tmp_path):
    """SimpleITK (~50 MB, imported on first use by meddiff_cli.io.itk) is needed only for NRRD/MetaImage files."""
    code = """
import json, sys
import numpy as np
from meddiff_cli.io import Volume, discover_cases, read_case, write_nifti
write_nifti(Volume(np.zeros((4, 5, 6), np.float32), np.eye(4), "ct", {}), sys.argv[1] + "/a.nii.gz")
volume = read_case(discover_cases([sys.argv[1]])[0])
print(json.dumps({"shape": list(volume.array.shape), "sitk": "SimpleITK" in sys.modules}))
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"shape": [4, 5, 6], "sitk": False}
