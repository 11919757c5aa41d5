"""Image + label pairs (issue 17): the label table, the label decoder stage, `sample --with-labels`, evaluation."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from meddiff_cli.fsutil import sha256_file
from meddiff_cli.io import Volume, write_nifti
from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.labels import LABEL_DECODER_FILE, label_layout, modality_labels
from meddiff_cli.model.networks import build_label_decoder
from meddiff_cli.model.store import load_label_map, save_state_dict
from meddiff_cli.phantom.generate import LABELS, generate_phantom
from tests.train_support import make_data

CT_TABLE = {"background": 0, "lungs": 1, "heart": 2, "bone": 3}
MRI_TABLE = {"csf": 1, "gm": 2, "wm": 3}  # no background entry: the layout adds it


def add_random_label_decoder(folder, seed: int = 1) -> ModelCard:
    card = ModelCard.load(folder)
    card.labels = label_layout({"ct": CT_TABLE, "mri": MRI_TABLE})
    torch.manual_seed(seed)
    decoder = build_label_decoder(card)
    with torch.no_grad():
        for parameter in decoder.parameters():
            torch.nn.init.normal_(parameter, std=0.05)
    card.files[LABEL_DECODER_FILE] = save_state_dict(decoder, folder / LABEL_DECODER_FILE)
    card.save(folder)
    return card


def make_labelled_data(folder, cases: int = 4, seed: int = 3):
    """A preprocess-style folder of 32^3 CT phantoms with their label maps and the manifest's label table."""
    make_data(folder, "ct", cases=cases, size=32, seed=seed, phantoms=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "labels").mkdir()
    for index, entry in enumerate(manifest["cases"]):
        labels = generate_phantom("ct", seed * 1000 + index, size=32)[1].array
        labels[labels > 3] = 0  # keep this table small: nodules and great vessels become background
        relative = f"labels/{entry['case_id']}.nii.gz"
        write_nifti(Volume(labels, np.diag([2.0, 2.0, 2.0, 1.0]), "ct"), folder / relative, dtype="uint8")
        entry.update(label=relative, label_sha256=sha256_file(folder / relative))
    manifest["labels"] = CT_TABLE
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_layout_gives_each_modality_its_own_channels_with_background_first():
    layout = label_layout({"ct": {"lungs": 1, "background": 0, "bone": 3}, "mri": MRI_TABLE})
    assert layout["channels"] == 7
    assert layout["modalities"]["ct"] == {"values": [0, 1, 3], "names": ["background", "lungs", "bone"], "channels": [0, 1, 2]}
    assert layout["modalities"]["mri"]["channels"] == [3, 4, 5, 6]
    assert layout["modalities"]["mri"]["names"][0] == "background"
    with pytest.raises(Exception, match="no label decoder"):
        modality_labels({}, "ct", "m")
    with pytest.raises(Exception, match="no label maps for 'mri'"):
        modality_labels(label_layout({"ct": CT_TABLE}), "mri", "m")


def test_label_map_only_gives_the_requested_modalitys_values(tiny_model):
    card = add_random_label_decoder(tiny_model)
    label_map = load_label_map(tiny_model, card, ["ct", "mri"])
    latent = torch.randn(4, 4, 8, 8, 8)
    ct = label_map(latent, torch.zeros(4, dtype=torch.int64))
    mri = label_map(latent, torch.ones(4, dtype=torch.int64))
    assert ct.shape == (4, 32, 32, 32)
    assert set(ct.unique().tolist()) <= {0, 1, 2, 3} and len(ct.unique()) > 1
    assert set(mri.unique().tolist()) <= {0, 1, 2, 3} and len(mri.unique()) > 1
    # Same latent, other modality: other channels decide, so the maps differ.
    assert not torch.equal(ct, mri)
    # The mask is real: unmasked, the argmax over all channels would pick MRI channels for some CT voxels.
    logits = label_map.label_decoder(latent / label_map.scale + label_map.shift)
    assert (logits.argmax(1) >= 4).any()


def _trainable_tiny(tiny_model) -> None:
    card = ModelCard.load(tiny_model)
    card.training = {"steps": {"autoencoder": 1, "diffusion": 1}, "seed": 0}
    card.save(tiny_model)


def test_label_stage_learns_and_writes_a_verified_decoder(tiny_model, tmp_path, run_meddiff):
    from meddiff_cli.train.labels import train_label_decoder
    from meddiff_cli.train.options import Reporter, TrainOptions

    _trainable_tiny(tiny_model)
    data = make_labelled_data(tmp_path / "data", cases=5)
    losses: list[float] = []

    class Record(Reporter):
        def step_done(self, stage, step, total_steps, values):
            losses.append(values["dice_ce"])

    options = TrainOptions(data=[data], name="tiny", stage="labels", steps=40, device="cpu",
                           overrides={"labels.lr": 3e-3, "labels.warmup_steps": 2, "labels.val_every": 1000})
    result = train_label_decoder(options, Record())
    assert len(losses) == 40 and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    card = ModelCard.load(tiny_model)
    assert card.labels["modalities"]["ct"]["names"] == ["background", "lungs", "heart", "bone"]
    assert "mri" not in card.labels["modalities"]  # no MRI data with labels was given
    assert card.files[LABEL_DECODER_FILE] == sha256_file(tiny_model / LABEL_DECODER_FILE)
    assert card.training["steps"]["labels"] == 40 and result.steps_run == {"labels": 40}
    assert set(card.metrics["labels"]["ct"]["dice"]) <= {"lungs", "heart", "bone"}
    assert not (tiny_model / "checkpoint_labels").exists()
    # A second run without --resume is refused (exit 2); data without label maps is bad input (exit 4).
    code, _, err = run_meddiff("train", data, "--name", "tiny", "--stage", "labels", "--steps", "1")
    assert code == 2 and "already has a label decoder" in err
    unlabelled = make_data(tmp_path / "plain", "ct", cases=2, size=32)
    shutil.rmtree(tiny_model / "checkpoint_labels", ignore_errors=True)
    card.labels = {}
    card.save(tiny_model)
    code, _, err = run_meddiff("train", unlabelled, "--name", "tiny", "--stage", "labels", "--steps", "1")
    assert code == 4 and "no label maps" in err


def test_label_stage_resumes_where_it_was_interrupted(tiny_model, tmp_path):
    from meddiff_cli.train.labels import train_label_decoder
    from meddiff_cli.train.options import Reporter, TrainOptions

    _trainable_tiny(tiny_model)
    straight = shutil.copytree(tiny_model, tiny_model.parent / "straight")
    data = make_labelled_data(tmp_path / "data", cases=3)
    settings = {"labels.checkpoint_every": 3, "labels.val_every": 1000}

    class StopAt(Reporter):
        def step_done(self, stage, step, total_steps, values):
            if step == 4:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_label_decoder(TrainOptions(data=[data], name="tiny", stage="labels", steps=6, device="cpu",
                                         overrides=settings), StopAt())
    state = json.loads((tiny_model / "checkpoint_labels" / "state.json").read_text())
    assert state["step"] == 4 and not ModelCard.load(tiny_model).labels
    resumed = train_label_decoder(TrainOptions(data=[data], name="tiny", stage="labels", device="cpu",
                                               overrides=settings, resume=True))
    assert resumed.steps_run == {"labels": 2} and ModelCard.load(tiny_model).training["steps"]["labels"] == 6
    # The resumed run repeats an uninterrupted one: same weights, optimiser moments and draws, same bytes.
    train_label_decoder(TrainOptions(data=[data], name="straight", stage="labels", steps=6, device="cpu",
                                     overrides=settings))
    assert sha256_file(straight / LABEL_DECODER_FILE) == sha256_file(tiny_model / LABEL_DECODER_FILE)


def test_label_stage_refuses_bad_settings_and_data_of_another_grid(tiny_model, tmp_path, run_meddiff):
    _trainable_tiny(tiny_model)
    data = make_labelled_data(tmp_path / "data", cases=3)
    for setting in ("labels.val_every=0", "labels.checkpoint_every=-1", "labels.val_fraction=1", "labels.lr=abc"):
        code, _, err = run_meddiff("train", data, "--name", "tiny", "--stage", "labels", "--steps", "1", "--set", setting)
        assert code == 2 and setting.split("=")[0] in err and "Traceback" not in err, (setting, err)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["spacing"] = [s * 2 for s in manifest["spacing"]]  # preprocessed at another spacing than the model's
    (data / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_meddiff("train", data, "--name", "tiny", "--stage", "labels", "--steps", "1")
    assert code == 4 and "spacing" in err and "manifest.json" in err
    assert not (tiny_model / "checkpoint_labels").exists() and not ModelCard.load(tiny_model).labels


def test_label_data_check_ignores_the_cards_sampling_calibration_but_not_its_window(tiny_model, tmp_path):
    # A bundled CT model carries an intensity calibration (applied to decoded samples); data preprocessed with the
    # model's window must still be accepted for its label decoder, and data of another window refused.
    from meddiff_cli.errors import BadInputError
    from meddiff_cli.train.data import check_grid

    manifest = json.loads((make_labelled_data(tmp_path / "data", cases=2) / "manifest.json").read_text())
    card = ModelCard.load(tiny_model)
    card.intensity["ct"]["calibration"] = {"decoded": [-1.0, 0.0, 1.0], "real": [-1.0, 0.1, 1.0]}
    check_grid(manifest, card, "ct", tmp_path / "data")
    manifest["intensity"] = {**manifest["intensity"], "window": [-500.0, 500.0]}
    with pytest.raises(BadInputError, match="differs from the model"):
        check_grid(manifest, card, "ct", tmp_path / "data")


def test_sample_with_labels_writes_pairs_on_one_grid_and_resumes(tiny_model, tmp_path, run_meddiff):
    add_random_label_decoder(tiny_model)
    out = tmp_path / "synth"
    args = ["sample", "--model", "tiny", "--modality", "ct", "--count", "3", "--steps", "2", "--out", out,
            "--backend", "torch", "--with-labels", "-q"]
    code, _, err = run_meddiff(*args)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["with_labels"] is True and manifest["labels"] == {"background": 0, "lungs": 1, "heart": 2, "bone": 3}
    for entry in manifest["files"]:
        image, label = nib.load(out / entry["file"]), nib.load(out / entry["label"])
        assert entry["label"] == f"labels/{entry['file']}"
        assert label.shape == image.shape and np.allclose(label.affine, image.affine)
        assert label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2, 3}
        assert entry["label_sha256"] == sha256_file(out / entry["label"])
        assert b"synthetic" in label.header["descrip"].tobytes()
    # Resume: all done; a lost label map is regenerated with its image, bit for bit.
    lost = out / manifest["files"][1]["label"]
    before = lost.read_bytes()
    lost.unlink()
    code, _, err = run_meddiff(*args, "--json")
    assert code == 0, err
    assert lost.read_bytes() == before
    # The run key includes --with-labels: the same folder without it is another run.
    code, _, err = run_meddiff(*[a for a in args if a != "--with-labels"])
    assert code == 2 and "with_labels" in err
    # A label map that this run did not write is never replaced without --overwrite.
    stranger = out / "labels" / "synth_ct_0003.nii.gz"
    stranger.write_bytes(b"user data")
    code, _, err = run_meddiff(*[("4" if a == "3" else a) for a in args])
    assert code == 2 and stranger.read_bytes() == b"user data"


def test_sample_with_labels_needs_a_label_decoder(tiny_model, tmp_path, run_meddiff):
    code, _, err = run_meddiff("sample", "--model", "tiny", "--modality", "ct", "--count", "1", "--steps", "1",
                               "--out", tmp_path / "o", "--with-labels")
    assert code == 6 and "no label decoder" in err and "--stage labels" in err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_sample_with_labels_as_dicom_writes_a_seg_per_series(tiny_model, tmp_path, run_meddiff):
    import highdicom as hd

    add_random_label_decoder(tiny_model)
    out = tmp_path / "dicom"
    code, _, err = run_meddiff("sample", "--model", "tiny", "--modality", "mri", "--count", "1", "--steps", "1",
                               "--out", out, "--backend", "torch", "--format", "dicom", "--with-labels", "-q")
    assert code == 0, err
    entry = json.loads((out / "manifest.json").read_text())["files"][0]
    assert entry["label"] == "labels/synth_mri_0000.dcm"
    seg = hd.seg.segread(out / entry["label"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["csf", "gm", "wm"]
    series = {f.name for f in (out / entry["file"]).iterdir()}
    assert len(series) == 32
    import pydicom

    uid = pydicom.dcmread(next((out / entry["file"]).iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid


def test_evaluate_reads_sample_pairs_and_scores_label_agreement(tmp_path):
    from meddiff_cli.evaluate.anatomy import label_agreement
    from meddiff_cli.evaluate.loading import list_cases
    from meddiff_cli.evaluate.segmenter import Segmenter

    out = tmp_path / "synth"
    (out / "labels").mkdir(parents=True)
    files = []
    for index in range(2):
        image, labels = generate_phantom("ct", index, size=16)
        write_nifti(image, out / f"synth_ct_{index:04d}.nii.gz", dtype="int16")
        write_nifti(labels, out / "labels" / f"synth_ct_{index:04d}.nii.gz", dtype="uint8")
        files.append({"file": f"synth_ct_{index:04d}.nii.gz", "label": f"labels/synth_ct_{index:04d}.nii.gz"})
    (out / "manifest.json").write_text(json.dumps({"format": "meddiff-synthetic", "files": files, "labels": LABELS["ct"]}))
    refs = list_cases(out, "SYNTH")
    assert [r.name for r in refs] == ["synth_ct_0000.nii.gz", "synth_ct_0001.nii.gz"]  # labels/ is not a volume
    assert all(r.label is not None and r.label.parent.name == "labels" for r in refs)

    labels = np.stack([generate_phantom("ct", i, size=16)[1].array for i in range(2)])
    names = {value: name for name, value in LABELS["ct"].items()}
    segmenter = Segmenter(lambda x: x, ["lungs", "heart", "bone"], {"validation_dice": {"lungs": 0.9}})
    as_classes = np.where(labels == 3, 3, np.where(labels <= 2, labels, 0))  # class index = value for these three
    perfect = label_agreement(as_classes, labels, names, segmenter)
    assert perfect["dice"] == {"lungs": 1.0, "heart": 1.0, "bone": 1.0} and perfect["real_reference_dice"]["lungs"] == 0.9
    swapped = label_agreement(np.where(as_classes == 1, 2, np.where(as_classes == 2, 1, as_classes)), labels, names, segmenter)
    assert swapped["dice"]["lungs"] == 0.0 and swapped["dice"]["bone"] == 1.0
    # Classes are matched by name, not by index = value: a segmenter whose class order is bone, lungs, heart.
    reordered = Segmenter(lambda x: x, ["bone", "lungs", "heart"], {"validation_dice": {}})
    classes = np.select([labels == 3, labels == 1, labels == 2], [1, 2, 3], 0)
    assert label_agreement(classes, labels, names, reordered)["dice"] == {"bone": 1.0, "lungs": 1.0, "heart": 1.0}
    assert perfect["unmatched_names"] == ["great_vessels", "nodules"]
