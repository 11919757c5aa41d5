"""Output paths: meddiff never deletes or replaces what it did not write, and the file system's refusals (a file
in the way, a path that cannot be created, a full disk) are one line with exit 8 and a resumable folder.

Bytes on disk are the evidence: the user's files keep their sha256, finished outputs keep their inode, and
a resumed run ends with exactly the files of an uninterrupted one. The full disk is real where the test may
mount a small tmpfs (root on Linux), and an injected ``OSError(ENOSPC)`` everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest

from meddiff_cli.errors import ExitCode, OutputError
from meddiff_cli.fsutil import (
    OWNER_FILE, TMP_PREFIX, FolderLock, atomic_dir, owned_files, sha256_file, write_owned_files,
)
from meddiff_cli.io import Volume, write_nifti

SAMPLE = ["sample", "--model", "tiny", "--modality", "ct", "--steps", "2", "--device", "cpu", "-q"]
PREPROCESS = ["--modality", "ct", "--size", "16", "--spacing", "3", "-q"]
REAL_SAVE = nibabel.save


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every output below ``folder`` by relative path (hidden files included; not the manifest,
    which records run details), plus each volume's sha256 as the manifest lists it."""
    found = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {e.get("file") or e.get("image"): e["sha256"] for e in manifest.get("files") or manifest["cases"]}
    return {**found, "listed": listed}


def leftovers(folder: Path) -> list[str]:
    """Temp files and lock files a finished (or failed) run must not leave behind."""
    return [str(p) for p in folder.rglob("*") if p.name.startswith(TMP_PREFIX) or p.name.endswith(".lock")]


def scans(folder: Path, count: int) -> Path:
    """``count`` small random CT volumes (HU) as NIfTI files: preprocess inputs that compress poorly."""
    rng = np.random.default_rng(7)
    for index in range(count):
        array = rng.normal(0, 400, (20, 20, 20)).astype(np.float32)
        write_nifti(Volume(array, np.diag([3.0, 3.0, 3.0, 1.0]), "ct"), folder / f"case{index}.nii.gz")
    return folder


@pytest.fixture
def notes(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("the user's notes\n")
    return path


# --------------------------------------------------------------------------- a file or a bad path as --out

def test_out_that_is_a_file_is_refused_by_every_command_and_left_intact(tiny_model, tmp_path, notes, run_meddiff):
    before = sha256_file(notes)
    scan = scans(tmp_path / "in", 1) / "case0.nii.gz"
    commands = [
        [*SAMPLE, "--count", "1", "--out", notes],
        ["phantom", "--modality", "ct", "--count", "1", "--size", "16", "--out", notes, "-q"],
        ["preprocess", scan, "--out", notes, *PREPROCESS],
        ["export", "tiny", "--out", notes, "-q"],
    ]
    for command in commands:
        code, out, err = run_meddiff(*command)
        assert code == ExitCode.OUTPUT == 8, (command[0], err)
        assert one_line(err) == f"error: {notes}: exists and is not a folder; choose a folder path for the output"
        assert out == "" and sha256_file(notes) == before and notes.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "notes.txt"]  # nothing created beside it


def test_paths_the_file_system_refuses_are_one_line_not_a_bug(tiny_model, tmp_path, notes, run_meddiff):
    for out, problem in ((notes / "sub", "part of this path is a file, not a folder"),
                         (Path("/proc/meddiff-nope"), "cannot be created here")):
        code, _, err = run_meddiff(*SAMPLE, "--count", "1", "--out", out)
        assert code == ExitCode.OUTPUT, err
        line = one_line(err)
        assert line.startswith(f"error: {out}") and problem in line and "internal error" not in line


def test_json_failure_prints_the_error_document_on_stdout(tmp_path, notes, run_meddiff, monkeypatch):
    """--json on failure: stdout is one JSON document with kind, message, path and the exit code."""
    phantom = ["phantom", "--modality", "ct", "--count", "1", "--size", "16", "-q"]
    code, out, err = run_meddiff(*phantom, "--out", notes, "--json")
    assert code == 8 and json.loads(out) == {
        "error": {"kind": "output", "message": "exists and is not a folder; choose a folder path for the output",
                  "path": str(notes)},
        "exit_code": 8,
    }
    code, out, _ = run_meddiff(*phantom, "--out", tmp_path / "p", "--count", "0", "--json")  # click usage error
    assert code == ExitCode.USAGE and json.loads(out)["exit_code"] == 2 and json.loads(out)["error"]["kind"] == "usage"
    code, out, _ = run_meddiff(*phantom, "--out", notes)
    assert code == 8 and out == ""  # without --json stdout stays empty
    monkeypatch.setenv("MEDDIFF_PHANTOM_JSON", "1")
    code, out, _ = run_meddiff(*phantom, "--out", notes)
    assert code == 8 and json.loads(out)["error"]["path"] == str(notes)
    monkeypatch.delenv("MEDDIFF_PHANTOM_JSON")
    config = tmp_path / "run.toml"
    config.write_text("[phantom]\njson = true\n")
    code, out, _ = run_meddiff("--config", config, *phantom, "--out", notes)
    assert code == 8 and json.loads(out)["exit_code"] == 8


# --------------------------------------------------------------------------- a full disk

def _failing_nifti_save(monkeypatch, fail_on_call: int) -> None:
    """nibabel.save writes part of the file, then the disk is full (as a real ENOSPC would leave it);
    ``monkeypatch.setattr(nibabel, "save", REAL_SAVE)`` frees the disk again."""
    calls = [0]

    def save(image, filename):
        calls[0] += 1
        if calls[0] >= fail_on_call:
            Path(filename).write_bytes(b"\x1f\x8b partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return REAL_SAVE(image, filename)

    monkeypatch.setattr(nibabel, "save", save)


def _assert_consistent_partial_sample(out: Path) -> dict[str, tuple[int, int]]:
    """Every file left is complete and listed with its sha256; returns each one's (inode, mtime)."""
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {entry["file"]: entry["sha256"] for entry in manifest["files"]}
    on_disk = sorted(p.name for p in out.glob("synth_*"))
    assert on_disk and set(on_disk) <= set(listed), (on_disk, listed)
    for name in on_disk:
        assert sha256_file(out / name) == listed[name]
    assert leftovers(out) == []
    return {name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) for name in on_disk}


def test_disk_full_while_sampling_stops_with_one_line_and_resumes(tiny_model, tmp_path, run_meddiff, monkeypatch):
    reference = tmp_path / "reference"
    assert run_meddiff(*SAMPLE, "--count", "4", "--out", reference, "-b", "1")[0] == 0
    out = tmp_path / "out"
    _failing_nifti_save(monkeypatch, fail_on_call=3)
    code, out_text, err = run_meddiff(*SAMPLE, "--count", "4", "--out", out, "-b", "1", "--json")
    line = one_line(err)
    assert code == ExitCode.OUTPUT and "no space left on the device" in line and "rerun to resume" in line, err
    assert line.startswith(f"error: {out}/synth_ct_000") and TMP_PREFIX not in line
    assert json.loads(out_text)["error"]["kind"] == "output"
    finished = _assert_consistent_partial_sample(out)
    assert 1 <= len(finished) < 4

    monkeypatch.setattr(nibabel, "save", REAL_SAVE)  # space freed
    code, _, err = run_meddiff(*SAMPLE, "--count", "4", "--out", out, "-b", "1")
    assert code == 0, err
    for name, identity in finished.items():  # finished files were not rewritten
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == identity
    assert digests(out) == digests(reference)  # exactly the files of an uninterrupted run


def test_disk_full_while_preprocessing_is_not_a_per_case_failure(tmp_path, run_meddiff, monkeypatch):
    inputs = scans(tmp_path / "in", 4)
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert run_meddiff("preprocess", inputs, "--out", reference, *PREPROCESS)[0] == 0
    _failing_nifti_save(monkeypatch, fail_on_call=3)
    code, _, err = run_meddiff("preprocess", inputs, "--out", out, *PREPROCESS)
    line = one_line(err)
    assert code == ExitCode.OUTPUT and line.startswith(f"error: {out}/images/case") and "no space left" in line
    assert not (out / "errors.json").exists()  # the disk's problem, not the cases'
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["cases"]) == 2
    for case in manifest["cases"]:
        assert sha256_file(out / case["image"]) == case["sha256"]
    assert leftovers(out) == []
    monkeypatch.setattr(nibabel, "save", REAL_SAVE)  # space freed
    assert run_meddiff("preprocess", inputs, "--out", out, *PREPROCESS)[0] == 0
    assert digests(out) == digests(reference)


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, size_kib: int):
    """A real size-limited file system (root on Linux only); yields a function that resizes it."""
    mountpoint.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mountpoint)],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")

    def resize(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mountpoint)], check=True, timeout=30)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


def _kib_for(folder: Path, files: int) -> int:
    """A tmpfs size (KiB) holding the manifest twice (atomic rewrite) and about ``files`` of the outputs."""
    sizes = [p.stat().st_size for p in folder.rglob("*.nii.gz")]
    manifest = (folder / "manifest.json").stat().st_size
    pages = 3 * math.ceil(manifest / 4096) + math.ceil(files * max(sizes) / 4096) + 2
    return pages * 4


def test_real_full_disk_sample_and_preprocess_resume(tiny_model, tmp_path, run_meddiff):
    references = {"sample": tmp_path / "ref-sample", "preprocess": tmp_path / "ref-preprocess"}
    inputs = scans(tmp_path / "in", 4)
    commands = {"sample": [*SAMPLE, "--count", "4", "-b", "1", "--out"],
                "preprocess": ["preprocess", inputs, *PREPROCESS, "--out"]}
    for name, command in commands.items():
        assert run_meddiff(*command, references[name])[0] == 0
    for name, command in commands.items():
        mountpoint = tmp_path / f"disk-{name}"
        with small_tmpfs(mountpoint, _kib_for(references[name], 1.5)) as resize:
            out = mountpoint / "out"
            code, _, err = run_meddiff(*command, out)
            line = one_line(err)
            assert code == ExitCode.OUTPUT and "no space left on the device" in line, (name, err)
            assert line.startswith(f"error: {out}") and TMP_PREFIX not in line
            assert leftovers(out) == []
            resize(64 * 1024)
            code, _, err = run_meddiff(*command, out)
            assert code == 0, (name, err)
            assert digests(out) == digests(references[name])


# --------------------------------------------------------------------------- folders meddiff owns

def test_owned_folder_refuses_foreign_content_and_replaces_only_its_own(tmp_path):
    folder = tmp_path / "report"
    write_owned_files(folder, {"a.json": b"1", "b.png": b"2"}, "evaluate report")
    assert owned_files(folder, "evaluate report") == ["a.json", "b.png"]
    (folder / "mine.txt").write_text("user")
    write_owned_files(folder, {"a.json": b"3"}, "evaluate report")  # b.png is no longer written: removed
    assert sorted(p.name for p in folder.iterdir()) == [OWNER_FILE, "a.json", "mine.txt"]
    assert (folder / "a.json").read_bytes() == b"3" and (folder / "mine.txt").read_text() == "user"

    with pytest.raises(OutputError, match="not a evaluate report|not a "):  # another kind of meddiff folder
        write_owned_files(folder, {"x": b""}, "something else")
    with pytest.raises(OutputError, match="meddiff did not write it"):  # a user's file under a name meddiff wants
        write_owned_files(folder, {"mine.txt": b"overwritten?"}, "evaluate report")
    assert (folder / "mine.txt").read_text() == "user"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "paper.docx").write_bytes(b"user bytes")
    with pytest.raises(OutputError, match="not empty and meddiff did not write it"):
        write_owned_files(foreign, {"a.json": b"1"}, "evaluate report")
    assert sorted(p.name for p in foreign.iterdir()) == ["paper.docx"]

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    marker = json.loads((folder / OWNER_FILE).read_text())
    marker["files"] += ["../victim.txt", "/etc/hostname", ".hidden"]  # a damaged or hostile marker
    (folder / OWNER_FILE).write_text(json.dumps(marker))
    write_owned_files(folder, {"c.json": b"4"}, "evaluate report")
    assert victim.read_text() == "keep"


def test_atomic_dir_replaces_an_existing_folder_only_when_told(tmp_path):
    user = tmp_path / "series"
    user.mkdir()
    (user / "keep.dcm").write_bytes(b"user")
    with pytest.raises(OutputError, match="exists"), atomic_dir(user) as staging:
        (staging / "new.dcm").write_bytes(b"new")
    assert [p.name for p in user.iterdir()] == ["keep.dcm"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(OutputError, match="not a folder"), atomic_dir(afile, replace=True):
        pass
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "series"]


# --------------------------------------------------------------------------- locks leave no file

LOCKED_INCREMENTS = """
import sys
from pathlib import Path
from meddiff_cli.fsutil import FolderLock
counter, lock = Path(sys.argv[1]), FolderLock(Path(sys.argv[2]))
for _ in range(int(sys.argv[3])):
    with lock:
        value = int(counter.read_text())
        counter.write_text(str(value + 1))
"""


def test_folder_lock_excludes_other_processes_and_leaves_no_file(tmp_path):
    counter, lock_path = tmp_path / "counter", tmp_path / ".x.lock"
    counter.write_text("0")
    runs = [subprocess.Popen([sys.executable, "-c", LOCKED_INCREMENTS, str(counter), str(lock_path), "150"])
            for _ in range(3)]
    assert [run.wait(timeout=120) for run in runs] == [0, 0, 0]
    assert counter.read_text() == "450"  # no increment lost, though the lock file came and went 450 times
    assert not lock_path.exists()
    with FolderLock(lock_path):
        assert lock_path.exists()
        holder = subprocess.run([sys.executable, "-c", "import sys; from meddiff_cli.fsutil import FolderLock\n"
                                 "try:\n    FolderLock(sys.argv[1], timeout=0).__enter__()\nexcept TimeoutError:\n"
                                 "    sys.exit(3)", str(lock_path)], timeout=60)
        assert holder.returncode == 3
    assert not lock_path.exists()


def test_no_lock_file_after_sample_and_preprocess_even_when_they_fail(tiny_model, tmp_path, run_meddiff):
    out = tmp_path / "synth"
    assert run_meddiff(*SAMPLE, "--count", "1", "--out", out)[0] == 0
    assert run_meddiff(*SAMPLE, "--count", "1", "--out", out, "--seed", "9")[0] == ExitCode.USAGE  # other settings
    inputs = scans(tmp_path / "in", 1)
    prep = tmp_path / "prep"
    assert run_meddiff("preprocess", inputs, "--out", prep, *PREPROCESS)[0] == 0
    assert run_meddiff("preprocess", inputs, "--out", prep, *PREPROCESS[:2], "--size", "32", "-q")[0] == ExitCode.USAGE
    assert leftovers(out) == leftovers(prep) == []
    assert not list(tmp_path.rglob("*.lock"))


# --------------------------------------------------------------------------- Ctrl-C while the CLI loads

INTERRUPT_DURING_IMPORT = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "meddiff_cli.cli.app":
            raise KeyboardInterrupt  # what a Ctrl-C while typer/rich/the commands load looks like
sys.meta_path.insert(0, Interrupt())
sys.argv = ["meddiff", "--help"]
from meddiff_cli.__main__ import main
main()
"""


def test_ctrl_c_while_the_cli_is_still_importing_is_one_line_and_130():
    done = subprocess.run([sys.executable, "-c", INTERRUPT_DURING_IMPORT], capture_output=True, text=True, timeout=60)
    assert done.returncode == ExitCode.INTERRUPTED
    assert one_line(done.stderr).startswith("interrupted:") and done.stdout == ""
    scripts = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'meddiff = "meddiff_cli.__main__:main"' in scripts  # the console script enters through that guard
