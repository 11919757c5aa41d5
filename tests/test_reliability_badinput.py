"""The bad-input corpus through the real CLI: every case reported in one line, nothing written for it.

One `meddiff preprocess` subprocess takes the whole corpus (plus one good scan) and must report
each bad case on its own stderr line and in errors.json, exit 5, write only the good case and
leave no temp file; a second subprocess checks that a folder of symlink loops and a FIFO ends
quickly with exit 3. Single-input exit codes and the one-line error are checked in-process
(same ``main()``, no 2-second start-up each). Reader-level guarantees (no allocation before the
size checks) are checked with tracemalloc.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from meddiff_cli.errors import BadInputError, ExitCode
from meddiff_cli.fsutil import TMP_PREFIX
from meddiff_cli.io import read_volume, write_nifti
from tests.badinputs import build_corpus, huge_nifti_bytes, mixed_modality_folder, seed_volume, symlink_loop_folder

CLI = [sys.executable, "-m", "meddiff_cli", "preprocess"]
ARGS = ["--modality", "ct", "--size", "16", "--spacing", "3"]
TIMEOUT_S = 180  # generous for a loaded CI machine; a hang is what this bounds


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(root / "batch")
    write_nifti(seed_volume(), root / "batch" / "good.nii.gz")
    return root, cases


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_corpus_in_one_run_every_case_reported_nothing_written(corpus):
    root, cases = corpus
    out = root / "out"
    explicit = [str(case.path) for case in cases if case.explicit]
    run = subprocess.run([*CLI, str(root / "batch"), *explicit, "--out", str(out), *ARGS, "--json"],
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == ExitCode.PARTIAL, run.stderr
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    summary = json.loads(run.stdout)  # stdout is exactly one JSON document
    assert (summary["done"], summary["failed"]) == (1, len(cases))
    errors = {entry["case_id"]: entry for entry in json.loads((out / "errors.json").read_text())}
    lines = stderr_lines(run.stderr)
    for case in cases:
        entry = errors.get(case.case_id)
        assert entry is not None, f"{case.name} not reported in errors.json"
        assert Path(entry["source"]) == case.path, (case.name, entry["source"])
        assert all(word.lower() in entry["error"].lower() for word in case.words), (case.name, entry["error"])
        assert "\n" not in entry["error"]
        mentions = [line for line in lines if line.startswith(f"failed {case.path}:")]
        assert len(mentions) == 1, (case.name, lines)
        assert all(word.lower() in mentions[0].lower() for word in case.words), mentions[0]
        assert not (out / "images" / f"{case.case_id}.nii.gz").exists()
    # Every stderr line is one of: a per-case failure, the summary, the final error line.
    assert len(lines) == len(cases) + 2, lines
    assert lines[-1].startswith("error: ") and "errors.json" in lines[-1]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["good.nii.gz"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [case["case_id"] for case in manifest["cases"]] == ["good"]
    assert [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)] == []
    assert [p for p in (root / "batch").rglob("*") if p.name.startswith(TMP_PREFIX)] == []


def test_symlink_loops_and_fifo_end_quickly_with_exit_3(tmp_path):
    folder = symlink_loop_folder(tmp_path / "loops")
    os.mkfifo(folder / "a" / "scan.nii.gz")  # opening a FIFO for reading would block forever
    run = subprocess.run([*CLI, str(folder), "--out", str(tmp_path / "out"), *ARGS],
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == ExitCode.NO_INPUT, run.stderr
    lines = stderr_lines(run.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}: no volumes found"), lines
    assert not (tmp_path / "out" / "images").exists()


@pytest.mark.parametrize(
    "name", ["trunc2_", "flip_magic", "huge_dims", "huge_short", "empty_dcm", "nonimage_test-SR", "series_missing"]
)
def test_single_bad_input_one_line_exit_4(corpus, run_meddiff, tmp_path, name):
    root, cases = corpus
    case = next(c for c in cases if c.name.startswith(name))
    code, stdout, stderr = run_meddiff("preprocess", case.path, "--out", tmp_path / "out", *ARGS, "-q")
    assert code == ExitCode.BAD_INPUT and stdout == ""
    lines = stderr_lines(stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {case.path}: ")
    assert all(word.lower() in lines[0].lower() for word in case.words), lines[0]
    assert not (tmp_path / "out" / "images" / f"{case.case_id}.nii.gz").exists()


def test_missing_input_exit_3(run_meddiff, tmp_path):
    missing = tmp_path / "nowhere" / "scan.nii.gz"
    code, _, stderr = run_meddiff("preprocess", missing, "--out", tmp_path / "out", *ARGS)
    assert code == ExitCode.NO_INPUT
    assert stderr_lines(stderr) == [f"error: {missing}: no such file or folder"]
    assert not (tmp_path / "out").exists()


def test_mixed_modalities_in_one_folder(run_meddiff, tmp_path):
    ct, mr = mixed_modality_folder(tmp_path / "mixed")
    code, stdout, stderr = run_meddiff("preprocess", tmp_path / "mixed", "--out", tmp_path / "out", *ARGS, "--json", "-q")
    assert code == ExitCode.PARTIAL
    summary = json.loads(stdout)
    failed = [case for case in summary["cases"] if case["status"] == "failed"]
    assert len(failed) == 1 and Path(failed[0]["source"]) == mr
    assert "this scan is mri but the run preprocesses ct" in failed[0]["error"]
    assert [c["source"] for c in summary["cases"] if c["status"] == "done"] == [str(ct)]
    assert len(list((tmp_path / "out" / "images").iterdir())) == 1


def test_unreadable_file(run_meddiff, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading, so the case cannot be built")
    path = write_nifti(seed_volume(), tmp_path / "locked.nii.gz")
    path.chmod(0)
    try:
        code, _, stderr = run_meddiff("preprocess", path, "--out", tmp_path / "out", *ARGS, "-q")
    finally:
        path.chmod(0o600)
    assert code == ExitCode.BAD_INPUT
    lines = stderr_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and "Permission" in lines[0]


@pytest.mark.parametrize("compressed", [False, True])
def test_size_claims_refused_before_any_large_allocation(tmp_path, compressed):
    """416-byte files claiming 4 GiB (over the limit) and 1 GiB (under it, data missing): < 16 MiB allocated."""
    for name, shape in (("over", (1024, 1024, 1024 + 1)), ("under", (1024, 1024, 256))):
        raw = huge_nifti_bytes(shape)
        path = tmp_path / f"{name}.nii{'.gz' if compressed else ''}"
        path.write_bytes(gzip.compress(raw) if compressed else raw)
        tracemalloc.start()
        try:
            with pytest.raises(BadInputError, match="limit|truncated") as error:
                read_volume(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 * 2**20, f"{path.name}: {peak:,} bytes allocated before refusing"
        assert str(path) in str(error.value)


def _jpeg(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)).save(path, format="JPEG")
    return path


def test_jpeg_named_dcm_is_named_not_skipped_silently(run_meddiff, tmp_path):
    """A JPEG renamed scan001.dcm: in a folder it is named in a note (and in "no volumes found"); alone it is
    identified as not DICOM at once, before any question about --modality."""
    jpeg = _jpeg(tmp_path / "scans" / "scan001.dcm")
    code, _, err = run_meddiff("preprocess", tmp_path / "scans", "--out", tmp_path / "out", *ARGS, "-q")
    assert code == ExitCode.NO_INPUT
    assert stderr_lines(err) == [f"error: {tmp_path / 'scans'}: no volumes found (NIfTI, NRRD, MHA, MHD or DICOM "
                                 f"image series); skipped 1 file(s) named like DICOM that are not DICOM: {jpeg} "
                                 "(a JPEG image)"]

    write_nifti(seed_volume(), tmp_path / "scans" / "good.nii.gz")
    code, out, err = run_meddiff("preprocess", tmp_path / "scans", "--out", tmp_path / "out", *ARGS, "--json", "-q")
    assert code == 0, err
    notes = json.loads(out)["notes"]
    assert any(str(jpeg) in note and "JPEG" in note for note in notes), notes
    assert any(str(jpeg) in note for note in json.loads((tmp_path / "out" / "manifest.json").read_text())["notes"])

    for args in ([], ["--modality", "mri"]):  # without --modality: the file is the problem, not the modality
        code, _, err = run_meddiff("preprocess", jpeg, "--out", tmp_path / "alone", "--size", "16", *args)
        assert code == ExitCode.BAD_INPUT
        assert stderr_lines(err) == [f"error: {jpeg}: not a DICOM file: a JPEG image"]
    assert not (tmp_path / "alone").exists()
