"""A scanner-like study folder through `meddiff preprocess`: a Siemens mosaic, a lossless-JPEG CT series, a 4D
series, a 3-plane localizer, an RT structure set and an ordinary series. Every volume is the right one
(compared with the harmonised source volume), what is set aside is noted, and what fails says why."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from meddiff_cli.cli.app import main
from meddiff_cli.io import Volume, read_nifti, read_volume, write_dicom_series
from meddiff_cli.preprocess import PreprocessSettings, harmonise_volume
from tests.dicom_builders import oblique_volume, to_lossless_jpeg, write_4d_series, write_localizer, write_mosaic


def run(monkeypatch, capsys, *args: str) -> tuple[int, dict, str]:
    monkeypatch.setattr(sys, "argv", ["meddiff", "preprocess", *args, "--size", "12", "--spacing", "4", "--json"])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, json.loads(captured.out), captured.err


@pytest.fixture()
def study(tmp_path):
    root = tmp_path / "study"
    mosaic = oblique_volume(30, shape=(10, 8, 6))
    write_mosaic(mosaic, root / "epi" / "mosaic.dcm", generate_uid())
    fmri = [oblique_volume(31 + v, shape=(8, 6, 4), angles=(0.0, 5.0, 0.0)) for v in range(3)]
    write_4d_series(fmri, root / "bold")
    t1 = oblique_volume(35, shape=(10, 10, 6), angles=(90.0, 0.0, 0.0))
    write_dicom_series(t1, root / "t1", modality="mri")
    write_localizer(root / "localizer")
    rng = np.random.default_rng(36)
    ct = Volume(rng.integers(-1024, 3000, (12, 10, 4)).astype(np.float32), np.diag([0.8, 0.8, 2.0, 1.0]), "ct")
    for path in write_dicom_series(ct, root / "ct", modality="ct").iterdir():
        to_lossless_jpeg(path, predictor=6)
    shutil.copy(get_testdata_file("rtstruct.dcm"), root / "rtstruct")
    (root / "README.txt").write_text("not a scan")
    return root, {"epi": mosaic, "bold": fmri[2], "t1": t1, "ct": ct}


def expected_image(source: Volume, modality: str) -> np.ndarray:
    """What preprocess must write for a case: the source volume harmonised."""
    settings = PreprocessSettings(modality=modality, spacing=(4.0,) * 3, size=(12,) * 3).resolved(modality)
    return harmonise_volume(source, settings).array


def test_mixed_study_folder(monkeypatch, capsys, study, tmp_path):
    root, sources = study
    out = tmp_path / "prep_mri"
    code, summary, stderr = run(monkeypatch, capsys, str(root), "--out", str(out), "--modality", "mri",
                                "--volume-index", "2")
    assert code == 5  # the CT series cannot join an MRI run: loud, and the others are done
    by_folder = {case["source"].rsplit("/", 1)[-1]: case for case in summary["cases"]}
    assert {name: case["status"] for name, case in by_folder.items()} == {
        "epi": "done", "bold": "done", "t1": "done", "ct": "failed"}
    assert by_folder["ct"]["error"] == "this scan is ct but the run preprocesses mri"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["volume_index"] == 2
    assert manifest["notes"] == summary["notes"] == [
        f"skipped 1 DICOM file(s) in {root}: no pixel data (RT Structure Set Storage)",
        f"skipped 3 DICOM file(s) in {root / 'localizer'}: localizer (ImageType LOCALIZER, 1 slice(s))",
    ]
    assert "3 done, 0 skipped, 1 failed" in stderr and "(2 note(s) on inputs set aside in manifest.json)" in stderr
    entries = {entry["source"].rsplit("/", 1)[-1]: entry for entry in manifest["cases"]}
    assert entries["bold"]["selected_volume"]["index"] == 2 and entries["bold"]["original_shape"] == [8, 6, 4]
    assert entries["epi"]["mosaic"] == {"images": 6, "grid": 3} and entries["epi"]["original_shape"] == [10, 8, 6]
    for name in ("epi", "bold", "t1"):
        written = read_nifti(out / entries[name]["image"]).array
        np.testing.assert_allclose(written, expected_image(sources[name], "mri"), atol=1e-6)

    out = tmp_path / "prep_ct"
    code, summary, stderr = run(monkeypatch, capsys, str(root), "--out", str(out), "--modality", "ct", "--verbose")
    assert code == 5 and f"note: skipped 3 DICOM file(s) in {root / 'localizer'}: localizer" in stderr
    statuses = {case["source"].rsplit("/", 1)[-1]: case["status"] for case in summary["cases"]}
    assert statuses == {"epi": "failed", "bold": "failed", "t1": "failed", "ct": "done"}
    [entry] = json.loads((out / "manifest.json").read_text())["cases"]
    assert read_volume(root / "ct").metadata["transfer_syntax"] == ["JPEG Lossless, Non-Hierarchical (Process 14)"]
    np.testing.assert_allclose(read_nifti(out / entry["image"]).array, expected_image(sources["ct"], "ct"), atol=1e-6)
