"""`meddiff evaluate` on the command line: table or JSON on stdout, report folder, one-line errors with exit codes."""

from __future__ import annotations

import json
import shutil

from meddiff_cli.errors import ExitCode
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
    assert sorted(p.name for p in report.iterdir()) == [
        "features_pca.png", "histograms.png", "memorization_ncc.png", "memorization_pairs.png",
        "montage.png", "report.html", "report.json",
    ]
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


def test_report_is_replaced_atomically_only_on_success(run_meddiff, phantom_sets, tmp_path):  # noqa: F811
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text('{"previous": true}')
    code, _, _ = run_meddiff("evaluate", phantom_sets["real"], tmp_path / "nothing-here", "--report", report, *GRID)
    assert code == ExitCode.NO_INPUT
    assert json.loads((report / "report.json").read_text()) == {"previous": True}
