"""Shipped shell completions are fresh, and completion really completes commands and options."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_completions", ROOT / "scripts" / "gen_completions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_completions_match_a_fresh_generation(tmp_path):
    gen = _generator()
    gen.write_completions(tmp_path)
    shipped = ROOT / "completions"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(gen.FILES.values())
    for name in gen.FILES.values():
        assert (shipped / name).read_text() == (tmp_path / name).read_text(), (
            f"completions/{name} is stale: run python scripts/gen_completions.py")
    assert gen.stale_files(shipped) == []
    (tmp_path / "meddiff.bash").write_text("# edited\n")
    assert gen.stale_files(tmp_path) == ["meddiff.bash"]  # the check notices a change
    for name in gen.FILES.values():
        assert "_MEDDIFF_COMPLETE=complete_" in (shipped / name).read_text() or \
            '"complete_powershell"' in (shipped / name).read_text()


def _complete(run_meddiff, monkeypatch, words: str, shell: str = "bash") -> list[str]:
    monkeypatch.setenv("_MEDDIFF_COMPLETE", f"complete_{shell}")
    if shell == "bash":
        monkeypatch.setenv("COMP_WORDS", words)
        monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    else:
        monkeypatch.setenv("_TYPER_COMPLETE_ARGS", words)
    code, out, err = run_meddiff()
    assert code == 0, err
    return out.split()


def test_completion_offers_commands_options_and_subcommands(run_meddiff, monkeypatch):
    assert _complete(run_meddiff, monkeypatch, "meddiff sa") == ["sample"]
    assert "augment-seg" in _complete(run_meddiff, monkeypatch, "meddiff a")
    assert "--device" in _complete(run_meddiff, monkeypatch, "meddiff sample --dev")
    assert {"list", "verify"} <= set(_complete(run_meddiff, monkeypatch, "meddiff models "))
    zsh = " ".join(_complete(run_meddiff, monkeypatch, "meddiff preprocess --spa", shell="zsh"))
    assert "--spacing" in zsh


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("meddiff") is None,
                    reason="needs bash and the installed meddiff console script")
def test_bash_script_completes_through_the_real_program():
    script = (f"source {ROOT / 'completions' / 'meddiff.bash'}; COMP_WORDS=(meddiff config sh); COMP_CWORD=2; "
              "_meddiff_completion meddiff; echo ${COMPREPLY[@]}")  # bash passes the command as $1
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.stdout.split() == ["show"], done.stderr


def test_completion_works_under_python_dash_m():
    """``python -m meddiff_cli`` uses the program name ``meddiff``, so the same env var drives completion."""
    env = {**os.environ, "_MEDDIFF_COMPLETE": "complete_bash", "COMP_WORDS": "meddiff ev", "COMP_CWORD": "1"}
    done = subprocess.run([sys.executable, "-m", "meddiff_cli"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["evaluate"], done.stderr
