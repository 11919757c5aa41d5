"""Interruptions of a real `meddiff preprocess` process: Ctrl-C, SIGTERM, SIGKILL at seeded points.

Ctrl-C (SIGINT to the whole process group, as a terminal sends it, workers included) and SIGTERM
must end the run with exit code 130 and a short message, leaving no temp file; SIGKILL cannot be
handled, so what it must leave is only *final* files that are complete (atomic rename) and a
manifest whose every entry matches its file. Rerunning the same command resumes: finished cases
are skipped untouched, the rest are done, and the result equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from meddiff_cli.fsutil import TMP_PREFIX, sha256_file
from meddiff_cli.io import Volume, write_nifti
from meddiff_cli.preprocess import PreprocessSettings, preprocess_cases

CASES = 30
SHAPE = (80, 80, 80)  # ~0.15 s per case on one shared core: the run takes a few seconds after start-up
ARGS = ["--modality", "ct", "--spacing", "1", "--size", "80", "-q"]
KILL_SEED = 20261124
KILL_POINTS = 4
STARTUP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("interrupt_scans")
    rng = np.random.default_rng(0)
    for n in range(CASES):
        array = rng.normal(0, 300, SHAPE).astype(np.float32)
        write_nifti(Volume(array, np.diag([1.0, 1.0, 1.0, 1.0]), "ct"), folder / f"case{n:02d}.nii")
    return folder


@pytest.fixture(scope="module")
def reference(scans, tmp_path_factory) -> dict[str, str]:
    """An uninterrupted run (in-process: same library code, no CLI start-up cost): case id -> sha256."""
    out = tmp_path_factory.mktemp("reference")
    preprocess_cases([scans], out, PreprocessSettings(modality="ct", spacing=[1.0], size=(80, 80, 80)))
    return {case["case_id"]: case["sha256"] for case in manifest_cases(out)}


def manifest_cases(out: Path) -> list[dict]:
    path = out / "manifest.json"
    return json.loads(path.read_text())["cases"] if path.exists() else []


def start(scans: Path, out: Path, *extra: str) -> subprocess.Popen:
    logs = out.parent / f"{out.name}-{time.monotonic_ns()}"
    with open(f"{logs}.out", "w") as stdout, open(f"{logs}.err", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "meddiff_cli", "preprocess", str(scans), "--out", str(out), *ARGS, *extra],
            stdout=stdout, stderr=stderr, start_new_session=True,
        )
    process.err_path = Path(f"{logs}.err")  # type: ignore[attr-defined]
    return process


def stderr_of(process: subprocess.Popen) -> str:
    return process.err_path.read_text()  # type: ignore[attr-defined]


def wait_for_cases(process: subprocess.Popen, out: Path, count: int) -> None:
    """Block until the manifest lists ``count`` finished cases (the process must still be running)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while len(manifest_cases(out)) < count:
        assert process.poll() is None, f"run ended early: {stderr_of(process)}"
        assert time.monotonic() < deadline, "run made no progress"
        time.sleep(0.02)


def temp_files(out: Path) -> list[Path]:
    return [path for path in out.rglob("*") if path.name.startswith(TMP_PREFIX)]


def assert_consistent(out: Path) -> dict[str, str]:
    """Every final image is a complete NIfTI; every manifest entry matches its file's bytes."""
    listed = {case["image"]: case["sha256"] for case in manifest_cases(out)}
    for relative, digest in listed.items():
        assert sha256_file(out / relative) == digest, f"{relative} does not match the manifest"
    for image in (out / "images").glob("*.nii.gz"):
        if image.name.startswith(TMP_PREFIX):
            continue  # a temp file a SIGKILL left: never under a final name, swept by the next run
        data = np.asarray(nib.load(str(image)).dataobj)  # a half-written gzip file fails here
        assert data.shape == SHAPE
    return listed


def test_ctrl_c_and_sigterm_exit_130_clean_and_resume(scans, reference, tmp_path):
    out = tmp_path / "prep"
    # Ctrl-C as a terminal sends it: to the whole process group, parent and pool workers.
    process = start(scans, out, "--workers", "2")
    wait_for_cases(process, out, 4)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 130
    err = stderr_of(process)
    assert "interrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert temp_files(out) == []
    first = assert_consistent(out)
    assert 4 <= len(first) < CASES
    stamps = {relative: (out / relative).stat().st_mtime_ns for relative in first}

    # SIGTERM (kill, a scheduler, docker stop) to the parent alone behaves the same.
    process = start(scans, out)
    wait_for_cases(process, out, len(first) + 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    assert "interrupted" in stderr_of(process) and "Traceback" not in stderr_of(process)
    assert temp_files(out) == []
    second = assert_consistent(out)

    # Rerun: finished cases are skipped and left untouched, the rest are done.
    done = subprocess.run(
        [sys.executable, "-m", "meddiff_cli", "preprocess", str(scans), "--out", str(out), *ARGS, "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["skipped"], summary["done"], summary["failed"]) == (len(second), CASES - len(second), 0)
    assert {relative: (out / relative).stat().st_mtime_ns for relative in first} == stamps
    assert {case["case_id"]: case["sha256"] for case in manifest_cases(out)} == reference
    assert temp_files(out) == []


def test_sigkill_at_seeded_points_leaves_no_partial_file_and_resumes(scans, reference, tmp_path):
    """SIGKILL the run at KILL_POINTS seeded moments (after n finished cases + a random fraction of one)."""
    rng = np.random.default_rng(KILL_SEED)
    out = tmp_path / "prep"
    targets = sorted(rng.choice(np.arange(1, CASES - 2), KILL_POINTS, replace=False))
    killed_at = []
    for target in targets:
        process = start(scans, out)
        wait_for_cases(process, out, int(target))
        time.sleep(float(rng.uniform(0, 0.2)))  # land anywhere inside the next case: read, resample, write
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        listed = assert_consistent(out)  # temp files may remain after SIGKILL, but never under a final name
        killed_at.append(len(listed))
    rerun = subprocess.run(
        [sys.executable, "-m", "meddiff_cli", "preprocess", str(scans), "--out", str(out), *ARGS, "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["failed"] == 0 and summary["skipped"] >= killed_at[-1]
    assert temp_files(out) == []  # the rerun swept what the kills left
    assert {case["case_id"]: case["sha256"] for case in manifest_cases(out)} == reference
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{case}.nii.gz" for case in reference)
    print(f"\nSIGKILL points tested: {len(targets)} (finished cases at each kill: {killed_at})")


def test_ctrl_c_during_phantom_with_workers_cancels_queued_cases_and_resumes(tmp_path):
    """`pool.map` queues every case: Ctrl-C must cancel the queue, not wait for the whole corpus."""
    out = tmp_path / "phantoms"
    command = [sys.executable, "-m", "meddiff_cli", "phantom", "--modality", "ct", "--count", "12", "--size", "48",
               "--out", str(out), "--workers", "2", "-q"]
    with open(tmp_path / "err.txt", "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while len(list((out / "labels").glob("[!.]*.nii.gz"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 130
    err = (tmp_path / "err.txt").read_text()
    assert "interrupted" in err and "Traceback" not in err, err
    assert temp_files(out) == []
    finished = sorted({p.name for p in (out / "labels").glob("[!.]*.nii.gz")}
                      & {p.name for p in (out / "images").glob("[!.]*.nii.gz")})
    assert 2 <= len(finished) < 12, "the queued cases ran to completion despite Ctrl-C"
    stamps = {name: (out / "images" / name).stat().st_mtime_ns for name in finished}
    rerun = subprocess.run([*command[:-1], "--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["skipped"] >= len(finished) and summary["skipped"] + summary["generated"] == 12
    assert {name: (out / "images" / name).stat().st_mtime_ns for name in finished} == stamps
    assert len(list((out / "images").glob("[!.]*.nii.gz"))) == 12 and temp_files(out) == []
