"""Regression tests for reader bugs the bad-input corpus and the fuzzer found (one test per bug)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from meddiff_cli.errors import BadInputError
from meddiff_cli.io import discover_cases, read_case, read_volume, write_dicom_series, write_itk, write_nifti
from tests.badinputs import _set_nifti_field, seed_volume


def test_metaimage_bad_ndims_is_refused_not_a_segfault(tmp_path):
    """ITK's MetaIO crashed the process (SIGSEGV / heap corruption) on NDims = -1 or 99."""
    path = write_itk(seed_volume(), tmp_path / "scan.mha")
    raw = path.read_bytes()
    for value in (b"-1", b"99", b"0"):
        path.write_bytes(raw.replace(b"NDims = 3", b"NDims = " + value))
        probe = subprocess.run(  # a separate process: a regression would kill pytest itself
            [sys.executable, "-c", "import sys\nfrom meddiff_cli.io import read_volume\nfrom meddiff_cli.errors import "
             "BadInputError\ntry:\n    read_volume(sys.argv[1])\nexcept BadInputError as e:\n    print(e)",
             str(path)], capture_output=True, text=True, timeout=120,
        )
        assert probe.returncode == 0, probe.stderr
        assert f"NDims = {value.decode()}, expected 1 to 4" in probe.stdout


@pytest.mark.parametrize("field,value,message", [
    ("qoffset_x", float("nan"), "NaN or infinite"),
    ("srow_x", [float("inf"), 0.0, 0.0, 0.0], "NaN or infinite"),
    ("srow_x", [0.0, 0.0, 0.0, 0.0], "degenerate geometry"),
    ("dim", [3, 16, 0, 10, 1, 1, 1, 1], "empty volume"),
])
def test_nifti_geometry_and_shape_are_validated(tmp_path, capfd, field, value, message):
    """Before: NaN/singular affines and 0-sized volumes came back as 'valid' Volumes."""
    raw = bytearray(write_nifti(seed_volume(), tmp_path / "scan.nii").read_bytes())
    if field.startswith("q"):
        _set_nifti_field(raw, "sform_code", 0)  # make nibabel build the affine from the qform
    _set_nifti_field(raw, field, value)
    (tmp_path / "scan.nii").write_bytes(bytes(raw))
    with pytest.raises(BadInputError, match=message):
        read_volume(tmp_path / "scan.nii")
    assert capfd.readouterr().err == ""  # nibabel's header-repair log lines no longer reach stderr


def test_truncated_metaimage_message_and_quiet_stderr(tmp_path, capfd):
    """Before: 'Reason: No such file or directory' (a stale errno), plus MetaIO lines on stderr."""
    path = write_itk(seed_volume(), tmp_path / "scan.mha")
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(BadInputError, match="truncated or corrupt pixel data"):
        read_volume(path)
    assert capfd.readouterr().err == ""


def test_dicom_malformed_elements_are_bad_input(tmp_path):
    """Before: NotImplementedError (unknown VR, parsed lazily) and ValueError (not a transfer syntax) escaped."""
    folder = write_dicom_series(seed_volume(), tmp_path / "series")
    path = sorted(folder.iterdir())[0]
    raw = path.read_bytes()
    sop_class = raw.find(b"\x08\x00\x16\x00UI")
    broken_vr = raw[:sop_class + 4] + b"TI" + raw[sop_class + 6:]
    (tmp_path / "vr.dcm").write_bytes(broken_vr)
    with pytest.raises(BadInputError, match="malformed DICOM header"):
        read_volume(tmp_path / "vr.dcm")
    syntax = raw.find(b"1.2.840.10008.1.2.1")  # Explicit VR Little Endian -> a UID that is no transfer syntax
    (tmp_path / "ts.dcm").write_bytes(raw[:syntax] + b"1.2.840.10008.5.1.4" + raw[syntax + 19:])
    with pytest.raises(BadInputError):
        read_volume(tmp_path / "ts.dcm")


def test_dicom_case_source_is_the_series_folder(tmp_path):
    """Before: every series found under an input folder was reported as that top folder."""
    write_dicom_series(seed_volume(), tmp_path / "inputs" / "deep" / "a")
    write_dicom_series(seed_volume(seed=1), tmp_path / "inputs" / "b")
    cases = discover_cases([tmp_path / "inputs"])
    assert sorted(case.path for case in cases) == [tmp_path / "inputs" / "b", tmp_path / "inputs" / "deep" / "a"]
    expected = {tmp_path / "inputs" / "deep" / "a": seed_volume().array, tmp_path / "inputs" / "b": seed_volume(seed=1).array}
    for case in cases:
        np.testing.assert_allclose(read_case(case).array, expected[case.path])
