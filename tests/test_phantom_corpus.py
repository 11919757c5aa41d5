"""`meddiff phantom` corpora: layout, manifest, per-case reproducibility, resuming, DICOM, the CLI."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest

from meddiff_cli.cli.app import main
from meddiff_cli.errors import UsageError
from meddiff_cli.phantom import LABELS, generate_phantom, write_phantom_corpus
from meddiff_cli.phantom.corpus import case_seed


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["meddiff", "phantom", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, " ".join(captured.err.split())


def test_corpus_layout_manifest_and_reproducible_cases(tmp_path):
    done: list[str] = []
    summary = write_phantom_corpus("ct", 3, tmp_path / "ct", size=32, seed=7, on_case_done=done.append)
    assert (summary["generated"], summary["skipped"]) == (3, 0) and len(done) == 3
    manifest = json.loads((tmp_path / "ct/manifest.json").read_text())
    assert manifest["format"] == "meddiff-phantom" and manifest["modality"] == "ct" and manifest["synthetic"]
    assert manifest["labels"] == LABELS["ct"]
    assert manifest["size"] == [32, 32, 32] and manifest["spacing"] == pytest.approx([380 / 32] * 3)
    assert [case["case_id"] for case in manifest["cases"]] == ["phantom_ct_0000", "phantom_ct_0001", "phantom_ct_0002"]
    seeds = [case["seed"] for case in manifest["cases"]]
    assert len(set(seeds)) == 3 and seeds[2] == case_seed(7, 2)
    case = manifest["cases"][2]
    image = nib.load(tmp_path / "ct" / case["image"])
    labels = nib.load(tmp_path / "ct" / case["label"])
    assert image.get_data_dtype() == np.int16 and labels.get_data_dtype() == np.uint8
    # one case regenerated alone from its manifest seed gives the same voxels and geometry
    expected_image, expected_labels = generate_phantom("ct", case["seed"], 32)
    assert np.array_equal(np.asarray(image.dataobj), np.clip(np.rint(expected_image.array), -32768, 32767))
    assert np.array_equal(np.asarray(labels.dataobj), expected_labels.array)
    assert np.allclose(image.affine, expected_image.affine)


def test_resume_skips_finished_cases_and_refuses_other_settings(tmp_path):
    out = tmp_path / "mri"
    write_phantom_corpus("mri", 3, out, size=32)
    kept = out / "images/phantom_mri_0000.nii.gz"
    before = kept.stat().st_mtime_ns
    (out / "images/phantom_mri_0001.nii.gz").unlink()
    summary = write_phantom_corpus("mri", 3, out, size=32)
    assert (summary["generated"], summary["skipped"]) == (1, 2)
    assert kept.stat().st_mtime_ns == before
    assert (out / "images/phantom_mri_0001.nii.gz").exists()
    with pytest.raises(UsageError, match="other settings"):
        write_phantom_corpus("mri", 3, out, size=32, contrast="t2")


def test_workers_give_the_same_corpus(tmp_path):
    write_phantom_corpus("mri", 2, tmp_path / "serial", size=32, seed=3)
    write_phantom_corpus("mri", 2, tmp_path / "parallel", size=32, seed=3, workers=2)
    for name in ("images/phantom_mri_0001.nii.gz", "labels/phantom_mri_0000.nii.gz"):
        a = np.asarray(nib.load(tmp_path / "serial" / name).dataobj)
        b = np.asarray(nib.load(tmp_path / "parallel" / name).dataobj)
        assert np.array_equal(a, b)


def test_dicom_corpus_keeps_geometry_and_is_marked_synthetic(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from meddiff_cli.io import read_volume

    write_phantom_corpus("ct", 1, tmp_path / "dcm", size=32, fmt="dicom")
    series = tmp_path / "dcm/images/phantom_ct_0000"
    files = sorted(series.glob("*.dcm"))
    assert len(files) == 32
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.get((0x0008, 0x001C)).value == "YES"
    volume = read_volume(series)
    labels = nib.load(tmp_path / "dcm/labels/phantom_ct_0000.nii.gz")
    assert np.allclose(volume.affine, labels.affine, atol=1e-3)
    expected, _ = generate_phantom("ct", case_seed(0, 0), 32)
    assert np.abs(volume.array - expected.array).max() <= 1.0  # integer HU storage


def test_cli_json_summary(monkeypatch, capsys, tmp_path):
    out = tmp_path / "cli"
    code, stdout, stderr = run_cli(
        monkeypatch, capsys, "--modality", "mri", "--count", "2", "--out", str(out), "--size", "32",
        "--contrast", "t2", "--seed", "5", "--json",
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["generated"] == 2 and summary["modality"] == "mri" and summary["size"] == [32, 32, 32]
    assert "2 generated" in stderr
    assert json.loads((out / "manifest.json").read_text())["contrast"] == "t2"


def test_cli_bad_flags_are_one_line_errors(monkeypatch, capsys, tmp_path):
    code, stdout, stderr = run_cli(monkeypatch, capsys, "--modality", "pet", "--count", "1", "--out", str(tmp_path / "x"))
    assert code == 2 and stdout == "" and "modality" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli(
        monkeypatch, capsys, "--modality", "ct", "--count", "1", "--out", str(tmp_path / "x"), "--format", "png"
    )
    assert code == 2 and "--format" in stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("*.nii.gz"))
