"""No identifier from input DICOM reaches any preprocess output byte, log line or error report.

DICOM phantoms are stuffed with fake identifiers (names, IDs, dates, institution, accession and the
original study/series/instance/frame UIDs); `meddiff preprocess` runs on them in a subprocess (with
its progress messages on, and with one deliberately broken series so errors.json is written too),
then every output file, the decompressed images, stdout and stderr are searched for each one.

Paths are user-chosen and the manifest records each case's source path by design, so the input
folders here have neutral names; put no patient names in folder names you preprocess.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from meddiff_cli.errors import ExitCode
from meddiff_cli.io import write_dicom_series
from tests.badinputs import seed_volume

IDENTIFIERS = {
    "PatientName": "Doe^Jane^SECRET",
    "PatientID": "PID-SECRET-123",
    "PatientBirthDate": "19450317",
    "StudyDate": "20190704",
    "SeriesDate": "20190705",
    "AcquisitionDate": "20190706",
    "ContentDate": "20190707",
    "StudyTime": "142536.123",
    "AccessionNumber": "ACC-SECRET-987",
    "InstitutionName": "Saint Secret General Hospital",
    "InstitutionAddress": "1 Hidden Lane, Secretville",
    "ReferringPhysicianName": "House^Gregory^SECRET",
    "StudyID": "STUDY-SECRET-55",
    "OtherPatientIDs": "OPID-SECRET-77",
}
UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def stuff_identifiers(folder: Path, seed: int) -> list[str]:
    """Overwrite identifying tags in every slice; return every value a leak would show (UIDs included)."""
    study, series, frame = (generate_uid(entropy_srcs=[f"{tag}-{seed}"]) for tag in UID_TAGS)
    secrets = [*IDENTIFIERS.values(), study, series, frame]
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        for tag, value in IDENTIFIERS.items():
            setattr(ds, tag, value)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path), str(seed)])
        secrets.append(str(ds.SOPInstanceUID))
        ds.save_as(path, enforce_file_format=True)
    return secrets


def leaks(data: bytes, secrets: list[str]) -> list[str]:
    """Each secret found in ``data``, as raw text, its parts (name components, date digits), or ISO date."""
    found = []
    for secret in secrets:
        needles = {secret, *(part for part in secret.split("^") if len(part) > 3)}
        if secret.isdigit() and len(secret) == 8:
            needles.add(f"{secret[:4]}-{secret[4:6]}-{secret[6:]}")
        found.extend(needle for needle in needles if needle.encode() in data)
    return found


def test_preprocess_outputs_hold_no_input_identifiers(tmp_path):
    scans = tmp_path / "input_a"
    secrets: list[str] = []
    for n in range(2):
        folder = write_dicom_series(seed_volume(seed=n), scans / f"series{n}", synthetic=False)
        secrets += stuff_identifiers(folder, n)
    broken = write_dicom_series(seed_volume(seed=9), scans / "series_broken", synthetic=False)
    secrets += stuff_identifiers(broken, 9)
    sorted(broken.iterdir())[4].unlink()  # a gap: this case fails and lands in errors.json
    # The identifiers really are in the inputs (else this test could not fail).
    assert leaks(b"".join(p.read_bytes() for p in scans.rglob("*.dcm")), secrets)

    out = tmp_path / "prep"
    run = subprocess.run(
        [sys.executable, "-m", "meddiff_cli", "preprocess", str(scans), "--out", str(out),
         "--modality", "ct", "--size", "16", "--spacing", "3", "--json"],
        capture_output=True, timeout=180,
    )
    assert run.returncode == ExitCode.PARTIAL, run.stderr.decode()
    summary = json.loads(run.stdout)
    assert (summary["done"], summary["failed"]) == (2, 1)
    assert (out / "errors.json").is_file() and len(list((out / "images").iterdir())) == 2

    searched = {"stdout": run.stdout, "stderr": run.stderr}
    for path in out.rglob("*"):
        if path.is_file():
            searched[str(path)] = path.read_bytes()
            if path.name.endswith(".gz"):
                searched[f"{path} (decompressed)"] = gzip.decompress(path.read_bytes())
    assert any(name.endswith("manifest.json") for name in searched)
    found = {name: leaks(data, secrets) for name, data in searched.items()}
    assert {name: hits for name, hits in found.items() if hits} == {}
