"""`meddiff evaluate` on the command line: table or JSON on stdout, report folder, one-line errors with exit codes."""

from __future__ import annotations

import json
import shutil

from meddiff_cli.errors import ExitCode
from meddiff_cli.fsutil import sha256_file
from tests.test_evaluate_phantoms import SPACING, phantom_sets  # noqa: F401  (session fixture)

GRID = ["--size", "32", "--spacing", str(SPACING), "--bootstrap", "0", "--no-anatomy", "-q"]


def test_json_goes_alone_to_stdout_and_report_folder_is_complete(run_meddiff, phantom_sets, tmp_path):  # noqa: F811
    report = tmp_path / "report"
    code, out, err = run_meddiff(
        "evaluate", phantom_sets["real"], phantom_sets["synth"], "--train", phantom_sets["train"],
        "--report", report, "--json", *GRID,
    )
    assert code == 0, err
    summary = json.loads(out)  # the whole of stdout is one JSON document
    assert summary["format"] == "meddiff-evaluation"
    assert summary["inputs"]["synthetic"]["count"] == 8 and summary["memorization"]["flagged"] == []
    written = ["features_pca.png", "histograms.png", "memorization_ncc.png", "memorization_pairs.png",
               "montage.png", "report.html", "report.json"]
    assert sorted(p.name for p in report.iterdir()) == [".meddiff-owner.json", *written]
    assert json.loads((report / ".meddiff-owner.json").read_text())["files"] == written  # what it may replace later
    assert json.loads((report / "report.json").read_text())["fidelity"] == summary["fidelity"]


def test_table_on_stdout_without_json(run_meddiff, phantom_sets):  # noqa: F811
    code, out, _ = run_meddiff("evaluate", phantom_sets["real"], phantom_sets["blur2.4"], "--workers", "2", *GRID)
    assert code == 0
    assert "Fréchet distance (radiomics-v1)" in out and "MS-SSIM within SYNTH" in out
    assert "Memorization" not in out  # no --train


def test_bad_inputs_give_one_line_errors(run_meddiff, phantom_sets, tmp_path):  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_meddiff("evaluate", phantom_sets["real"], empty, *GRID)
    assert code == ExitCode.NO_INPUT and out == "" and str(empty) in err and "Traceback" not in err

    broken = tmp_path / "broken"
    shutil.copytree(phantom_sets["synth"] / "images", broken)
    (broken / "zz_truncated.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    code, _, err = run_meddiff("evaluate", phantom_sets["real"], broken, *GRID)
    assert code == ExitCode.BAD_INPUT and "zz_truncated.nii.gz" in err and len(err.strip().splitlines()) == 1

    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(next((phantom_sets["synth"] / "images").glob("*.nii.gz")), single / "one.nii.gz")
    code, _, err = run_meddiff("evaluate", phantom_sets["real"], single, *GRID)
    assert code == ExitCode.USAGE and "at least 2" in err

    code, _, err = run_meddiff("evaluate", phantom_sets["real"], phantom_sets["synth"], "--features", "medicalnet", *GRID)
    assert code == ExitCode.MODEL and "MedicalNet" in err

    code, _, err = run_meddiff("evaluate", phantom_sets["real"], tmp_path / "missing", *GRID)
    assert code == ExitCode.NO_INPUT and "missing" in err


def test_failed_run_keeps_the_previous_report_and_user_files_are_never_touched(run_meddiff, phantom_sets, tmp_path):  # noqa: F811
    """A report folder holding anything meddiff did not write is refused up front (exit 8), byte for byte intact;
    an earlier report is replaced only by a successful run, and then only its own files."""
    user = tmp_path / "results"
    user.mkdir()
    (user / "important.csv").write_text("a,b\n1,2\n")
    (user / "paper.docx").write_bytes(b"PK\x03\x04 user bytes")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    before = {path: sha256_file(path) for path in (*user.iterdir(), notes)}
    for target in (user, notes):
        code, out, err = run_meddiff("evaluate", phantom_sets["real"], phantom_sets["synth"], "--report", target,
                                     "--json", *GRID)
        assert code == ExitCode.OUTPUT == 8 and len(err.strip().splitlines()) == 1 and str(target) in err, err
        assert json.loads(out)["error"]["kind"] == "output"  # --json: the failure is the JSON document
    assert {path: sha256_file(path) for path in (*user.iterdir(), notes)} == before
    assert sorted(p.name for p in user.iterdir()) == ["important.csv", "paper.docx"]

    report = tmp_path / "report"
    code, _, err = run_meddiff("evaluate", phantom_sets["real"], phantom_sets["synth"], "--report", report, *GRID)
    assert code == 0, err
    previous = {path.name: sha256_file(path) for path in report.iterdir()}
    code, _, _ = run_meddiff("evaluate", phantom_sets["real"], tmp_path / "nothing-here", "--report", report, *GRID)
    assert code == ExitCode.NO_INPUT
    assert {path.name: sha256_file(path) for path in report.iterdir()} == previous
    (report / "my-annotations.txt").write_text("kept")  # the user's file beside an earlier report
    code, _, err = run_meddiff("evaluate", phantom_sets["real"], phantom_sets["blur2.4"], "--report", report, *GRID)
    assert code == 0, err
    assert (report / "my-annotations.txt").read_text() == "kept"
    assert sha256_file(report / "report.json") != previous["report.json"]  # the new report replaced the old one
    assert not [p for p in report.iterdir() if p.name.startswith(".meddiff-tmp-")]


def test_report_into_the_current_folder(run_meddiff, phantom_sets, tmp_path, monkeypatch):  # noqa: F811
    """`--report .`: fine in an empty folder (no swap of the working directory, no EBUSY, no temp left)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = run_meddiff("evaluate", phantom_sets["real"], phantom_sets["synth"], "--report", ".", *GRID)
    assert code == 0, err
    assert {"report.html", "report.json", ".meddiff-owner.json"} <= {p.name for p in here.iterdir()}
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".meddiff-tmp-")]
