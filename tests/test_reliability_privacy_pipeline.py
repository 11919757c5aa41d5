"""No identifier from input DICOM reaches any byte the whole pipeline writes or prints.

DICOM phantoms stuffed with fake identifiers (see test_reliability_privacy.py) go through every command in
real subprocesses: preprocess → train (tiny preset, 2 + 2 steps, previews on) → export → sample (NIfTI and
DICOM) → evaluate --train --report. Then every file of the model folder (card, safetensors headers,
checkpoint JSON, preview PNG text chunks, ONNX graphs), of the sample outputs (.nii.gz decompressed, DICOM
files, manifests), of the evaluation report (JSON, HTML, PNG), and every stdout/stderr are searched for each
name, ID, date and UID.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

from meddiff_cli.io import write_dicom_series
from tests.badinputs import seed_volume
from tests.test_reliability_privacy import leaks, stuff_identifiers

TRAIN_SETTINGS = ["--set", "train.adv_warmup_steps=1", "--set", "train.adv_ramp_steps=1", "--set",
                  "train.val_every=100"]


def test_whole_pipeline_outputs_hold_no_input_identifiers(tmp_path, isolated_cache):
    scans = tmp_path / "input_a"
    secrets: list[str] = []
    for n in range(4):
        folder = write_dicom_series(seed_volume(seed=n), scans / f"series{n}", synthetic=False)
        secrets += stuff_identifiers(folder, n)
    assert leaks(b"".join(p.read_bytes() for p in scans.rglob("*.dcm")), secrets)  # the test can fail

    printed: dict[str, bytes] = {}

    def meddiff(*args: object) -> None:
        done = subprocess.run([sys.executable, "-m", "meddiff_cli", *map(str, args)], capture_output=True,
                              env={**os.environ, "MEDDIFF_HOME": str(isolated_cache)}, timeout=300)
        assert done.returncode == 0, done.stderr.decode()
        printed[f"{args[0]} {len(printed)} stdout"], printed[f"{args[0]} {len(printed)} stderr"] = done.stdout, done.stderr

    prep, model = tmp_path / "prep", isolated_cache / "models" / "priv"
    meddiff("preprocess", scans, "--out", prep, "--modality", "ct", "--size", "16", "--spacing", "3", "--json", "-v")
    meddiff("train", prep, "--name", "priv", "--preset", "tiny", "--ae-steps", "2", "--diffusion-steps", "2",
            "--batch-size", "1", "--device", "cpu", "--workers", "0", "--preview-every", "1", "--checkpoint-every", "1",
            "--json", *TRAIN_SETTINGS)
    meddiff("export", "priv", "--json")
    synth_nifti, synth_dicom, report = tmp_path / "synth_nifti", tmp_path / "synth_dicom", tmp_path / "report"
    for out, file_format in ((synth_nifti, "nifti"), (synth_dicom, "dicom")):
        meddiff("sample", "--model", "priv", "--modality", "ct", "--count", "2", "--steps", "2", "--device", "cpu",
                "--format", file_format, "--out", out, "--preview", "--json", "-v")
    meddiff("evaluate", prep, synth_nifti, "--train", prep, "--modality", "ct", "--size", "16", "--bootstrap", "0",
            "--report", report, "--json")

    searched = dict(printed)
    for root in (prep, model, synth_nifti, synth_dicom, report):
        for path in root.rglob("*"):
            if path.is_file():
                searched[str(path)] = data = path.read_bytes()
                if path.name.endswith(".gz"):
                    searched[f"{path} (decompressed)"] = gzip.decompress(data)
    kinds = {Path(name).suffix for name in searched}
    assert {".json", ".safetensors", ".onnx", ".png", ".dcm", ".html", ".gz"} <= kinds, kinds
    assert any("/checkpoint/" in name for name in searched)  # the training state was searched too
    found = {name: leaks(data, secrets) for name, data in searched.items()}
    assert {name: hits for name, hits in found.items() if hits} == {}
    print(f"\nprivacy: {len(secrets)} identifiers x {len(searched)} outputs/streams searched, none found")
