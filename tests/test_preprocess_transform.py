"""The per-case transform: exact reorientation, world-centred resampling, crop/pad, intensity mappings."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from meddiff_cli.errors import BadInputError, UsageError
from meddiff_cli.io import LPS_TO_RAS, Volume
from meddiff_cli.preprocess import (
    PreprocessSettings,
    harmonise_label,
    harmonise_volume,
    invert_intensity,
    reorient_to_ras,
    resample_to_grid,
    target_grid,
)
from meddiff_cli.preprocess.transform import apply_intensity, orientation_codes, world_centre


def smooth_ct(shape=(30, 26, 22), seed=0) -> np.ndarray:
    """A CT-like array with structure along every axis (so axis mix-ups show) in roughly -1000..1000 HU."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = 600 * np.sin(3 * i + 1) * np.cos(2 * j - 0.5) + 300 * k**3 + 200 * i * j
    return (body + rng.normal(0, 20, shape)).astype(np.float32)


def canonical_volume(shape=(30, 26, 22), spacing=(1.1, 0.9, 2.5), origin=(-12.0, 30.0, 5.0)) -> Volume:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return Volume(smooth_ct(shape), affine, "ct")


def permuted_flipped(volume: Volume, order: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Volume:
    """The same voxels in the same world places, stored with axes permuted and flipped (built by hand).

    New axis ``a`` is old axis ``order[a]``, reversed when ``flips[a]``.
    """
    array = np.transpose(volume.array, order)
    new_to_old = np.zeros((4, 4))
    new_to_old[3, 3] = 1.0
    for axis, (old, flip) in enumerate(zip(order, flips)):
        if flip:
            array = np.flip(array, axis)
            new_to_old[old, axis] = -1.0
            new_to_old[old, 3] = volume.shape[old] - 1
        else:
            new_to_old[old, axis] = 1.0
    return Volume(np.ascontiguousarray(array), volume.affine @ new_to_old, volume.modality)


def rotated_volume(angles_deg=(20.0, -15.0, 35.0), spacing=(1.2, 0.8, 2.0)) -> Volume:
    base = canonical_volume(spacing=spacing)
    rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = [7.0, -3.0, 11.0]
    return Volume(base.array, affine, "ct")


@pytest.mark.parametrize(
    ("order", "flips", "codes"),
    [
        ((0, 1, 2), (True, True, False), "LPS"),
        ((1, 2, 0), (True, False, False), "PSR"),
        ((2, 0, 1), (True, True, True), "ILP"),
        ((1, 0, 2), (False, False, True), "ARI"),
    ],
)
def test_reorientation_is_exact_and_output_identical(order, flips, codes):
    canonical = canonical_volume()
    stored = permuted_flipped(canonical, order, flips)
    assert orientation_codes(stored.affine) == codes
    # Same world positions for every voxel (the hand-built input is right) ...
    assert np.allclose(sorted(map(tuple, stored.world_corners())), sorted(map(tuple, canonical.world_corners())))
    # ... and reorientation recovers the canonical voxels exactly.
    back = reorient_to_ras(stored)
    assert np.array_equal(back.array, canonical.array)
    assert np.allclose(back.affine, canonical.affine)
    settings = PreprocessSettings("ct", spacing=(2.0, 1.5, 3.0), size=(20, 24, 16))
    a, b = harmonise_volume(canonical, settings), harmonise_volume(stored, settings)
    assert np.array_equal(a.array, b.array)
    assert np.allclose(a.affine, b.affine)


def test_world_centre_preserved_on_axis_aligned_grid():
    oblique = rotated_volume()
    settings = PreprocessSettings("ct", spacing=(2.0, 2.0, 3.0), size=(24, 20, 18))
    out = harmonise_volume(oblique, settings)
    assert out.shape == (24, 20, 18)
    assert np.allclose(out.affine[:3, :3], np.diag([2.0, 2.0, 3.0]))  # axis-aligned RAS, requested spacing
    assert np.allclose(world_centre(out), world_centre(oblique), atol=1e-9)
    assert out.metadata["orientation"] == "RAS"


def _sitk_image(volume: Volume) -> sitk.Image:
    """The volume as SimpleITK sees it (z, y, x array order; LPS geometry)."""
    image = sitk.GetImageFromArray(np.transpose(volume.array, (2, 1, 0)).copy())
    lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


@pytest.mark.parametrize(("interpolator", "order"), [(sitk.sitkLinear, 1), (sitk.sitkNearestNeighbor, 0)])
def test_resampling_matches_simpleitk(interpolator, order):
    """Against ITK's own resampler onto the same grid (antialiasing off, which ITK does not do)."""
    oblique = rotated_volume()
    settings = PreprocessSettings("ct", spacing=(1.7, 1.3, 2.2), size=(22, 26, 20))
    affine = target_grid(oblique, settings)
    ours = resample_to_grid(oblique, affine, settings.size, order=order, background=-1024.0, antialias=False)
    reference_grid = _sitk_image(Volume(np.zeros(settings.size, np.float32), affine))
    reference = sitk.Resample(_sitk_image(oblique), reference_grid, sitk.Transform(), interpolator, -1024.0)
    theirs = np.transpose(sitk.GetArrayFromImage(reference), (2, 1, 0))
    inside = (ours != -1024.0) & (theirs != -1024.0)
    assert inside.mean() > 0.3
    # Only floating-point ties (a grid point exactly on the half-voxel boundary, a nearest-neighbour
    # coordinate exactly at .5) may be decided differently; none occur on this grid.
    assert ((ours == -1024.0) != (theirs == -1024.0)).mean() <= 0.001
    assert np.isclose(ours[inside], theirs[inside], atol=1e-3).mean() >= 0.999


def test_antialiasing_reduces_noise_when_downsampling():
    rng = np.random.default_rng(1)
    noise = Volume(rng.normal(0, 100, (48, 48, 48)).astype(np.float32), np.eye(4), "ct")
    settings = PreprocessSettings("ct", spacing=4.0, size=12)
    affine = target_grid(noise, settings)
    plain = resample_to_grid(noise, affine, settings.size, order=1, background=0.0, antialias=False)
    smooth = resample_to_grid(noise, affine, settings.size, order=1, background=0.0, antialias=True)
    assert smooth.std() < 0.5 * plain.std()


def test_crop_and_pad_sizes_and_background_values():
    array = np.full((20, 20, 20), 100.0, dtype=np.float32)
    ct = Volume(array, np.eye(4), "ct")
    out = harmonise_volume(ct, PreprocessSettings("ct", spacing=1.0, size=(30, 10, 25)))
    assert out.shape == (30, 10, 25)
    inside = 100.0 / 1000.0  # 100 HU in the -1000..1000 window
    assert np.allclose(out.array[5:25, :, 3:23], inside, atol=1e-6)  # 20 voxels centred in 30 (and 25)
    assert np.all(out.array[:5] == -1.0) and np.all(out.array[25:] == -1.0)  # -1024 HU padding, clipped to -1
    assert np.all(out.array[:, :, :2] == -1.0) and np.all(out.array[:, :, 23:] == -1.0)


def test_crop_and_pad_odd_even_centre():
    """Size 25 around a 20-voxel volume: the centre stays put (input index = output index - 2.5), so output
    voxels 2..22 lie within the scan's extent (input -0.5..19.5, edges included) and the rest is padding."""
    ct = Volume(np.full((20, 20, 20), 100.0, dtype=np.float32), np.eye(4), "ct")
    out = harmonise_volume(ct, PreprocessSettings("ct", spacing=1.0, size=25))
    assert np.allclose(world_centre(out), world_centre(ct))
    profile = out.array[:, 12, 12]
    assert np.allclose(profile[2:23], 0.1) and profile[1] == -1.0 and profile[23] == -1.0


def test_mri_pads_with_minimum_before_intensity_mapping():
    rng = np.random.default_rng(2)
    array = rng.uniform(200, 600, (16, 16, 16)).astype(np.float32)
    array[:2] = 30.0  # darkest voxels (the volume minimum)
    mri = Volume(array, np.eye(4), "mri")
    out = harmonise_volume(mri, PreprocessSettings("mri", spacing=1.0, size=24))
    pad_value = apply_intensity(np.array([30.0]), out.metadata["intensity"])[0]
    assert np.all(out.array[:4] == pad_value)
    label = harmonise_label(Volume(np.ones((16, 16, 16), np.float32), np.eye(4)), mri, PreprocessSettings("mri", spacing=1.0, size=24))
    assert label.array.dtype == np.uint8 and np.all(label.array[:4] == 0) and np.all(label.array[4:20, 4:20, 4:20] == 1)


def test_ct_window_mapping_clipping_and_inversion():
    hu = np.array([-3000.0, -1000.0, -500.0, 0.0, 1000.0, 2500.0], dtype=np.float32).reshape(6, 1, 1)
    volume = Volume(np.repeat(np.repeat(hu, 4, 1), 4, 2), np.eye(4), "ct")
    out = harmonise_volume(volume, PreprocessSettings("ct", spacing=1.0, size=(6, 4, 4)))
    assert np.allclose(out.array[:, 1, 1], [-1.0, -1.0, -0.5, 0.0, 1.0, 1.0], atol=1e-6)
    assert out.metadata["intensity"] == {"kind": "ct_window", "window": [-1000.0, 1000.0], "unit": "HU"}
    back = invert_intensity(out.array, out.metadata["intensity"])
    assert np.allclose(back[:, 1, 1], [-1000.0, -1000.0, -500.0, 0.0, 1000.0, 1000.0], atol=1e-3)


def test_custom_window_round_trip_on_identity_grid():
    volume = canonical_volume()
    settings = PreprocessSettings("ct", spacing=volume.spacing, size=volume.shape, window=(-200.0, 300.0))
    out = harmonise_volume(volume, settings)
    assert np.allclose(out.affine, volume.affine)  # same grid: no interpolation at all
    back = invert_intensity(out.array, out.metadata["intensity"])
    assert np.allclose(back, np.clip(volume.array, -200, 300), atol=1e-3)
    assert out.array.min() == -1.0 and out.array.max() == 1.0


def test_mri_percentile_mapping_uses_foreground():
    rng = np.random.default_rng(3)
    array = np.zeros((24, 24, 24), dtype=np.float32)  # air
    head = np.zeros_like(array, dtype=bool)
    head[4:20, 4:20, 4:20] = True
    array[head] = rng.uniform(100, 500, head.sum())
    out = harmonise_volume(Volume(array, np.eye(4), "mri"), PreprocessSettings("mri", spacing=1.0, size=24))
    mapping = out.metadata["intensity"]
    expected = np.percentile(array[head], [0.5, 99.5])
    assert mapping["kind"] == "percentile" and mapping["percentiles"] == [0.5, 99.5]
    assert np.allclose(mapping["values"], expected)
    assert out.array.min() == -1.0 and out.array.max() == 1.0
    assert np.isclose((out.array[head] == 1.0).mean(), 0.005, atol=0.002)
    inverted = invert_intensity(out.array, mapping)
    middle = head & (array > expected[0]) & (array < expected[1])
    assert np.allclose(inverted[middle], array[middle], rtol=1e-5)


def test_labels_nearest_neighbour_keep_only_original_values():
    image = rotated_volume()
    rng = np.random.default_rng(4)
    label_array = rng.choice([0, 3, 7], size=image.shape, p=[0.6, 0.3, 0.1]).astype(np.float32)
    label = Volume(label_array, image.affine.copy())
    settings = PreprocessSettings("ct", spacing=(1.3, 1.7, 2.9), size=20)
    out = harmonise_label(label, image, settings)
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) <= {0, 3, 7} and {3, 7} <= set(np.unique(out.array))
    assert np.allclose(out.affine, harmonise_volume(image, settings).affine)


def test_label_geometry_must_match_image():
    image = canonical_volume()
    shifted = image.affine.copy()
    shifted[0, 3] += 5.0
    with pytest.raises(BadInputError, match="geometry"):
        harmonise_label(Volume(np.zeros(image.shape, np.float32), shifted), image, PreprocessSettings("ct"))
    with pytest.raises(BadInputError, match="integers"):
        harmonise_label(Volume(np.full(image.shape, 0.5, np.float32), image.affine), image, PreprocessSettings("ct"))


def test_bad_volumes_and_settings_are_refused():
    array = np.zeros((8, 8, 8), np.float32)
    array[1, 2, 3] = np.nan
    with pytest.raises(BadInputError, match="NaN"):
        harmonise_volume(Volume(array, np.eye(4), "ct"), PreprocessSettings("ct"))
    with pytest.raises(BadInputError, match="constant"):
        harmonise_volume(Volume(np.ones((8, 8, 8), np.float32), np.eye(4), "mri"), PreprocessSettings("mri"))
    with pytest.raises(UsageError, match="--modality"):
        harmonise_volume(Volume(np.ones((8, 8, 8), np.float32), np.eye(4), "unknown"), PreprocessSettings())
    with pytest.raises(UsageError):
        PreprocessSettings("ct", window=(100.0, -100.0))
    with pytest.raises(UsageError):
        PreprocessSettings("ct", size=(64, 64))
    with pytest.raises(UsageError):
        PreprocessSettings("pet")


def test_default_spacing_depends_on_modality():
    assert PreprocessSettings().resolved("ct").spacing == (3.0, 3.0, 3.0)
    assert PreprocessSettings().resolved("mri").spacing == (1.5, 1.5, 1.5)
    assert PreprocessSettings("ct", spacing=2).resolved().spacing == (2.0, 2.0, 2.0)
