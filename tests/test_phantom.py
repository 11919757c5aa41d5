"""The procedural phantoms: determinism, tissue values per label, proportions, variation, geometry."""

from __future__ import annotations

import numpy as np
import pytest

from meddiff_cli.errors import UsageError
from meddiff_cli.phantom import LABELS, generate_phantom
from meddiff_cli.phantom.shapes import Tubes, block_labels, block_mean, correlated_noise, ellipsoid_sdf, soft

CT, MRI = LABELS["ct"], LABELS["mri"]


@pytest.fixture(scope="module")
def ct48():
    image, labels = generate_phantom("ct", seed=3, size=48)
    return image, labels.array


def test_labels_are_published():
    assert CT == {"background": 0, "lungs": 1, "heart": 2, "bone": 3, "nodules": 4, "great_vessels": 5}
    assert MRI == {"background": 0, "csf": 1, "gm": 2, "wm": 3}


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_same_seed_same_arrays_other_seed_differs(modality):
    a_img, a_lab = generate_phantom(modality, seed=11, size=32)
    b_img, b_lab = generate_phantom(modality, seed=11, size=32)
    c_img, c_lab = generate_phantom(modality, seed=12, size=32)
    assert np.array_equal(a_img.array, b_img.array) and np.array_equal(a_lab.array, b_lab.array)
    assert not np.array_equal(a_img.array, c_img.array)
    assert not np.array_equal(a_lab.array, c_lab.array)  # the anatomy differs, not only the noise
    assert a_img.array.dtype == np.float32 and a_lab.array.dtype == np.uint8
    assert a_img.modality == modality and a_img.metadata["phantom"] and a_img.metadata["synthetic"]


def test_ct_hounsfield_values_per_label(ct48):
    image, labels = ct48
    hu = image.array
    assert -900 <= np.median(hu[labels == CT["lungs"]]) <= -750
    assert 0 <= np.median(hu[labels == CT["heart"]]) <= 80
    assert np.median(hu[labels == CT["bone"]]) > 200
    assert hu.min() >= -1024 and hu.max() <= 3071
    # air in front of the chest (top rows of every slice, far from the body): -1000 HU plus noise
    air = hu[:, -4:, :]
    assert abs(np.median(air) + 1000) < 15
    assert 3 < air[air > -1024].std() < 40  # correlated noise, clipped at -1024 like a scanner


def test_ct_noise_is_spatially_correlated(ct48):
    image, _ = ct48
    air = image.array[8:40, -5:, 8:40].astype(np.float64)
    air = air - air.mean()
    neighbour = np.mean(air[1:] * air[:-1]) / np.mean(air * air)
    assert 0.2 < neighbour < 0.95  # white noise would give ~0; a blur of the whole image ~1


def test_ct_label_fractions_are_anatomical(ct48):
    _, labels = ct48
    fraction = np.bincount(labels.ravel(), minlength=5) / labels.size
    # A 380 mm cube is ~55 L; adult lungs hold ~3-6 L, a heart ~0.3-0.6 L.
    assert 0.04 < fraction[CT["lungs"]] < 0.2
    assert 0.002 < fraction[CT["heart"]] < 0.02
    assert 0.002 < fraction[CT["bone"]] < 0.04
    assert fraction[CT["background"]] > 0.7


def test_ct_anatomy_is_placed_like_a_chest(ct48):
    image, labels = ct48
    ii, jj, kk = np.indices(labels.shape)
    world = lambda mask: (image.affine @ np.array([ii[mask].mean(), jj[mask].mean(), kk[mask].mean(), 1.0]))[:3]  # noqa: E731
    lungs = labels == CT["lungs"]
    heart, bone = world(labels == CT["heart"]), world(labels == CT["bone"])
    right, left = world(lungs & (ii > 24)), world(lungs & (ii < 24))
    assert right[0] > 40 and left[0] < -40  # two lungs, one per side (RAS+: +x is the patient's right)
    assert heart[0] < 0  # the heart leans to the patient's left
    assert world(lungs)[2] > heart[2]  # the lungs extend above the heart
    hu = image.array
    assert np.median(hu[:, :6, :]) < -900  # behind the table: air
    table_rows = [np.median(hu[:, j, :]) for j in range(4, 16)]
    assert max(table_rows) > -700  # a dense table plate crosses the field under the back


def test_nodules_option():
    with_nodules, labels = generate_phantom("ct", seed=5, size=32, nodules=True)
    without, labels_off = generate_phantom("ct", seed=5, size=32, nodules=False)
    assert with_nodules.metadata["nodule_count"] >= 1 and without.metadata["nodule_count"] == 0
    assert not (labels_off.array == CT["nodules"]).any()
    hi_res, hi_labels = generate_phantom("ct", seed=2, size=64, nodules=True)
    nodule = hi_labels.array == CT["nodules"]
    assert nodule.any() and np.max(hi_res.array[nodule]) > -150  # a solid centre in a -850 HU lung
    assert np.median(hi_res.array[nodule]) > np.median(hi_res.array[hi_labels.array == CT["lungs"]]) + 300


def test_subjects_vary():
    lung_volumes, heart_volumes = [], []
    for seed in range(6):
        _, labels = generate_phantom("ct", seed=seed, size=32)
        lung_volumes.append((labels.array == CT["lungs"]).sum())
        heart_volumes.append((labels.array == CT["heart"]).sum())
    assert np.std(lung_volumes) / np.mean(lung_volumes) > 0.03
    assert np.std(heart_volumes) / np.mean(heart_volumes) > 0.03


def test_anatomy_does_not_depend_on_grid_size():
    """A seed is one patient in millimetres: lung volume agrees between grids."""
    volumes = []
    for size in (32, 48):
        image, labels = generate_phantom("ct", seed=2, size=size)
        volumes.append((labels.array == CT["lungs"]).sum() * np.prod(image.spacing))
    assert abs(volumes[0] - volumes[1]) / volumes[1] < 0.15


def test_geometry_default_and_explicit():
    image, labels = generate_phantom("ct", seed=0, size=32)
    assert image.shape == (32, 32, 32) and np.allclose(image.spacing, 380 / 32)
    assert np.allclose(labels.affine, image.affine)
    assert np.allclose(image.world_corners().mean(axis=0), 0.0)  # centred on the origin
    assert np.allclose(image.direction, np.eye(3))  # axial slices, RAS+
    mri, _ = generate_phantom("mri", seed=0, size=32)
    assert np.allclose(mri.spacing, 220 / 32)
    custom, custom_labels = generate_phantom("mri", seed=0, size=(24, 32, 20), spacing=(7.0, 6.0, 8.0))
    assert custom.shape == (24, 32, 20) and custom_labels.shape == (24, 32, 20)
    assert np.allclose(custom.spacing, (7.0, 6.0, 8.0))
    corners = custom.world_corners()
    assert np.allclose(corners.max(axis=0) - corners.min(axis=0), [23 * 7.0, 31 * 6.0, 19 * 8.0])


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_mri_tissue_ordering(contrast):
    image, labels = generate_phantom("mri", seed=4, size=40, contrast=contrast)
    median = {name: np.median(image.array[labels.array == value]) for name, value in MRI.items() if value}
    if contrast == "t1":
        assert median["wm"] > median["gm"] > median["csf"]
    else:
        assert median["csf"] > median["gm"] > median["wm"]
    assert image.metadata["contrast"] == contrast
    fraction = np.bincount(labels.array.ravel(), minlength=4) / labels.array.size
    assert 0.03 < fraction[MRI["gm"]] < 0.2 and 0.03 < fraction[MRI["wm"]] < 0.2 and fraction[MRI["csf"]] > 0.005
    assert 0.5 < fraction[MRI["gm"]] / fraction[MRI["wm"]] < 2.0


def test_mri_noise_is_rician_and_field_is_biased():
    image, labels = generate_phantom("mri", seed=6, size=40)
    array = image.array
    assert array.min() >= 0  # magnitude images are never negative
    background = array[:, :, -3:]  # above the head: pure noise
    assert 0 < np.median(background) < 0.1 * np.median(array[labels.array == MRI["wm"]])
    wm = labels.array == MRI["wm"]
    ii = np.indices(array.shape)[0]
    halves = np.median(array[wm & (ii < 20)]), np.median(array[wm & (ii >= 20)])
    assert halves[0] != pytest.approx(halves[1], rel=0.005)  # a smooth bias field, different per side


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError):
        generate_phantom("pet", seed=0, size=32)
    with pytest.raises(UsageError):
        generate_phantom("mri", seed=0, size=32, contrast="flair")
    with pytest.raises(UsageError):
        generate_phantom("ct", seed=0, size=4)
    with pytest.raises(UsageError):
        generate_phantom("ct", seed=0, size=32, spacing=-1.0)


def test_primitives():
    # exact signed distance on a sphere, the right sign inside and outside
    assert ellipsoid_sdf(13.0, 0.0, 0.0, (0, 0, 0), (10, 10, 10)) == pytest.approx(3.0)
    assert ellipsoid_sdf(0.0, 4.0, 0.0, (0, 0, 0), (10, 10, 10)) == pytest.approx(-6.0)
    # a capsule's rendered volume (sum of partial-volume occupancies) matches its analytic volume
    step = 0.5
    axis = np.arange(-20, 20, step) + step / 2
    tube = Tubes.from_lists([((-8.0, 0.0, 0.0), (8.0, 0.0, 0.0), 3.0, 3.0)])
    (occupancy,) = tube.paint((axis, axis, axis), step)
    expected = np.pi * 9 * 16 + 4 / 3 * np.pi * 27
    assert occupancy.sum() * step**3 == pytest.approx(expected, rel=0.02)
    assert soft(np.array([-1.0, 0.0, 1.0]), 1.0).tolist() == [1.0, 0.5, 0.0]
    blocks = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    assert block_mean(blocks, 2)[0, 0, 0] == pytest.approx(np.mean(blocks[:2, :2, :2]))
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:2, :2, :2] = 3
    labels[0, 0, 0] = 1
    assert block_labels(labels, 2, 3)[0, 0, 0] == 3
    noise = correlated_noise(np.random.default_rng(0), (32, 32, 32), 1.0, 15.0)
    assert noise.std() == pytest.approx(15.0, rel=1e-3)
