"""Training data: preprocess folders → validated case lists, a deterministic batch order and augmentation.

Determinism is stateless on purpose: the cases and augmentation parameters of step ``s`` are a pure
function of ``(seed, s)``, so a resumed run draws exactly the batches an uninterrupted run would have,
whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from meddiff_cli.errors import BadInputError, InputNotFoundError, UsageError
from meddiff_cli.io import read_nifti
from meddiff_cli.preprocess.manifest import load_manifest

if TYPE_CHECKING:
    from meddiff_cli.model.card import ModelCard

# A preprocessed image must lie in [-1, 1]; allow float rounding from resampling/writing.
RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Case:
    """One training volume: where it is and which class (modality index) it belongs to. No identifiers."""

    image: Path
    class_id: int


@dataclass
class TrainingData:
    """Everything the trainer needs from the DATA folders."""

    modalities: list[str]
    size: list[int]
    spacing: dict[str, list[float]]  # per modality label: the grid is shared, the field of view need not be
    intensity: dict[str, dict[str, Any]]
    train: list[Case]
    val: list[Case]

    def counts(self) -> dict[str, dict[str, int]]:
        """Cases per modality and split — the only data summary that goes into the model card."""
        return {
            modality: {
                "train": sum(c.class_id == index for c in self.train),
                "val": sum(c.class_id == index for c in self.val),
            }
            for index, modality in enumerate(self.modalities)
        }


def card_intensity(manifest_intensity: dict[str, Any]) -> dict[str, Any]:
    """The manifest's run-wide mapping, completed with the unit/output range the sampler maps back to."""
    mapping = dict(manifest_intensity)
    if mapping.get("kind") == "ct_window":
        mapping.setdefault("unit", "HU")
    elif mapping.get("kind") == "percentile":
        mapping.setdefault("unit", "a.u.")
        mapping.setdefault("output_range", [0, 1000])
    return mapping


def load_training_data(
    folders: list[Path], modalities: list[str] | None, divisor: int, val_fraction: float, seed: int
) -> TrainingData:
    """Read and validate DATA folders; split each modality's cases into train/validation.

    ``modalities`` (optional, one per folder) renames the class label of each folder; several folders may
    share a label when their intensity mapping agrees. All volumes must share one size that the network
    pyramid can halve ``divisor`` times; spacing must agree within a modality label.
    """
    if not folders:
        raise UsageError("give at least one DATA folder (a `meddiff preprocess` output)")
    if modalities and len(modalities) not in (1, len(folders)):
        raise UsageError(f"--modality given {len(modalities)} times for {len(folders)} DATA folders; give it once per folder")
    size: list[int] | None = None
    spacing: dict[str, list[float]] = {}
    labels: list[str] = []
    intensity: dict[str, dict[str, Any]] = {}
    per_label: dict[str, list[Path]] = {}
    for position, folder in enumerate(folders):
        folder = Path(folder)
        if not folder.exists():
            raise InputNotFoundError("DATA folder does not exist", folder)
        manifest = load_manifest(folder)
        manifest_path = folder / "manifest.json"
        label = (modalities[position] if len(modalities) > 1 else modalities[0]) if modalities else manifest["modality"]
        mapping = card_intensity(manifest["intensity"])
        if label in intensity and intensity[label] != mapping:
            raise BadInputError(
                f"intensity mapping {mapping} differs from another {label!r} folder's {intensity[label]}; "
                "preprocess both with the same settings or give them different --modality labels", manifest_path)
        intensity[label] = mapping
        if label not in labels:
            labels.append(label)
        if size is None:
            size = [int(v) for v in manifest["size"]]
        elif [int(v) for v in manifest["size"]] != size:
            raise BadInputError(f"volume size {manifest['size']} differs from {size} in {folders[0]}; "
                                "preprocess every DATA folder with the same --size", manifest_path)
        if label not in spacing:
            spacing[label] = [float(v) for v in manifest["spacing"]]
        elif not np.allclose(manifest["spacing"], spacing[label], rtol=1e-4):
            raise BadInputError(f"spacing {manifest['spacing']} differs from {spacing[label]} of another {label!r} "
                                "folder; preprocess every folder of one modality with the same --spacing", manifest_path)
        bad_sides = [side for side in size if side % divisor]
        if bad_sides:
            raise BadInputError(f"volume size {size} is not a multiple of {divisor} on every axis, which this model's "
                                f"autoencoder + UNet pyramid needs; preprocess with e.g. --size "
                                f"{'x'.join(str(max(divisor, round(s / divisor) * divisor)) for s in size)}", manifest_path)
        if not manifest["cases"]:
            raise BadInputError("manifest lists no cases", manifest_path)
        for index, case in enumerate(manifest["cases"]):
            image = folder / case["image"]
            _check_image_header(image, size, f"cases[{index}]")
            per_label.setdefault(label, []).append(image)
    assert size is not None
    train, val = _split(labels, per_label, val_fraction, seed)
    return TrainingData(labels, size, spacing, intensity, train, val)


def _check_image_header(image: Path, size: list[int], where: str) -> None:
    if not image.is_file():
        raise BadInputError(f"image listed in manifest.json ({where}) is missing", image)
    try:
        shape = [int(v) for v in nib.load(str(image)).shape]
    except Exception as error:  # nibabel raises many types for corrupt headers
        raise BadInputError(f"unreadable NIfTI header ({type(error).__name__})", image) from None
    if shape != size:
        raise BadInputError(f"image shape {shape} differs from the manifest size {size}", image)


def _split(labels: list[str], per_label: dict[str, list[Path]], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Hold out ``max(1, round(fraction * n))`` cases of each modality, chosen by the seed."""
    train: list[Case] = []
    val: list[Case] = []
    for class_id, label in enumerate(labels):
        images = sorted(per_label[label])
        if len(images) < 2:
            raise BadInputError(f"modality {label!r} has {len(images)} case(s); training needs at least 2 "
                                "(one is held out for validation)")
        order = np.random.default_rng([seed, class_id]).permutation(len(images))
        n_val = min(len(images) - 1, max(1, round(val_fraction * len(images))))
        val += [Case(images[i], class_id) for i in sorted(order[:n_val])]
        train += [Case(images[i], class_id) for i in sorted(order[n_val:])]
    return train, val


def read_case(case: Case) -> np.ndarray:
    """The image array, refusing anything that is not a preprocessed [-1, 1] finite volume."""
    return read_model_space(case.image)


def read_model_space(image: Path) -> np.ndarray:
    """A preprocessed image in model space, refusing anything that is not a finite [-1, 1] volume."""
    array = read_nifti(image).array
    if not np.isfinite(array).all():
        raise BadInputError("image contains NaN or infinite values", image)
    if np.abs(array).max(initial=0.0) > 1.0 + RANGE_TOLERANCE:
        raise BadInputError(f"values span [{array.min():.3g}, {array.max():.3g}], not [-1, 1]: "
                            "not a `meddiff preprocess` output", image)
    return np.clip(array, -1.0, 1.0)


def check_grid(manifest: dict[str, Any], card: ModelCard, modality: str, where: Path) -> None:
    """Refuse a preprocess folder whose size, spacing or intensity mapping is not the model's for ``modality``:
    its latents would not be the ones the model's denoiser produces."""
    if [int(v) for v in manifest.get("size", [])] != [int(v) for v in card.volume["shape"]]:
        raise BadInputError(f"volume size {manifest.get('size')} differs from the model's {card.volume['shape']}", where)
    expected = card.spacing(modality)
    if not np.allclose(manifest.get("spacing", [0.0]), expected, rtol=1e-4):
        raise BadInputError(f"spacing {manifest.get('spacing')} differs from the model's {expected} for {modality}; "
                            "preprocess with the model's --spacing", where)
    try:
        mapping = card_intensity(manifest["intensity"])
    except (KeyError, TypeError):
        raise BadInputError("manifest has no usable intensity mapping", where) from None
    # A calibration maps decoded samples only (model.card.intensity_calibration): it is no preprocess setting.
    expected_mapping = {k: v for k, v in card.intensity.get(modality, {}).items() if k != "calibration"}
    if mapping != expected_mapping:
        raise BadInputError(f"intensity mapping {mapping} differs from the model's {expected_mapping} "
                            f"for {modality}; preprocess with the same settings", where)


def augment(array: np.ndarray, rng: np.random.Generator, jitter: float, flip_lr: bool) -> np.ndarray:
    """Small intensity scale/shift (scanner/calibration variation) and, if allowed, a left-right flip (RAS axis 0)."""
    if flip_lr and rng.random() < 0.5:
        array = array[::-1]
    if jitter > 0:
        scale, shift = 1.0 + rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter)
        array = np.clip(array * scale + shift, -1.0, 1.0)
    return np.ascontiguousarray(array, dtype=np.float32)


def random_crop(array: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random cube of ``side`` voxels (the whole array when ``side`` is 0 or not smaller)."""
    if side <= 0 or all(side >= s for s in array.shape):
        return array
    corner = [int(rng.integers(0, max(s - side, 0) + 1)) for s in array.shape]
    return array[tuple(slice(c, c + side) for c in corner)]


class VolumeDataset(Dataset):
    """Items are addressed by ``(case index, augmentation seed)`` so workers need no shared RNG state.

    ``patch_size`` > 0 crops random cubes: the autoencoder is fully convolutional, so patch training makes
    stage 1 cheap (8x fewer voxels at half the side) while it still encodes whole volumes afterwards.
    """

    def __init__(self, cases: list[Case], jitter: float, flip_lr: bool, patch_size: int = 0) -> None:
        self.cases = cases
        self.jitter = jitter
        self.flip_lr = flip_lr
        self.patch_size = patch_size

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, aug_seed = key
        case = self.cases[index]
        rng = np.random.default_rng(aug_seed)
        array = augment(random_crop(read_case(case), self.patch_size, rng), rng, self.jitter, self.flip_lr)
        return torch.from_numpy(array)[None], case.class_id


def step_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of its integer parts (seed, stage, step, rank, …)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches for steps ``start..end-1``; step ``s`` uses global positions ``s*G .. s*G+G-1`` (G = batch × world)
    of an endless sequence of seeded per-epoch permutations, and this rank takes its slice — the same
    sharding as DistributedSampler, but addressable by step so resuming needs no iterator state."""

    def __init__(self, num_cases: int, batch_size: int, seed: int, stage_code: int, start: int, end: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.num_cases, self.batch_size, self.seed, self.stage_code = num_cases, batch_size, seed, stage_code
        self.start, self.end, self.rank, self.world_size = start, end, rank, world_size
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def _case_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_cases)
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, self.stage_code, epoch]).permutation(self.num_cases)}
        return int(self._permutations[epoch][offset])

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        global_batch = self.batch_size * self.world_size
        first = step * global_batch + self.rank * self.batch_size
        return [(self._case_at(first + j), step_seed(self.seed, self.stage_code, step, self.rank * self.batch_size + j))
                for j in range(self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.end):
            yield self.batch_for_step(step)
