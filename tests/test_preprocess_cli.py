"""`meddiff preprocess` on the command line: JSON on stdout only, one-line errors, documented exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from meddiff_cli.cli.app import main
from meddiff_cli.io import write_nifti
from tests.test_preprocess_pipeline import make_case


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["meddiff", "preprocess", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    for seed in range(2):
        write_nifti(make_case(seed)[0], tmp_path / f"scans/case{seed}.nii.gz")
    return tmp_path / "scans"


def test_json_summary_on_stdout(monkeypatch, capsys, scans, tmp_path):
    out = tmp_path / "prep"
    code, stdout, _ = run_cli(
        monkeypatch, capsys, str(scans), "--out", str(out), "--modality", "ct", "--size", "16", "--spacing", "3", "--json"
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["out"] == str(out) and (summary["done"], summary["skipped"], summary["failed"]) == (2, 0, 0)
    assert [case["case_id"] for case in summary["cases"]] == ["case0", "case1"]
    code, stdout, _ = run_cli(
        monkeypatch, capsys, str(scans), "--out", str(out), "--modality", "ct", "--size", "16", "--spacing", "3", "--json", "-q"
    )
    assert code == 0 and json.loads(stdout)["skipped"] == 2


def test_partial_failure_exit_5_and_all_failed_exit_4(monkeypatch, capsys, scans, tmp_path):
    (scans / "empty.nii.gz").write_bytes(b"")
    code, stdout, stderr = run_cli(
        monkeypatch, capsys, str(scans), "--out", str(tmp_path / "prep"), "--modality", "ct", "--size", "16", "--json"
    )
    assert code == 5
    assert json.loads(stdout)["failed"] == 1
    assert "errors.json" in stderr and "Traceback" not in stderr
    assert json.loads((tmp_path / "prep/errors.json").read_text())[0]["case_id"] == "empty"
    code, _, stderr = run_cli(
        monkeypatch, capsys, str(scans / "empty.nii.gz"), "--out", str(tmp_path / "p2"), "--modality", "ct", "-q"
    )
    assert code == 4 and "Traceback" not in stderr


def test_usage_and_input_errors(monkeypatch, capsys, scans, tmp_path):
    code, _, stderr = run_cli(monkeypatch, capsys, str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--modality", "ct")
    assert code == 3 and "no such file" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli(monkeypatch, capsys, str(scans), "--out", str(tmp_path / "o"))
    assert code == 2 and "--modality" in stderr
    code, _, stderr = run_cli(monkeypatch, capsys, str(scans), "--out", str(tmp_path / "o"), "--modality", "ct", "--size", "16,16")
    assert code == 2 and "--size" in stderr
    code, _, stderr = run_cli(monkeypatch, capsys, str(scans), "--out", str(tmp_path / "o"), "--modality", "ct", "--window", "500,-500")
    assert code == 2 and "window" in stderr
    code, _, _ = run_cli(monkeypatch, capsys, str(scans), "--out", str(tmp_path / "o"), "--modality", "ct", "--size", "16", "-q")
    assert code == 0
    code, _, stderr = run_cli(monkeypatch, capsys, str(scans), "--out", str(tmp_path / "o"), "--modality", "ct", "--size", "12", "-q")
    assert code == 2 and "--overwrite" in stderr and stderr.startswith("error:")
    assert len(stderr.strip().splitlines()) == 1  # one line, however long the paths
