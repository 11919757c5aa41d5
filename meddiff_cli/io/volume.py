"""The one in-memory volume type that travels between stages.

Convention, stated once and used everywhere:

* ``array`` is indexed ``[i, j, k]`` (voxel index order, as nibabel returns it).
* ``affine`` maps ``(i, j, k, 1)`` to world coordinates in millimetres in **RAS+**: +x towards the
  patient's Right, +y Anterior, +z Superior — exactly what ``nibabel.load(path).affine`` gives.
* DICOM and ITK use LPS+ (+x Left, +y Posterior); readers and writers convert with
  :data:`LPS_TO_RAS` at the edge, nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Flip x and y: converts an LPS affine (or point) to RAS and back (it is its own inverse)."""


@dataclass
class Volume:
    """A 3D scalar image with its world geometry.

    ``metadata`` holds only non-identifying facts (source format, series description, rescale,
    warnings); readers never copy patient names, IDs, dates or UIDs into it.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = "unknown"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"a Volume is 3D, got an array of shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix of unit axis directions (columns) in RAS+."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    def world_corners(self) -> np.ndarray:
        """World (RAS+, mm) coordinates of the centres of the 8 corner voxels, shape (8, 3)."""
        extent = [(0, s - 1) for s in self.shape]
        idx = np.array([[a, b, c, 1.0] for a in extent[0] for b in extent[1] for c in extent[2]])
        return (self.affine @ idx.T).T[:, :3]

    def with_array(self, array: np.ndarray, **metadata: Any) -> Volume:
        """Same geometry and modality, new voxels (e.g. after an intensity mapping)."""
        return Volume(array, self.affine.copy(), self.modality, {**self.metadata, **metadata})
