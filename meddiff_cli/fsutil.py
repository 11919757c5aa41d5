"""Writing outputs safely: atomic files, output folders, folder locks, and OS errors as one line.

Nothing half-written ever appears under a final name, and meddiff deletes or replaces only what it wrote
itself (docs/reliability.md, "Output paths").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meddiff_cli.errors import OutputError

TMP_PREFIX = ".meddiff-tmp-"
# What the file system said, in words that tell the user what to do. Any errno here is about the output path.
OUTPUT_PROBLEMS = {
    errno.ENOSPC: "no space left on the device (finished files are kept: free some space and rerun to resume)",
    errno.EDQUOT: "disk quota exceeded (finished files are kept: free some space and rerun to resume)",
    errno.EFBIG: "file too large for this file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EEXIST: "exists and is not a folder",
    errno.ENOTDIR: "part of this path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOENT: "cannot be created here (no such file or folder)",
    errno.EBUSY: "busy (a mount point or in use)",
}
# Errors that only a write raises: inside an atomic block they are the output's, never an input's.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def visible_path(path: str | Path) -> Path:
    """``path`` without meddiff's temp components: what the user asked for (``out/.meddiff-tmp-x/a.nii.gz`` -> ``out/a.nii.gz``)."""
    parts = [part for part in Path(path).parts if not part.startswith(TMP_PREFIX)]
    return Path(*parts) if parts else Path(".")


def output_error(error: OSError, path: str | Path | None = None) -> OutputError:
    """An OSError met while writing ``path`` (default: the error's own file name) as one line and exit code 8."""
    target = path if path is not None else error.filename
    problem = OUTPUT_PROBLEMS.get(error.errno or 0) or (error.strerror or str(error)).lower()
    return OutputError(problem, visible_path(target) if target is not None else None)


def output_folder(path: str | Path) -> Path:
    """Create the output folder ``path`` (and its parents); a file in the way or a refused path is an OutputError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError("exists and is not a folder; choose a folder path for the output", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(error, path) from None
    return path


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    ``suffix`` keeps extensions that writers look at (e.g. ``.nii.gz``).
    """
    final = Path(final)
    if final.is_dir():
        raise OutputError("is a folder, not a file; meddiff does not replace it", final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix or "".join(final.suffixes), dir=final.parent)
    except OSError as error:
        raise output_error(error, final) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _writing(final):
            yield tmp
        try:
            _fsync_file(tmp)
            if tmp.exists():
                os.chmod(tmp, _default_file_mode())  # mkstemp makes 0600; outputs get the usual umask mode
            os.replace(tmp, final)
        except OSError as error:
            raise output_error(error, final) from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; rename it onto ``final`` when the block succeeds.

    An existing ``final`` folder is swapped out and deleted (after the new content is complete) only with
    ``replace=True``, which callers pass for folders that are theirs by construction (a checkpoint, a cache
    entry); otherwise, and always for a file, an existing ``final`` is an OutputError before anything is written.
    """
    final = Path(final)
    _check_replaceable(final, replace)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=final.parent))
    except OSError as error:
        raise output_error(error, final) from None
    try:
        with _writing(final):
            yield tmp
        _check_replaceable(final, replace)
        try:
            os.chmod(tmp, _default_file_mode() | 0o111 & ~_current_umask())  # mkdtemp makes 0700
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=final.parent))
                os.replace(final, old / "old")
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except OSError as error:
            raise output_error(error, final) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_replaceable(final: Path, replace: bool) -> None:
    if final.exists() and not final.is_dir():
        raise OutputError("exists and is not a folder; meddiff does not replace it", final)
    if final.exists() and not replace:
        raise OutputError("exists; meddiff writes this folder only when it is new", final)


@contextlib.contextmanager
def _writing(final: Path) -> Iterator[None]:
    """A write-only OS error (disk full, quota, read-only) inside an atomic block becomes one line naming ``final``."""
    try:
        yield
    except OSError as error:
        if error.errno in WRITE_ERRNOS:
            raise output_error(error, final) from None
        raise


def atomic_write_bytes(final: str | Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(final: str | Path, obj: Any) -> None:
    atomic_write_bytes(final, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- folders meddiff owns

OWNER_FILE = ".meddiff-owner.json"
OWNER_FORMAT = "meddiff-owned-folder"


def owned_files(folder: str | Path, kind: str) -> list[str]:
    """Names of the files meddiff wrote into ``folder`` as a ``kind`` (e.g. "evaluate report"); [] when new or empty.

    A file in the way, a non-empty folder without meddiff's marker (``.meddiff-owner.json``), or one written as
    another kind is an OutputError: callers check this before any long computation.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError("exists and is not a folder; choose a folder path for the output", folder)
    if not folder.is_dir():
        return []
    owner = _read_owner(folder / OWNER_FILE)
    if owner is not None:
        if owner.get("kind") != kind:
            raise OutputError(f"holds a meddiff {owner.get('kind')}, not a {kind}; choose another folder", folder)
        return [name for name in owner.get("files", []) if _plain_name(name)]
    entries = sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith(TMP_PREFIX))
    if entries:
        raise OutputError(f"folder is not empty and meddiff did not write it ({len(entries)} entries, e.g. "
                          f"{entries[0]!r}); choose a new or empty folder: meddiff replaces only files it wrote", folder)
    return []


def write_owned_files(folder: str | Path, files: dict[str, bytes], kind: str) -> Path:
    """Write ``files`` (name -> bytes) into ``folder``, each atomically, and list them in its marker.

    Only files that meddiff's marker lists are replaced or (when this run no longer writes them) deleted; the
    marker names them before any is written, so an interrupted run leaves nothing meddiff would later refuse.
    """
    folder = Path(folder)
    previous = owned_files(folder, kind)
    for name in files:
        if not _plain_name(name):
            raise ValueError(f"not a plain file name: {name!r}")
        if (folder / name).exists() and name not in previous:
            raise OutputError("exists and meddiff did not write it; choose a new or empty folder", folder / name)
    output_folder(folder)
    remove_stale_temps(folder)
    _write_owner(folder, kind, sorted(set(previous) | set(files)))
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    for name in sorted(set(previous) - set(files)):
        if (folder / name).is_file():
            (folder / name).unlink()
    _write_owner(folder, kind, sorted(files))
    return folder


def _plain_name(name: Any) -> bool:
    """A file name directly inside the folder: a tampered marker cannot point meddiff at anything else."""
    return isinstance(name, str) and bool(name) and Path(name).name == name and name not in (".", "..") \
        and not name.startswith(".")


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    valid = isinstance(owner, dict) and owner.get("format") == OWNER_FORMAT and isinstance(owner.get("files"), list)
    return owner if valid else None


def _write_owner(folder: Path, kind: str, names: list[str]) -> None:
    atomic_write_json(folder / OWNER_FILE, {"format": OWNER_FORMAT, "kind": kind, "files": names,
                                            "note": "files meddiff wrote here; it replaces or deletes only these"})


# --------------------------------------------------------------------------- locks that leave no file behind

class FolderLock:
    """An exclusive inter-process lock through a lock file that is deleted on release (no 0-byte file left behind).

    filelock keeps its file so that waiters share one inode. Here the holder deletes the file while still holding
    it; a waiter that then gets the lock of the deleted inode sees that the path no longer names its file and tries
    again, so exclusion survives the deletion. Reusable and thread-safe (a descriptor per thread); not re-entrant.
    ``timeout``: None waits forever, else seconds before TimeoutError (0: fail at once if held).
    """

    def __init__(self, path: str | Path, timeout: float | None = None) -> None:
        self.path, self.timeout = Path(path), timeout
        self._local = threading.local()

    def __enter__(self) -> FolderLock:
        import fcntl  # POSIX only, like filelock's native lock

        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise output_error(error, self.path.parent) from None
            try:
                acquired = _flock(fcntl, fd, deadline)
                if acquired and _names_file(self.path, fd):
                    self._local.fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if not acquired:
                raise TimeoutError(f"{self.path} is held by another process")

    def __exit__(self, *exc_info: object) -> None:
        fd = self._local.__dict__.pop("fd")
        try:
            self.path.unlink(missing_ok=True)  # still holding it: nobody can be between lock and check
        finally:
            os.close(fd)  # releases the lock


def _flock(fcntl: Any, fd: int, deadline: float | None) -> bool:
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _names_file(path: Path, fd: int) -> bool:
    try:
        on_disk, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temps(folder: str | Path) -> int:
    """Delete temp files left by a killed run (they never carry a final name). Returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    count = 0
    for leftover in folder.glob(TMP_PREFIX + "*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        count += 1
    return count


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_file_mode() -> int:
    return 0o666 & ~_current_umask()


def _fsync_file(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
