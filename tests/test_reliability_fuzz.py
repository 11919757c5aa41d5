"""Fuzzing the volume readers: any mutated file gives a finite Volume or a MeddiffError, quickly.

Valid NIfTI (.nii, .nii.gz), NRRD, MHA and DICOM (one file, and one slice inside a series folder)
are mutated by byte flips, overwrites with boundary values, truncation, splices (a copied or
dropped run of bytes) and structured header-field overwrites. ``read_volume`` must either return a
3D float32 Volume with finite voxels and a finite, invertible affine, or raise ``MeddiffError``
(whose message is one line naming the file). Any other exception, or a read taking longer than
``DEADLINE_S``, fails the test.

CI runs ``MEDDIFF_FUZZ_EXAMPLES`` examples (default 150, derandomized, so every run tries the same
inputs). For a long campaign: ``MEDDIFF_FUZZ_EXAMPLES=5000 MEDDIFF_FUZZ_RANDOM=1 pytest -s
tests/test_reliability_fuzz.py`` (``-s`` prints the count of inputs tried and their outcomes).
"""

from __future__ import annotations

import faulthandler
import gzip
import os
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meddiff_cli.errors import MeddiffError
from meddiff_cli.io import Volume, read_volume
from tests.badinputs import write_seeds

EXAMPLES = int(os.environ.get("MEDDIFF_FUZZ_EXAMPLES", "150"))
RANDOM = os.environ.get("MEDDIFF_FUZZ_RANDOM", "") not in ("", "0")
DEADLINE_S = 10  # one read of a <10 kB file; a hang in C code is stopped by faulthandler at 4x this
FUZZ_MAX_VOXELS = str(2**22)  # mutated sizes below the real limit must not make the fuzzer allocate gigabytes

INTERESTING_INTS = [0, 1, -1, 2, 3, 4, 7, 8, 255, 256, 32767, -32768, 65535, 2**31 - 1, -(2**31), 2**32 - 1]
INTERESTING_FLOATS = [0.0, -0.0, 1e-30, -1.0, 1e30, float("nan"), float("inf"), float("-inf")]
NIFTI_FIELDS = ["sizeof_hdr", "dim", "datatype", "bitpix", "vox_offset", "pixdim", "scl_slope", "scl_inter",
                "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                "srow_x", "srow_y", "srow_z", "magic", "intent_code", "xyzt_units", "dim_info", "slice_end"]
ITK_KEYS = {
    "nrrd": [b"type:", b"dimension:", b"sizes:", b"space directions:", b"space origin:", b"encoding:", b"endian:",
             b"space:", b"kinds:"],
    "mha": [b"NDims =", b"DimSize =", b"ElementType =", b"ElementSpacing =", b"Offset =", b"TransformMatrix =",
            b"BinaryData =", b"BinaryDataByteOrderMSB =", b"ElementNumberOfChannels =", b"CompressedData ="],
}
ITK_VALUES = [b"", b"0", b"-1", b"nan", b"inf", b"1e308", b"16 12", b"16 12 10 3", b"0 0 0", b"65536 65536 65536",
              b"double", b"int64", b"gzip", b"big", b"True", b"7", b"(nan,0,0) (0,1,0) (0,0,1)", b"MET_UCHAR",
              b"LOCAL", b"x y z", b"\xff\xfe", b"16 12 10 1 1 1 1 1 1 1"]
DICOM_TAGS = [(0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0100), (0x0028, 0x0101), (0x0028, 0x0103),
              (0x0028, 0x0008), (0x0028, 0x0002), (0x0028, 0x0030), (0x0020, 0x0032), (0x0020, 0x0037),
              (0x0028, 0x1053), (0x0028, 0x1052), (0x7FE0, 0x0010), (0x0002, 0x0010), (0x0028, 0x0004)]

outcomes: Counter = Counter()


class Seeds:
    """Seed bytes (a short repr keeps hypothesis' failure reports readable)."""

    def __init__(self, data: dict[str, bytes], series: Path) -> None:
        self.data, self.series = data, series

    def __repr__(self) -> str:
        return f"Seeds({sorted(self.data)})"


@pytest.fixture(scope="module")
def seeds():
    folder = Path(tempfile.mkdtemp(prefix="meddiff-fuzz-seeds-"))
    paths = write_seeds(folder)
    data = {kind: path.read_bytes() for kind, path in paths.items() if kind != "dicom_series"}
    data["nii.gz:raw"] = gzip.decompress(data["nii.gz"])
    data["dicom_slice"] = sorted(paths["dicom_series"].iterdir())[3].read_bytes()
    yield Seeds(data, paths["dicom_series"])
    shutil.rmtree(folder, ignore_errors=True)
    print(f"\nfuzz: {sum(outcomes.values())} inputs read: " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))


# --------------------------------------------------------------------------------------------- mutations


@st.composite
def byte_mutations(draw, length: int):
    """A short list of generic byte-level edits (positions relative to the length at that point)."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "splice", "delete", "insert"]))
        position = draw(st.floats(0, 1, allow_nan=False))
        if kind == "flip":
            edits.append((kind, position, draw(st.integers(0, 7))))
        elif kind == "overwrite":
            value = draw(st.sampled_from(INTERESTING_INTS))
            width = draw(st.sampled_from([1, 2, 4, 8]))
            edits.append((kind, position, int(value % 2 ** (8 * width)).to_bytes(width, "little")))
        elif kind in ("splice", "delete"):
            edits.append((kind, position, draw(st.integers(1, 256)), draw(st.floats(0, 1, allow_nan=False))))
        elif kind == "insert":
            edits.append((kind, position, draw(st.binary(min_size=1, max_size=32))))
        else:
            edits.append((kind, position))
    return edits


def apply_bytes(data: bytes, edits) -> bytes:
    raw = bytearray(data)
    for edit in edits:
        at = min(int(edit[1] * len(raw)), max(len(raw) - 1, 0))
        if not raw:
            break
        if edit[0] == "flip":
            raw[at] ^= 1 << edit[2]
        elif edit[0] == "overwrite":
            raw[at : at + len(edit[2])] = edit[2]
        elif edit[0] == "truncate":
            del raw[at:]
        elif edit[0] == "splice":  # copy a run of bytes from elsewhere over this position
            source = int(edit[3] * len(raw))
            raw[at : at + edit[2]] = raw[source : source + edit[2]]
        elif edit[0] == "delete":
            del raw[at : at + edit[2]]
        else:
            raw[at:at] = edit[2]
    return bytes(raw)


def nifti_field_edit(raw: bytes, field: str, index: int, value) -> bytes:
    dtype, offset = nib.Nifti1Header.template_dtype.fields[field][:2]
    base = dtype.base.newbyteorder("<")
    offset += (index % max(int(np.prod(dtype.shape or (1,))), 1)) * base.itemsize
    with np.errstate(all="ignore"):
        encoded = np.array(value).astype(base).tobytes() if base.kind != "S" else bytes(str(value), "ascii")[: base.itemsize]
    out = bytearray(raw)
    out[offset : offset + len(encoded)] = encoded
    return bytes(out)


def itk_field_edit(raw: bytes, key: bytes, value: bytes) -> bytes:
    start = raw.find(key)
    if start < 0:
        return raw
    end = raw.find(b"\n", start)
    return raw[: start + len(key)] + b" " + value + raw[end:]


def dicom_tag_edit(raw: bytes, tag: tuple[int, int], value: bytes) -> bytes:
    """Overwrite the value bytes of one explicit-VR little-endian element in place (length kept)."""
    needle = tag[0].to_bytes(2, "little") + tag[1].to_bytes(2, "little")
    start = raw.find(needle, 132)
    if start < 0:
        return raw
    vr = raw[start + 4 : start + 6]
    header = 12 if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"UC", b"UR") else 8
    length = int.from_bytes(raw[start + header - (4 if header == 12 else 2) : start + header], "little")
    body = (value * (length // max(len(value), 1) + 1))[:length] if value else b"\0" * length
    return raw[: start + header] + body + raw[start + header + length :]


KINDS = ["nii", "nii.gz", "nii.gz:raw", "nrrd", "mha", "dcm", "dicom_slice"]


@st.composite
def mutated_inputs(draw):
    kind = draw(st.sampled_from(KINDS))
    return kind, draw(st.sampled_from(["bytes", "field", "both"])), draw(st.data())


def mutate(kind: str, how: str, data, seed_bytes: dict[str, bytes]) -> bytes:
    """``nii.gz``: header fields edited before compression, bytes after (so the gzip layer is fuzzed);
    ``nii.gz:raw``: everything edited before compression (so the NIfTI layer behind gzip is fuzzed)."""
    raw = seed_bytes["nii.gz:raw"] if kind == "nii.gz" else seed_bytes[kind]
    if how in ("field", "both"):
        if kind.startswith("nii"):
            for _ in range(data.draw(st.integers(1, 3))):
                field = data.draw(st.sampled_from(NIFTI_FIELDS))
                value = data.draw(st.sampled_from(INTERESTING_INTS + INTERESTING_FLOATS))
                raw = nifti_field_edit(raw, field, data.draw(st.integers(0, 7)), value)
        elif kind in ("nrrd", "mha"):
            for _ in range(data.draw(st.integers(1, 3))):
                raw = itk_field_edit(raw, data.draw(st.sampled_from(ITK_KEYS[kind])), data.draw(st.sampled_from(ITK_VALUES)))
        else:
            for _ in range(data.draw(st.integers(1, 3))):
                value = data.draw(st.sampled_from([b"\0", b"\xff", b"9", b"-", b"\\", b"nan", b"1e999", b"\x7f\xff"]))
                raw = dicom_tag_edit(raw, data.draw(st.sampled_from(DICOM_TAGS)), value)
    if kind == "nii.gz":
        raw = gzip.compress(raw, mtime=0)
    if how in ("bytes", "both"):
        raw = apply_bytes(raw, data.draw(byte_mutations(len(raw))))
    if kind == "nii.gz:raw":
        raw = gzip.compress(raw, mtime=0)
    return raw


# ------------------------------------------------------------------------------------------------- test


class ReadTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise ReadTimeout(f"read took longer than {DEADLINE_S} s")


def check_read(path: Path) -> str:
    """Read with a deadline; return the outcome class, fail on anything but Volume or MeddiffError."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(DEADLINE_S)
    faulthandler.dump_traceback_later(4 * DEADLINE_S, exit=True)  # stuck inside C code: kill loudly
    try:
        volume = read_volume(path)
    except MeddiffError as error:
        text = str(error)
        assert "\n" not in text and "Traceback" not in text, text
        assert str(path) in text or path.name in text or str(path.parent) in text, text
        return type(error).__name__
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert isinstance(volume, Volume)
    assert volume.array.ndim == 3 and volume.array.dtype == np.float32 and min(volume.shape) >= 1
    assert np.isfinite(volume.array).all(), "non-finite voxels passed the reader"
    assert np.isfinite(volume.affine).all(), f"non-finite affine passed the reader: {volume.affine}"
    assert abs(np.linalg.det(volume.affine[:3, :3])) > 0, f"singular affine passed the reader: {volume.affine}"
    return "Volume"


@settings(
    max_examples=EXAMPLES,
    derandomize=not RANDOM,
    deadline=None,  # our own SIGALRM deadline covers hangs; hypothesis' one would flag slow-but-finite reads
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
                           HealthCheck.filter_too_much],
)
@given(case=mutated_inputs())
def test_mutated_files_give_a_volume_or_a_meddiff_error(seeds, tmp_path_factory, monkeypatch, case):
    seed_bytes, series = seeds.data, seeds.series
    kind, how, data = case
    monkeypatch.setenv("MEDDIFF_MAX_VOXELS", FUZZ_MAX_VOXELS)
    raw = mutate(kind, how, data, seed_bytes)
    folder = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        if kind == "dicom_slice":  # one bad slice inside an otherwise valid series folder
            target = folder / "series"
            shutil.copytree(series, target)
            (target / sorted(os.listdir(target))[3]).write_bytes(raw)
        else:
            suffix = {"nii.gz:raw": "nii.gz"}.get(kind, kind)
            target = folder / f"fuzz.{suffix}"
            target.write_bytes(raw)
        outcomes[f"{kind}:{check_read(target)}"] += 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
