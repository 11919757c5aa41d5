"""Labelled cases for the augment-seg experiment: pair images with label maps, harmonise, split.

Images and label maps are paired by case id (the file name without its extension). Every volume
goes through the shared preprocessing (:func:`meddiff_cli.preprocess.transform.harmonise_volume` and
``harmonise_label``) so the segmentation network sees exactly what the generative model sees.
Case ids never leave this module: outputs refer to cases by their index in sorted-id order, because
file names of real scans can carry patient identifiers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meddiff_cli.errors import BadInputError, InputNotFoundError, UsageError
from meddiff_cli.io import CaseSource, discover_cases, read_case, volume_format
from meddiff_cli.preprocess.transform import PreprocessSettings, harmonise_label, harmonise_volume

TEST_SPLIT_SEED = 0
"""The --test-fraction split uses its own fixed seed: the test set must not change with --seeds."""


@dataclass(frozen=True)
class CasePair:
    case_id: str
    image: CaseSource
    label: CaseSource | None


@dataclass
class LabelledSet:
    """Harmonised cases, stacked: images float32 [N, X, Y, Z] in [-1, 1] and label maps [N, X, Y, Z] or None.

    ``labels`` holds label-map values (uint8) as harmonised, or class indices after :func:`as_class_indices`.
    """

    images: np.ndarray
    labels: np.ndarray | None
    spacing: tuple[float, float, float]


@dataclass
class ClassMap:
    """Label-map values (any integers 1..255) mapped to contiguous class indices 1..C; 0 is background."""

    values: list[int]
    names: list[str]
    lookup: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.lookup = np.full(256, -1, dtype=np.int64)
        self.lookup[0] = 0
        for index, value in enumerate(self.values, start=1):
            self.lookup[value] = index

    @property
    def n_classes(self) -> int:
        """Foreground classes (the network predicts n_classes + 1 channels)."""
        return len(self.values)

    def unknown_values(self, label: np.ndarray) -> list[int]:
        return sorted(int(v) for v in np.unique(label) if self.lookup[int(v)] < 0)

    def to_indices(self, label: np.ndarray) -> np.ndarray:
        """Class indices; values outside the class map (see :meth:`unknown_values`) become background."""
        return np.maximum(self.lookup[label.astype(np.int64)], 0)

    def to_json(self) -> list[dict[str, object]]:
        return [{"index": i, "value": v, "name": n} for i, (v, n) in enumerate(zip(self.values, self.names), start=1)]


def list_volumes(folder: Path) -> dict[str, CaseSource]:
    """Case id -> volume for every volume the foundation can read in ``folder`` (any format, recursive)."""
    if not folder.is_dir():
        raise InputNotFoundError("folder not found", folder)
    return {case.case_id: case for case in discover_cases([folder])}


def pair_cases(images_dir: Path, labels_dir: Path | None) -> list[CasePair]:
    """Images paired with label maps by case id, sorted by id. An unpaired image or label is an error."""
    images = list_volumes(images_dir)
    if labels_dir is None:
        return [CasePair(case_id, case, None) for case_id, case in sorted(images.items())]
    return _paired(images, images_dir, list_volumes(labels_dir), labels_dir)


def _paired(images: dict[str, CaseSource], images_dir: Path,
            labels: dict[str, CaseSource], labels_dir: Path) -> list[CasePair]:
    for case_id, case in sorted(images.items()):
        if case_id not in labels:
            raise BadInputError(f"image has no label map with the same case id in {labels_dir}", case.path)
    for case_id, case in sorted(labels.items()):
        if case_id not in images:
            raise BadInputError(f"label map has no image with the same case id in {images_dir}", case.path)
    return [CasePair(case_id, images[case_id], labels[case_id]) for case_id in sorted(images)]


def generated_pairs(folder: Path) -> list[CasePair]:
    """Generated image + label pairs: ``meddiff sample --with-labels`` output or an ``images/`` + ``labels/`` corpus.

    The sample layout keeps its images at the folder root beside ``labels/`` (same file names), so only
    the root's volume files are images: a recursive search would meet every label map as a second image.
    """
    if not folder.is_dir():
        raise InputNotFoundError("folder not found", folder)
    images_dir, labels_dir = split_folder(folder)
    if images_dir != folder:  # the corpus layout
        if labels_dir is None:
            raise UsageError(f"--pairs needs label maps in {folder / 'labels'}")
        return pair_cases(images_dir, labels_dir)
    labels_dir = folder / "labels"
    if not labels_dir.is_dir():
        raise UsageError(f"--pairs needs label maps in {labels_dir} (meddiff sample --with-labels writes them there)")
    if any(labels_dir.glob("*.dcm")):
        raise UsageError(f"--pairs reads label maps as volume files; {labels_dir} holds DICOM-SEG "
                         "(meddiff sample --format dicom): sample the pairs with --format nifti")
    image_files = sorted(path for path in folder.iterdir() if path.is_file() and volume_format(path))
    if not image_files:
        raise InputNotFoundError("no image volumes (NIfTI, NRRD, MHA, MHD) beside labels/", folder)
    images = {case.case_id: case for case in discover_cases(image_files)}
    return _paired(images, folder, list_volumes(labels_dir), labels_dir)


def split_folder(folder: Path) -> tuple[Path, Path | None]:
    """A corpus folder (``images/`` + optional ``labels/``, as ``meddiff phantom`` writes) or a flat image folder."""
    if (folder / "images").is_dir():
        labels = folder / "labels"
        return folder / "images", labels if labels.is_dir() else None
    return folder, None


def read_manifest_labels(labels_dir: Path) -> tuple[dict[int, str], str | None]:
    """Label names {value: name} and modality from a ``labels.json`` sidecar or a corpus ``manifest.json``.

    Looked for in the labels folder, then beside it (a phantom/preprocess corpus keeps its manifest
    one level up from ``labels/``). Both ``{"labels": {name: value}}`` and a bare ``{name: value}``
    are accepted.
    """
    candidates = [labels_dir / "labels.json", labels_dir / "manifest.json",
                  labels_dir.parent / "labels.json", labels_dir.parent / "manifest.json"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadInputError(f"unreadable label sidecar ({error})", path) from None
        if not isinstance(document, dict):
            continue
        table = document.get("labels", document if path.name == "labels.json" else None)
        modality = document.get("modality") if isinstance(document.get("modality"), str) else None
        if not isinstance(table, dict):
            continue
        try:
            names = {int(value): str(name) for name, value in table.items() if int(value) != 0}
        except (TypeError, ValueError):
            raise BadInputError("'labels' must map names to integer values", path) from None
        return names, modality
    return {}, None


def class_map_from(label_arrays: list[np.ndarray], names: dict[int, str]) -> ClassMap:
    """The classes present in any of the label maps, named by the sidecar or ``label_<v>``."""
    present = sorted({int(v) for array in label_arrays for v in np.unique(array) if v != 0})
    if not present:
        raise BadInputError("all label maps are empty (background only): nothing to segment")
    return ClassMap(present, [names.get(v, f"label_{v}") for v in present])


def fit_spacing(pairs: list[CasePair], modality: str, size: int) -> tuple[float, float, float]:
    """Isotropic spacing at which the largest scan's field of view fits a ``size``-voxel cube.

    One spacing for all cases keeps anatomy at one scale (and HD95 in mm comparable across cases).
    Volumes are read one at a time and dropped, so memory stays at one full-resolution scan.
    """
    largest = 0.0
    for pair in pairs:
        image = read_case(pair.image, modality)
        largest = max(largest, float(np.max(np.asarray(image.shape) * np.asarray(image.spacing))))
    return (largest / size,) * 3


def harmonise_pairs(pairs: list[CasePair], settings: PreprocessSettings, with_labels: bool = True) -> LabelledSet:
    """Read and harmonise one case at a time (image, and with ``with_labels`` its label map by nearest neighbour).

    Only the small harmonised arrays are kept, so full-resolution scans never pile up in memory.
    """
    images, labels = [], []
    for pair in pairs:
        image = read_case(pair.image, settings.modality)
        images.append(harmonise_volume(image, settings).array.astype(np.float32))
        if with_labels and pair.label is not None:
            label = read_case(pair.label, settings.modality)
            try:  # checks that the label map matches the image's grid and holds integers 0..255
                labels.append(harmonise_label(label, image, settings).array)
            except BadInputError as error:
                raise BadInputError(error.message, pair.label.path) from None
    spacing = tuple(float(s) for s in settings.resolved().spacing)
    stacked_labels = np.stack(labels) if labels and len(labels) == len(images) else None
    return LabelledSet(np.stack(images), stacked_labels, spacing)  # type: ignore[arg-type]


def as_class_indices(data: LabelledSet, classes: ClassMap) -> LabelledSet:
    """Label-map values -> class indices 0..C."""
    if data.labels is None:
        return data
    return LabelledSet(data.images, np.stack([classes.to_indices(values) for values in data.labels]), data.spacing)


def fraction_split(n_cases: int, fraction: float) -> tuple[list[int], list[int]]:
    """(train, test) indices: a fixed-seed random ``fraction`` of the cases held out for testing."""
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--test-fraction must be between 0 and 1, got {fraction}")
    n_test = max(1, int(round(fraction * n_cases)))
    if n_test >= n_cases:
        raise UsageError(f"--test-fraction {fraction} leaves no training case out of {n_cases}")
    order = np.random.default_rng(TEST_SPLIT_SEED).permutation(n_cases)
    return sorted(order[n_test:].tolist()), sorted(order[:n_test].tolist())


def labelled_subset(n_pool: int, k: int, seed: int) -> list[int]:
    """The K training cases for one seed: the first K of a seed-specific permutation.

    Every arm uses the same subset for a (K, seed) pair (the paired design), and the subsets are
    nested across K for one seed (the K=2 cases are among the K=4 cases), so K is the only change.
    """
    if k > n_pool:
        raise UsageError(f"--n-labelled {k} needs {k} labelled training cases, only {n_pool} available")
    return sorted(np.random.default_rng(seed).permutation(n_pool)[:k].tolist())
