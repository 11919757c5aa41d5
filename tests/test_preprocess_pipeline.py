"""Running preprocess over a corpus: manifest, resumability, failures, workers, labels, phantom folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from meddiff_cli.errors import BadInputError, InputNotFoundError, UsageError
from meddiff_cli.fsutil import sha256_file
from meddiff_cli.io import Volume, write_dicom_series, write_nifti
from meddiff_cli.preprocess import (
    PreprocessSettings,
    harmonise_volume,
    load_manifest,
    preprocess_cases,
    settings_from_manifest,
)

SETTINGS = PreprocessSettings("ct", spacing=3.0, size=16)


def make_case(seed: int, orientation_flip: bool = False) -> tuple[Volume, Volume]:
    """A small CT-like volume (body, lungs, spine-ish bone) and its label map (1 lung, 2 bone)."""
    rng = np.random.default_rng(seed)
    shape = (28, 24, 20)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    array = np.full(shape, -1000.0, dtype=np.float32)
    body = i**2 + j**2 < 0.8
    array[body] = 40.0
    lung = body & ((np.abs(i) - 0.4) ** 2 + j**2 < 0.12 + 0.02 * seed)
    bone = body & (i**2 + (j + 0.6) ** 2 < 0.03)
    array[lung], array[bone] = -850.0, 700.0
    array += rng.normal(0, 15, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.float32)
    label[lung], label[bone] = 1, 2
    affine = np.diag([1.4, 1.6, 2.5, 1.0])
    affine[:3, 3] = [-20.0 + seed, 10.0, -25.0]
    if orientation_flip:  # stored LPS-like: flip i and j, same world positions
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
        affine = affine @ flip
        array, label = array[::-1, ::-1].copy(), label[::-1, ::-1].copy()
    return Volume(array, affine, "ct"), Volume(label, affine.copy(), "ct")


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "scans", tmp_path / "masks"
    for seed in range(3):
        image, label = make_case(seed, orientation_flip=seed == 1)
        write_nifti(image, images / f"case{seed}.nii.gz")
        write_nifti(label, labels / f"case{seed}.nii.gz", dtype="uint8")
    return images, labels


def read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_manifest_contents_and_checksums(corpus, tmp_path):
    images, labels = corpus
    out = tmp_path / "prep"
    result = preprocess_cases([images], out, SETTINGS, labels_dir=labels)
    assert (result.count("done"), result.count("failed")) == (3, 0)
    manifest = load_manifest(out)
    assert manifest["format"] == "meddiff-preprocess" and manifest["format_version"] == 1
    assert manifest["modality"] == "ct" and manifest["spacing"] == [3.0] * 3 and manifest["size"] == [16] * 3
    assert manifest["orientation"] == "RAS"
    assert manifest["intensity"] == {"kind": "ct_window", "window": [-1000.0, 1000.0], "unit": "HU"}
    assert [case["case_id"] for case in manifest["cases"]] == ["case0", "case1", "case2"]
    for case in manifest["cases"]:
        assert case["source"] == str(images / f"{case['case_id']}.nii.gz")
        assert case["format"] == "nifti" and case["original_shape"] == [28, 24, 20]
        assert case["original_spacing"] == [1.4, 1.6, 2.5]
        assert case["original_orientation"] == ("LPS" if case["case_id"] == "case1" else "RAS")
        assert sha256_file(out / case["image"]) == case["sha256"]
        assert sha256_file(out / case["label"]) == case["label_sha256"]
        image, label = nib.load(str(out / case["image"])), nib.load(str(out / case["label"]))
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape == (16, 16, 16) and np.allclose(image.affine, label.affine)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        data = read(out / case["image"])
        assert data.min() >= -1.0 and data.max() <= 1.0
        assert set(np.unique(read(out / case["label"]))) == {0, 1, 2} == set(case["label_values"])
        # Lungs (label 1) are dark, bone (label 2) bright: labels follow the image geometry.
        lab = read(out / case["label"])
        assert data[lab == 1].mean() < -0.7 and data[lab == 2].mean() > 0.2
    assert not (out / "errors.json").exists()
    # The library function and the saved file agree (evaluate relies on this).
    again = harmonise_volume(make_case(2)[0], settings_from_manifest(manifest))
    assert np.allclose(again.array, read(out / "images/case2.nii.gz"))


def test_reoriented_case_gives_same_output_as_canonical(tmp_path):
    canonical, _ = make_case(5)
    flipped, _ = make_case(5, orientation_flip=True)
    write_nifti(canonical, tmp_path / "in/a.nii.gz")
    write_nifti(flipped, tmp_path / "in/b.nii.gz")
    preprocess_cases([tmp_path / "in"], tmp_path / "out", SETTINGS)
    assert np.array_equal(read(tmp_path / "out/images/a.nii.gz"), read(tmp_path / "out/images/b.nii.gz"))


def test_resume_skips_finished_and_redoes_missing_or_damaged(corpus, tmp_path):
    images, labels = corpus
    out = tmp_path / "prep"
    preprocess_cases([images], out, SETTINGS, labels_dir=labels)
    first = (out / "manifest.json").read_bytes()
    again = preprocess_cases([images], out, SETTINGS, labels_dir=labels)
    assert (again.count("done"), again.count("skipped")) == (0, 3)
    (out / "images/case1.nii.gz").unlink()
    (out / "labels/case2.nii.gz").write_bytes(b"damaged")
    seen = []
    third = preprocess_cases(
        [images], out, SETTINGS, labels_dir=labels, on_case_done=lambda case, n, total: seen.append((case["case_id"], case["status"], total))
    )
    assert sorted(seen) == [("case0", "skipped", 3), ("case1", "done", 3), ("case2", "done", 3)]
    assert (out / "manifest.json").read_bytes() == first  # deterministic outputs: same checksums
    everything = preprocess_cases([images], out, SETTINGS, labels_dir=labels, overwrite=True)
    assert everything.count("done") == 3


def test_changed_settings_need_overwrite(corpus, tmp_path):
    images, _ = corpus
    out = tmp_path / "prep"
    preprocess_cases([images], out, SETTINGS)
    with pytest.raises(UsageError, match="size"):
        preprocess_cases([images], out, PreprocessSettings("ct", spacing=3.0, size=12))
    assert load_manifest(out)["size"] == [16] * 3  # earlier outputs intact
    result = preprocess_cases([images], out, PreprocessSettings("ct", spacing=3.0, size=12), overwrite=True)
    assert result.count("done") == 3 and read(out / "images/case0.nii.gz").shape == (12, 12, 12)


def test_new_cases_are_added_to_an_existing_folder(corpus, tmp_path):
    images, _ = corpus
    out = tmp_path / "prep"
    preprocess_cases([images / "case0.nii.gz"], out, SETTINGS)
    result = preprocess_cases([images / "case1.nii.gz", images / "case2.nii.gz"], out, SETTINGS)
    assert result.count("done") == 2
    assert [case["case_id"] for case in load_manifest(out)["cases"]] == ["case0", "case1", "case2"]


def test_corrupt_input_recorded_and_run_continues(corpus, tmp_path):
    images, _ = corpus
    (images / "broken.nii.gz").write_bytes(b"")
    out = tmp_path / "prep"
    result = preprocess_cases([images], out, SETTINGS)
    assert (result.count("done"), result.count("failed")) == (3, 1)
    errors = json.loads((out / "errors.json").read_text())
    assert len(errors) == 1 and errors[0]["case_id"] == "broken"
    assert errors[0]["source"] == str(images / "broken.nii.gz") and errors[0]["error"]
    assert "\n" not in errors[0]["error"]
    assert [case["case_id"] for case in load_manifest(out)["cases"]] == ["case0", "case1", "case2"]
    # Fixing the input: the next run does only that case and removes errors.json.
    (images / "broken.nii.gz").unlink()
    write_nifti(make_case(7)[0], images / "broken.nii.gz")
    fixed = preprocess_cases([images], out, SETTINGS)
    assert (fixed.count("done"), fixed.count("skipped")) == (1, 3)
    assert not (out / "errors.json").exists()


def test_missing_inputs_and_modality(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError):
        preprocess_cases([tmp_path / "empty"], tmp_path / "out", SETTINGS)
    with pytest.raises(InputNotFoundError):
        preprocess_cases([tmp_path / "nowhere"], tmp_path / "out", SETTINGS)
    write_nifti(make_case(0)[0], tmp_path / "in/a.nii.gz")
    with pytest.raises(UsageError, match="--modality"):
        preprocess_cases([tmp_path / "in"], tmp_path / "out", PreprocessSettings(size=16))


def test_missing_label_for_a_case_fails_that_case(corpus, tmp_path):
    images, labels = corpus
    (labels / "case2.nii.gz").unlink()
    result = preprocess_cases([images], tmp_path / "prep", SETTINGS, labels_dir=labels)
    assert [case["case_id"] for case in result.failed] == ["case2"]
    assert "label" in result.failed[0]["error"]


def test_two_workers_give_identical_outputs(corpus, tmp_path):
    images, labels = corpus
    preprocess_cases([images], tmp_path / "one", SETTINGS, labels_dir=labels, workers=1)
    result = preprocess_cases([images], tmp_path / "two", SETTINGS, labels_dir=labels, workers=2)
    assert result.count("done") == 3
    assert load_manifest(tmp_path / "one")["cases"] == load_manifest(tmp_path / "two")["cases"]


def test_dicom_and_nifti_of_the_same_scan_agree(tmp_path):
    image, _ = make_case(3, orientation_flip=True)
    write_nifti(image, tmp_path / "nifti/scan.nii.gz")
    write_dicom_series(image, tmp_path / "dicom/series", modality="ct")
    # --modality auto: the DICOM header says CT.
    preprocess_cases([tmp_path / "nifti", tmp_path / "dicom"], tmp_path / "out", PreprocessSettings(spacing=3.0, size=16))
    manifest = load_manifest(tmp_path / "out")
    by_format = {case["format"]: read(tmp_path / "out" / case["image"]) for case in manifest["cases"]}
    a, b = by_format["nifti"], by_format["dicom"]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert np.abs(a - b).max() < 0.01  # DICOM stores integer HU: at most rounding differences


def test_dicom_modality_mismatch_is_a_case_failure(tmp_path):
    image, _ = make_case(3)
    write_dicom_series(image.with_array(image.array + 1100.0), tmp_path / "mr", modality="mri")
    result = preprocess_cases([tmp_path / "mr"], tmp_path / "out", SETTINGS)
    assert result.count("failed") == 1 and "mri" in result.failed[0]["error"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update(format="other"), "format"),
        (lambda m: m.update(format_version=99), "format_version"),
        (lambda m: m.pop("cases"), "missing"),
        (lambda m: m["cases"][0].pop("sha256"), "sha256"),
        (lambda m: m["cases"][0].update(image="/etc/passwd"), "inside"),
        (lambda m: m.update(size=[16, 16]), "size"),
    ],
)
def test_load_manifest_validates(corpus, tmp_path, mutate, message):
    images, _ = corpus
    out = tmp_path / "prep"
    preprocess_cases([images / "case0.nii.gz"], out, SETTINGS)
    manifest = json.loads((out / "manifest.json").read_text())
    mutate(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match=message):
        load_manifest(out / "manifest.json")


def test_load_manifest_missing_or_not_json(tmp_path):
    with pytest.raises(InputNotFoundError):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BadInputError, match="unreadable"):
        load_manifest(tmp_path)


def test_phantom_ct_as_dicom_and_nifti_gives_the_same_output(tmp_path):
    """The issue's acceptance check, through `meddiff phantom` folders given as INPUT as they are."""
    from meddiff_cli.phantom import write_phantom_corpus

    write_phantom_corpus("ct", 2, tmp_path / "nifti", size=32, seed=4, fmt="nifti")
    write_phantom_corpus("ct", 2, tmp_path / "dicom", size=32, seed=4, fmt="dicom")
    settings = PreprocessSettings(spacing=8.0, size=40)  # modality auto: from the phantom manifest
    for fmt in ("nifti", "dicom"):
        assert preprocess_cases([tmp_path / fmt], tmp_path / f"out_{fmt}", settings).count("done") == 2
    a_manifest, b_manifest = load_manifest(tmp_path / "out_nifti"), load_manifest(tmp_path / "out_dicom")
    assert a_manifest["labels"] == b_manifest["labels"] == {"background": 0, "lungs": 1, "heart": 2, "bone": 3, "nodules": 4, "great_vessels": 5}
    assert [c["case_id"] for c in a_manifest["cases"]] == [c["case_id"] for c in b_manifest["cases"]]
    assert [c["format"] for c in b_manifest["cases"]] == ["dicom", "dicom"]
    for a_case, b_case in zip(a_manifest["cases"], b_manifest["cases"]):
        a, b = read(tmp_path / "out_nifti" / a_case["image"]), read(tmp_path / "out_dicom" / b_case["image"])
        assert a.shape == b.shape == (40, 40, 40)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
        # Labels come from the phantom's labels/ folder, on the same grid, for both formats.
        a_label, b_label = read(tmp_path / "out_nifti" / a_case["label"]), read(tmp_path / "out_dicom" / b_case["label"])
        assert np.array_equal(a_label, b_label) and set(np.unique(a_label)) <= {0, 1, 2, 3, 4, 5}
        assert a[a_label == 1].mean() < -0.6  # lungs are dark: labels sit on the anatomy


def test_phantom_folder_with_a_missing_image_fails_only_that_case(tmp_path):
    from meddiff_cli.phantom import write_phantom_corpus

    write_phantom_corpus("ct", 2, tmp_path / "phantom", size=24, seed=5)
    case_id = json.loads((tmp_path / "phantom/manifest.json").read_text())["cases"][0]["case_id"]
    (tmp_path / "phantom/images" / f"{case_id}.nii.gz").unlink()
    result = preprocess_cases([tmp_path / "phantom"], tmp_path / "out", PreprocessSettings(spacing=12.0, size=16))
    assert (result.count("done"), [case["case_id"] for case in result.failed]) == (1, [case_id])


def test_mri_phantom_percentile_mapping(tmp_path):
    from meddiff_cli.phantom import generate_phantom

    image, _ = generate_phantom("mri", seed=2, size=32)
    write_nifti(image, tmp_path / "in/brain.nii.gz")
    result = preprocess_cases([tmp_path / "in"], tmp_path / "out", PreprocessSettings("mri", spacing=8.0, size=32))
    assert result.count("done") == 1
    case = load_manifest(tmp_path / "out")["cases"][0]
    v_lo, v_hi = case["intensity"]["values"]
    assert case["intensity"]["kind"] == "percentile" and v_lo < v_hi <= float(image.array.max())
    data = read(tmp_path / "out/images/brain.nii.gz")
    assert data.min() == -1.0 and data.max() == 1.0
    assert data[0, 0, 0] == -1.0  # air in the corner: below the low percentile


def test_case_id_clash_with_another_source_is_refused(corpus, tmp_path, monkeypatch):
    images, _ = corpus
    out = tmp_path / "prep"
    preprocess_cases([images / "case0.nii.gz"], out, SETTINGS)
    monkeypatch.chdir(images)  # the same file spelled differently is the same source: skipped
    assert preprocess_cases([Path("case0.nii.gz")], out, SETTINGS).count("skipped") == 1
    other = tmp_path / "other"
    write_nifti(make_case(9)[0], other / "case0.nii.gz")
    result = preprocess_cases([other], out, SETTINGS)
    assert result.count("failed") == 1 and "--overwrite" in result.failed[0]["error"]
    assert load_manifest(out)["cases"][0]["source"] == str(images / "case0.nii.gz")


def test_interrupted_run_resumes(corpus, tmp_path):
    images, labels = corpus
    out = tmp_path / "prep"

    def stop_after_first(case, finished, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        preprocess_cases([images], out, SETTINGS, labels_dir=labels, on_case_done=stop_after_first)
    assert [case["case_id"] for case in load_manifest(out)["cases"]] == ["case0"]  # valid, holds what finished
    result = preprocess_cases([images], out, SETTINGS, labels_dir=labels)
    assert (result.count("skipped"), result.count("done")) == (1, 2)


def test_case_that_fails_on_redo_leaves_no_lying_entry(corpus, tmp_path):
    images, _ = corpus
    out = tmp_path / "prep"
    preprocess_cases([images], out, SETTINGS)
    (out / "images/case0.nii.gz").unlink()
    (images / "case0.nii.gz").write_bytes(b"\x1f\x8b truncated")
    result = preprocess_cases([images], out, SETTINGS)
    assert [case["case_id"] for case in result.failed] == ["case0"]
    assert [case["case_id"] for case in load_manifest(out)["cases"]] == ["case1", "case2"]


def test_nnunet_style_labels_pair_and_name(tmp_path):
    image, label = make_case(6)
    write_nifti(image, tmp_path / "imagesTr/lung_001_0000.nii.gz")
    write_nifti(label, tmp_path / "labelsTr/lung_001.nii.gz", dtype="uint8")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lung": 1, "bone": 2}}))
    preprocess_cases([tmp_path / "imagesTr"], tmp_path / "out", SETTINGS, labels_dir=tmp_path / "labelsTr")
    manifest = load_manifest(tmp_path / "out")
    assert manifest["labels"] == {"background": 0, "lung": 1, "bone": 2}
    assert manifest["cases"][0]["label"] == "labels/lung_001_0000.nii.gz"
