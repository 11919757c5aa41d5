"""Recursive folder walking shared by DICOM scanning and case discovery."""

from __future__ import annotations

from pathlib import Path

from meddiff_cli.fsutil import TMP_PREFIX


def walk_files(folder: Path, nnunet_images_only: bool = False) -> list[Path]:
    """All regular files below ``folder``, sorted per folder; symlinks are followed, loops cut.

    Our own half-written temp files are skipped. With ``nnunet_images_only``, a folder holding both
    ``images/`` and ``labels/`` (nnU-Net layout, e.g. ``meddiff phantom`` output) contributes only
    ``images/``: label maps are not cases.
    """
    files: list[Path] = []
    seen: set[Path] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        real = current.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(current.iterdir())
        except OSError:
            continue
        subfolders = {entry.name for entry in entries if entry.is_dir()}
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX):
                continue
            if nnunet_images_only and entry.name == "labels" and "images" in subfolders:
                continue
            if entry.is_dir():
                stack.append(entry)
            elif entry.is_file():
                files.append(entry)
    return files
