"""Interruptions of real `meddiff sample` and `meddiff evaluate` processes (second pass of issue 8).

`sample` stages each volume in ``.meddiff-tmp-shard-*``, records its sha256 in the manifest, then renames it
into place; Ctrl-C/SIGTERM must exit 130 and remove the staging folder, SIGKILL may leave the staging folder
but never a partial file under a final name, and a rerun must end with exactly the files (sha256) of an
uninterrupted run, leaving finished files untouched. `evaluate --report` writes its files only after the
evaluation succeeded, so an interrupted run leaves the previous report byte for byte.
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
from meddiff_cli.sample import SampleOptions, sample_volumes

COUNT = 10
STEPS = 25  # ~0.5 s per volume with the tiny model on one shared core: the run lasts several seconds
KILL_SEED = 20261125
KILL_POINTS = 3
STARTUP_TIMEOUT_S = 120


def sample_args(model: Path, out: Path) -> list[str]:
    return ["sample", "--model", str(model), "--modality", "ct", "--count", str(COUNT), "--steps", str(STEPS),
            "--batch-size", "1", "--device", "cpu", "--out", str(out), "-q"]


@pytest.fixture(scope="module")
def reference(tiny_model_source, tmp_path_factory) -> dict[str, str]:
    """An uninterrupted run (in-process, same settings as the CLI runs below): file name -> sha256."""
    out = tmp_path_factory.mktemp("sample_reference")
    sample_volumes(SampleOptions(modality="ct", count=COUNT, out=out, model=str(tiny_model_source), steps=STEPS,
                                 batch_size=1, device="cpu"))
    return {path.name: sha256_file(path) for path in sorted(out.glob("synth_*"))}


def start(args: list[str], logs: Path) -> subprocess.Popen:
    with open(f"{logs}.err", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "meddiff_cli", *args], stdout=subprocess.DEVNULL,
                                   stderr=stderr, start_new_session=True)
    process.err_path = Path(f"{logs}.err")  # type: ignore[attr-defined]
    return process


def finals(out: Path) -> list[Path]:
    return sorted(out.glob("synth_ct_*.nii.gz"))


def wait_for_files(process: subprocess.Popen, out: Path, count: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while len(finals(out)) < count:
        assert process.poll() is None, f"run ended early: {process.err_path.read_text()}"  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "run made no progress"
        time.sleep(0.02)


def temp_files(out: Path) -> list[Path]:
    return [path for path in out.rglob("*") if path.name.startswith(TMP_PREFIX)]


def assert_consistent(out: Path, reference: dict[str, str]) -> dict[str, str]:
    """Every final file is complete, listed in the manifest with its sha256, and equal to the reference's."""
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {entry["file"]: entry["sha256"] for entry in manifest["files"]}
    present = {path.name: sha256_file(path) for path in finals(out)}
    for name, digest in present.items():
        assert listed.get(name) == digest, f"{name} is not the file the manifest lists"
        assert digest == reference[name], f"{name} differs from the uninterrupted run"
        assert np.asarray(nib.load(str(out / name)).dataobj).shape == (32, 32, 32)
    return present


def test_sample_ctrl_c_and_sigterm_exit_130_clean_and_resume(tiny_model_source, reference, tmp_path):
    out = tmp_path / "synth"
    process = start(sample_args(tiny_model_source, out), tmp_path / "int")
    wait_for_files(process, out, 2)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole process group (ORT threads, writer threads)
    assert process.wait(timeout=60) == 130
    err = process.err_path.read_text()
    assert "interrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert temp_files(out) == []
    first = assert_consistent(out, reference)
    assert 2 <= len(first) < COUNT
    stamps = {name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) for name in first}

    process = start(sample_args(tiny_model_source, out), tmp_path / "term")
    wait_for_files(process, out, len(first) + 2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    assert "interrupted" in process.err_path.read_text() and "Traceback" not in process.err_path.read_text()
    assert temp_files(out) == []
    second = assert_consistent(out, reference)
    assert len(second) < COUNT, "SIGTERM came too late to test anything"

    rerun = subprocess.run([sys.executable, "-m", "meddiff_cli", *sample_args(tiny_model_source, out), "--json"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["skipped"], summary["generated"]) == (len(second), COUNT - len(second))
    assert {name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) for name in first} == stamps
    assert {path.name: sha256_file(path) for path in finals(out)} == reference
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert temp_files(out) == []


def test_sample_sigkill_at_seeded_points_leaves_no_partial_file_and_resumes(tiny_model_source, reference, tmp_path):
    rng = np.random.default_rng(KILL_SEED)
    out = tmp_path / "synth"
    targets = sorted(int(t) for t in rng.choice(np.arange(1, COUNT - 2), KILL_POINTS, replace=False))
    killed_at = []
    for number, target in enumerate(targets):
        process = start(sample_args(tiny_model_source, out), tmp_path / f"kill{number}")
        wait_for_files(process, out, target)
        time.sleep(float(rng.uniform(0, 0.5)))  # anywhere in the next volume: denoise, decode, gzip, rename
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        killed_at.append(len(assert_consistent(out, reference)))  # staging may remain, final names never partial
    rerun = subprocess.run([sys.executable, "-m", "meddiff_cli", *sample_args(tiny_model_source, out), "--json"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["skipped"] >= killed_at[-1]
    assert {path.name: sha256_file(path) for path in finals(out)} == reference
    assert temp_files(out) == []  # the rerun swept the staging folder a kill left
    print(f"\nsample SIGKILL points tested: {len(targets)} (finished volumes at each kill: {killed_at})")


def _write_set(folder: Path, count: int, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for n in range(count):
        array = rng.normal(0, 300, (size,) * 3).astype(np.float32) - 500
        write_nifti(Volume(array, np.diag([2.0, 2.0, 2.0, 1.0]), "ct"), folder / f"v{n:02d}.nii.gz")
    return folder


def workers_ignore_sigint(pid: int) -> bool:
    """True once ``pid`` has child processes and every one has run its initializer (SIGINT ignored).

    A spawn worker still importing modules would print its own KeyboardInterrupt traceback; that window
    belongs to Python's start-up, not to meddiff, so the interrupt is sent after it.
    """
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        masks = []
        for child in children:
            status = Path(f"/proc/{child}/status").read_text()
            masks.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16))
    except (OSError, StopIteration):
        return False
    return bool(children) and all(mask & (1 << (signal.SIGINT - 1)) for mask in masks)


def test_evaluate_ctrl_c_exits_130_and_keeps_the_previous_report(tmp_path, run_meddiff):
    real, synth = tmp_path / "real", tmp_path / "synth"
    real.mkdir(), synth.mkdir()
    _write_set(real, 16, 64, 0), _write_set(synth, 16, 64, 1)
    small_real, small_synth = tmp_path / "small_real", tmp_path / "small_synth"
    small_real.mkdir(), small_synth.mkdir()
    for name in ("v00.nii.gz", "v01.nii.gz"):
        (small_real / name).write_bytes((real / name).read_bytes())
        (small_synth / name).write_bytes((synth / name).read_bytes())
    report = tmp_path / "report"
    grid = ["--modality", "ct", "--size", "32", "--spacing", "4", "--bootstrap", "0", "-q"]
    code, _, err = run_meddiff("evaluate", small_real, small_synth, "--report", report, *grid)
    assert code == 0, err
    before = {path.relative_to(report): sha256_file(path) for path in report.rglob("*") if path.is_file()}

    args = ["evaluate", str(real), str(synth), "--report", str(report), "--workers", "2", "--modality", "ct",
            "--size", "64", "--spacing", "2", "--bootstrap", "0", "-q"]
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("needs /proc/PID/task/PID/children (Linux) to see when loading has begun")
    process = start(args, tmp_path / "eval")
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not workers_ignore_sigint(process.pid):  # the loader's pool is up: loading has begun
        assert process.poll() is None and time.monotonic() < deadline, process.err_path.read_text()
        time.sleep(0.05)
    time.sleep(0.5)  # inside loading / radiomics of 32 volumes
    assert process.poll() is None, f"evaluate finished before the interrupt: {process.err_path.read_text()}"
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 130
    err = process.err_path.read_text()
    assert "interrupted" in err and "Traceback" not in err, err
    after = {path.relative_to(report): sha256_file(path) for path in report.rglob("*") if path.is_file()}
    assert after == before
    assert temp_files(tmp_path) == []


def test_pool_workers_are_born_ignoring_ctrl_c():
    """Workers ignore SIGINT from their first instruction, not only once their initializer has run (a spawn
    worker spends a second or more importing first: Ctrl-C then printed one traceback per worker)."""
    from meddiff_cli.signals import interruptible_process_pool

    before = signal.getsignal(signal.SIGINT)
    with interruptible_process_pool(2) as pool:
        futures = [pool.submit(sum, [1, n]) for n in range(2)]  # each submit may start a worker
        masks = {}
        for pid in list(pool._processes):  # read at once: the workers are still starting Python
            status = Path(f"/proc/{pid}/status").read_text()
            masks[pid] = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
        assert [future.result(timeout=120) for future in futures] == [1, 2]
    assert masks and all(mask & (1 << (signal.SIGINT - 1)) for mask in masks.values()), masks
    assert signal.getsignal(signal.SIGINT) is before  # the parent's own Ctrl-C handling is unchanged
