"""Decoding with GDCM in a child process: a corrupt stream can make GDCM abort (C++ ``terminate``), which
would kill the whole run without a word. Here it kills only the child, and the file is named.

The child (``python -c``, so no main module is re-imported as ``multiprocessing`` would) gets the file
list on stdin and answers per file, in order, with a JSON header line and the raw pixel bytes, so when
it dies the file it was working on is known. Nothing from it is unpickled.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from meddiff_cli.errors import BadInputError
from meddiff_cli.io.limits import max_voxels

GDCM = "gdcm"
CHILD = "from meddiff_cli.io.dicom.isolated import child_main; child_main()"


def child_main() -> None:
    """Child process: decode each listed file with GDCM; per file a header line, then its bytes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends this child
    import warnings

    import pydicom

    warnings.simplefilter("ignore")
    out = sys.stdout.buffer
    for path in json.loads(sys.stdin.readline()):
        data = b""
        try:
            ds = pydicom.dcmread(path, force=True)
            ds.pixel_array_options(decoding_plugin=GDCM)
            pixels = np.ascontiguousarray(ds.pixel_array)
            pixels = pixels[np.newaxis] if pixels.ndim == 2 else pixels
            header: dict[str, Any] = {"status": "ok", "dtype": pixels.dtype.str, "shape": list(pixels.shape)}
            data = pixels.tobytes()
        except Exception as error:  # a Python-level failure is reported, not fatal
            header = {"status": "error", "error": f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"}
        out.write(json.dumps(header).encode() + b"\n" + data)
        out.flush()


def _read_pixels(stream: IO[bytes], header: dict[str, Any], path: Path) -> np.ndarray:
    """The pixel block announced by ``header``, checked before anything is allocated."""
    try:
        dtype, shape = np.dtype(header["dtype"]), tuple(int(n) for n in header["shape"])
    except (KeyError, TypeError, ValueError):
        raise BadInputError("the GDCM decoder process sent a malformed answer", path) from None
    if dtype.kind not in "iuf" or len(shape) != 3 or min(shape) < 0 or int(np.prod(shape)) > max_voxels():
        raise BadInputError(f"the GDCM decoder process sent pixels of shape {shape} and type {dtype}", path)
    size, chunks = int(np.prod(shape)) * dtype.itemsize, []
    while size:
        chunk = stream.read(size)
        if not chunk:
            raise BadInputError("the GDCM decoder process ended in the middle of this file's pixels", path)
        chunks.append(chunk)
        size -= len(chunk)
    return np.frombuffer(b"".join(chunks), dtype=dtype).reshape(shape)


def decode_with_gdcm(paths: list[Path], syntax_name: str) -> dict[Path, np.ndarray]:
    """(frames, rows, columns) pixels of every file, decoded by GDCM in one child process."""
    results: dict[Path, np.ndarray] = {}
    with tempfile.TemporaryFile() as messages:  # GDCM's own complaints stay out of the user's terminal
        process = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=messages)
        assert process.stdin is not None and process.stdout is not None
        try:
            try:
                process.stdin.write((json.dumps([str(path) for path in paths]) + "\n").encode())
                process.stdin.close()
            except BrokenPipeError:
                pass  # the child died at once: reported below for the first file
            for path in paths:
                line = process.stdout.readline()
                if not line:
                    raise BadInputError(
                        f"the GDCM decoder crashed on this file's pixel data (corrupt {syntax_name} stream?)", path
                    )
                try:
                    header = json.loads(line)
                except ValueError:
                    raise BadInputError("the GDCM decoder process sent a malformed answer", path) from None
                if header.get("status") != "ok":
                    raise BadInputError(f"cannot decode pixel data ({syntax_name}): {header.get('error')}", path)
                results[path] = _read_pixels(process.stdout, header, path)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
    return results
