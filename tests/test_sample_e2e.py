"""End to end: `meddiff train` (tiny, a few steps) → `meddiff export` → `meddiff sample` with both backends."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from meddiff_cli.model.card import ModelCard
from meddiff_cli.train import TrainOptions, train_model

sys.path.insert(0, str(Path(__file__).parent))
from train_support import make_data  # noqa: E402

FAST = {"train.val_every": 1000, "train.preview_every": 1000, "train.checkpoint_every": 1000,
        "train.adv_warmup_steps": 2, "train.adv_ramp_steps": 2, "train.warmup_steps": 1}


def test_trained_model_exports_and_samples(tmp_path, run_meddiff):
    ct = make_data(tmp_path / "ct", "ct", cases=3, size=16)
    mri = make_data(tmp_path / "mri", "mri", cases=2, size=16, seed=5)
    cache = Path(os.environ["MEDDIFF_HOME"])
    result = train_model(TrainOptions(data=[ct, mri], name="e2e", preset="tiny", device="cpu", workers=0,
                                      cache_dir=cache, ae_steps=3, diffusion_steps=3, overrides=dict(FAST)))
    card = ModelCard.load(result.folder)

    code, stdout, err = run_meddiff("export", "e2e", "--json", "-q")
    assert code == 0, err
    assert all(error < 1e-3 for error in json.loads(stdout)["relative_error"].values())

    outputs = {}
    for backend in ("onnx", "torch"):
        out = tmp_path / backend
        code, stdout, err = run_meddiff("sample", "--modality", "ct", "--model", "e2e", "--count", "2", "--out", out,
                                        "--steps", "3", "--backend", backend, "--precision", "fp32", "--device", "cpu",
                                        "--json", "-q")
        assert code == 0, err
        assert json.loads(stdout)["generated"] == 2
        outputs[backend] = [nib.load(str(out / f"synth_ct_{i:04d}.nii.gz")) for i in range(2)]
    for onnx_image, torch_image in zip(outputs["onnx"], outputs["torch"]):
        data = np.asarray(onnx_image.dataobj)
        assert data.dtype == np.int16 and data.shape == tuple(card.volume["shape"])
        assert np.allclose(onnx_image.header.get_zooms(), card.volume["spacing"])
        low, high = card.intensity["ct"]["window"]
        assert low <= data.min() and data.max() <= high
        assert np.abs(data.astype(np.int32) - np.asarray(torch_image.dataobj).astype(np.int32)).max() <= 1
