"""Bad-input corpus and fuzz seeds, built at test time from valid phantom-like files.

Nothing here is stored in the repository: every broken file is derived, with a fixed seed, from a
valid volume written by meddiff's own writers, so the corpus follows the formats as they evolve.
:func:`write_seeds` gives the valid files (fuzz seeds); :func:`build_corpus` gives named bad cases,
each with the exit code a single-file ``meddiff preprocess`` must give and words its one-line error
must contain.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.data import get_testdata_file

from meddiff_cli.io import Volume, write_dicom_series, write_itk, write_nifti
from meddiff_cli.io.dicom import scan_dicom_files

SEED_SHAPE = (16, 12, 10)
NIFTI_HEADER_BYTES = 348
NIFTI_DATA_OFFSET = 352


def seed_volume(modality: str = "ct", seed: int = 0) -> Volume:
    """A small CT-like volume (a bright ellipsoid in air) with an oblique, non-isotropic affine."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in SEED_SHAPE], indexing="ij")
    body = (i**2 + j**2 + k**2) < 0.7
    array = np.where(body, 40.0, -1000.0) + rng.normal(0, 5, SEED_SHAPE)
    if modality == "mri":
        array = np.where(body, 600.0, 5.0) + rng.normal(0, 3, SEED_SHAPE)
    angle = np.deg2rad(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.2, 1.0, 2.5])
    affine[:3, 3] = [-10.0, 20.0, -30.0]
    return Volume(np.rint(array).astype(np.float32), affine, modality)


def write_seeds(folder: Path) -> dict[str, Path]:
    """Valid files of every supported format: the starting points of the corpus and of the fuzzer."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = seed_volume()
    seeds = {
        "nii": write_nifti(volume, folder / "seed.nii"),
        "nii.gz": write_nifti(volume, folder / "seed.nii.gz"),
        "nrrd": write_itk(volume, folder / "seed.nrrd"),
        "mha": write_itk(volume, folder / "seed.mha"),
        "dicom_series": write_dicom_series(volume, folder / "seed_dicom"),
    }
    seeds["dcm"] = sorted(seeds["dicom_series"].iterdir())[0]
    return seeds


@dataclass(frozen=True)
class BadCase:
    """One broken input. ``case_id`` is what preprocess calls it; ``words`` must appear in its error."""

    name: str
    path: Path
    case_id: str
    exit_code: int  # single-input `meddiff preprocess` exit code (3 no input, 4 bad input)
    words: tuple[str, ...]
    explicit: bool = False  # DICOM-like files a folder scan ignores by design: pass them by name


def _nifti_header_field_offset(name: str) -> int:
    return nib.Nifti1Header.template_dtype.fields[name][1]


def _set_nifti_field(raw: bytearray, name: str, value) -> None:
    dtype, offset = nib.Nifti1Header.template_dtype.fields[name][:2]
    encoded = np.asarray(value, dtype=dtype.base.newbyteorder("<")).ravel()[: max(dtype.shape or (1,))].tobytes()
    raw[offset : offset + len(encoded)] = encoded


def huge_nifti_bytes(shape: tuple[int, int, int]) -> bytes:
    """A valid NIfTI-1 header claiming ``shape`` float32 voxels, followed by 64 bytes of data."""
    image = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.float32), np.eye(4))
    image.header.set_data_shape(shape)
    return image.header.binaryblock + b"\0" * 4 + b"\0" * 64


def build_corpus(folder: Path, seed: int = 0) -> list[BadCase]:
    """Write every bad case into ``folder`` (flat files plus one sub-folder per bad DICOM series).

    Each case has its own case id, so the whole folder can go through ONE preprocess run whose
    errors.json reports every case; the subprocess tests also feed a few of them alone.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = write_seeds(folder.parent / f"{folder.name}-seeds")
    nii = seeds["nii"].read_bytes()
    nii_raw_gz = gzip.decompress(seeds["nii.gz"].read_bytes())
    nii_gz = seeds["nii.gz"].read_bytes()
    cases: list[BadCase] = []

    def add(name: str, data: bytes, code: int, *words: str, explicit: bool = False) -> None:
        path = folder / ("explicit" if explicit else "") / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        cases.append(BadCase(name, path, name.split(".")[0], code, words, explicit))

    # Truncations at seeded offsets: inside the header, and inside the pixel data.
    for n, cut in enumerate(sorted(rng.integers(1, NIFTI_HEADER_BYTES, 2)) + sorted(rng.integers(NIFTI_DATA_OFFSET + 1, len(nii) - 1, 2))):
        add(f"trunc{n}_at{cut}.nii", nii[:cut], 4, "NIfTI")
    for n, cut in enumerate(sorted(rng.integers(NIFTI_DATA_OFFSET + 1, len(nii_raw_gz) - 1, 2))):
        add(f"trunc_raw{n}_at{cut}.nii.gz", gzip.compress(nii_raw_gz[:cut]), 4, "NIfTI")
    for n, cut in enumerate(sorted(rng.integers(20, len(nii_gz) - 1, 2))):
        add(f"trunc_gz{n}_at{cut}.nii.gz", nii_gz[:cut], 4, "NIfTI")
    for fmt in ("nrrd", "mha"):
        data = seeds[fmt].read_bytes()
        cut = int(rng.integers(len(data) // 2, len(data) - 1))
        add(f"trunc_{fmt}_at{cut}.{fmt}", data[:cut], 4, "image")

    # Header corruption: seeded random values written into the fields a reader cannot do without.
    for field in ("magic", "datatype"):  # (a bad sizeof_hdr alone is repaired by nibabel: not an error)
        raw = bytearray(nii)
        offset = _nifti_header_field_offset(field)
        width = nib.Nifti1Header.template_dtype.fields[field][0].itemsize
        raw[offset : offset + width] = rng.integers(200, 256, width, dtype=np.uint8).tobytes()
        add(f"flip_{field}.nii", bytes(raw), 4, "NIfTI")
    raw = bytearray(nii)
    _set_nifti_field(raw, "dim", [int(rng.integers(8, 100)), 16, 12, 10, 1, 1, 1, 1])  # dim[0] outside 1..7
    add("flip_dim0.nii", bytes(raw), 4, "NIfTI")
    # gzip stream corruption: seeded byte flips inside the compressed body (CRC or deflate fails).
    raw = bytearray(nii_gz)
    for position in rng.integers(30, len(raw) - 10, 4):
        raw[position] ^= 0xFF
    add("flip_gzbody.nii.gz", bytes(raw), 4, "NIfTI")
    # Pixel data corruption that no reader may pass on: NaN and Inf bit patterns at seeded voxels.
    for name, pattern in (("nan", b"\x00\x00\xc0\x7f"), ("inf", b"\x00\x00\x80\x7f")):
        raw = bytearray(nii)
        for voxel in rng.integers(0, int(np.prod(SEED_SHAPE)), 3):
            raw[NIFTI_DATA_OFFSET + 4 * voxel : NIFTI_DATA_OFFSET + 4 * voxel + 4] = pattern
        add(f"pixels_{name}.nii", bytes(raw), 4, "NaN or infinite")
    bad = seed_volume()
    bad.array[1, 2, 3] = np.nan
    write_itk(bad, folder / "pixels_nan_nrrd.nrrd")
    cases.append(BadCase("pixels_nan_nrrd.nrrd", folder / "pixels_nan_nrrd.nrrd", "pixels_nan_nrrd", 4, ("NaN or infinite",)))

    # Sizes: claimed far beyond the limit, and claimed within it but backed by 64 bytes.
    add("huge_dims.nii", huge_nifti_bytes((4096, 4096, 4096)), 4, "voxels", "limit")
    add("huge_short.nii", huge_nifti_bytes((1024, 1024, 256)), 4, "bytes")

    # Empty files and wrong extensions.
    for suffix in (".nii", ".nii.gz", ".nrrd", ".mha"):
        add(f"empty{suffix.replace('.', '_')}{suffix}", b"", 4, "empty")
    add("dicom_named.nii.gz", seeds["dcm"].read_bytes(), 4, "NIfTI")
    add("dicom_named_plain.nii", seeds["dcm"].read_bytes(), 4, "NIfTI")
    # DICOM is recognised by content, so inside a folder these are not cases (a folder scan skips
    # files that are not DICOM images, e.g. an RT plan beside a CT series); named explicitly they fail.
    add("empty_dcm.dcm", b"", 4, "empty", explicit=True)
    add("nifti_named.dcm", nii, 4, "DICOM", explicit=True)
    add("random_noise.dcm", b"\0" * 128 + b"DICM" + rng.bytes(2000), 4, "DICOM", explicit=True)
    for name in ("test-SR.dcm", "rtstruct.dcm", "rtplan.dcm"):
        add(f"nonimage_{name}", Path(get_testdata_file(name)).read_bytes(), 4, "no pixel data", explicit=True)

    # DICOM series with a missing slice, a duplicated slice, and a truncated slice.
    cases.append(_dicom_series_case(folder / "series_missing", "missing", rng))
    cases.append(_dicom_series_case(folder / "series_duplicate", "duplicate", rng))
    cases.append(_dicom_series_case(folder / "series_truncated", "truncated", rng))
    return cases


def _dicom_series_case(target: Path, defect: str, rng: np.random.Generator) -> BadCase:
    """A fresh series (its own UIDs, so its case id is unique) with one seeded defect."""
    write_dicom_series(seed_volume(seed=int(rng.integers(1000))), target)
    slices = sorted(target.iterdir())
    victim = slices[int(rng.integers(2, len(slices) - 2))]
    if defect == "missing":
        victim.unlink()
        words: tuple[str, ...] = ("missing slice",)
    elif defect == "duplicate":
        shutil.copyfile(victim, target / f"copy_of_{victim.name}")
        words = ("duplicated slice",)
    else:
        victim.write_bytes(victim.read_bytes()[: -int(rng.integers(50, 300))])
        words = ("pixel data",)
    series, _ = scan_dicom_files([slices[0]])
    return BadCase(target.name, target, series[0].case_id, 4, words)


def mixed_modality_folder(folder: Path) -> tuple[Path, Path]:
    """One folder holding a CT and an MR series: two cases, one of which contradicts ``--modality ct``."""
    ct = write_dicom_series(seed_volume("ct"), folder / "a_ct", modality="ct", synthetic=False)
    mr = write_dicom_series(seed_volume("mri", seed=1), folder / "b_mr", modality="mri", synthetic=False)
    return ct, mr


def symlink_loop_folder(folder: Path) -> Path:
    """A folder whose only content is a cycle of symlinked folders (a naive walk never ends)."""
    (folder / "a").mkdir(parents=True)
    os.symlink(folder, folder / "a" / "back_to_top")
    os.symlink(folder / "a", folder / "a" / "self")
    return folder
