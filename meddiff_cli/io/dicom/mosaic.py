"""Siemens mosaic: one 2D image holding the slices of a whole volume as tiles (EPI, DWI, fMRI).

Detection: ``ImageType`` contains ``MOSAIC``. The slice count comes from the private element
(0019,xx0A) of ``SIEMENS MR HEADER`` or the CSA image header's ``NumberOfImagesInMosaic`` (both must
agree when both are present); the tiles lie on a ``ceil(sqrt(count))`` square grid, row by row.

Geometry, as nibabel.nicom (``MosaicWrapper.image_position``) and dcm2niix correct it:
``ImagePositionPatient`` of a mosaic is that of the top-left pixel of a tile-sized image centred on the
whole mosaic frame, so the first slice's real position is that point moved by half the size difference,
``(mosaic - tile) / 2`` pixels, along both in-plane axes. Slices follow each other along the CSA
``SliceNormalVector`` (its sign says whether tile order runs along or against row x column), at
``SpacingBetweenSlices`` (else ``SliceThickness``). Whatever cannot be established is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from meddiff_cli.io.dicom.csa import CSAError, csa_image_header, csa_numbers
from meddiff_cli.io.dicom.headers import image_type, positive_float, private_value

SIEMENS_MR_CREATOR = "SIEMENS MR HEADER"
NORMAL_TOLERANCE = 1e-3  # |cos| of the CSA normal with row x column must be within this of 1


class MosaicError(Exception):
    """A mosaic whose tiles or their positions cannot be established (reason in the message)."""


@dataclass(frozen=True)
class MosaicLayout:
    """How the slices lie in the mosaic frame."""

    count: int  # slices in the mosaic
    grid: int  # tiles per side of the square grid
    rows: int  # rows of one tile
    columns: int  # columns of one tile


@dataclass(frozen=True)
class MosaicGeometry:
    layout: MosaicLayout
    first_position: np.ndarray  # LPS mm of the first pixel of the first tile
    normal: np.ndarray  # unit vector from one tile's slice to the next
    step: float  # mm between slices


def is_mosaic(ds: Dataset) -> bool:
    return "MOSAIC" in image_type(ds)


def _count(ds: Dataset, csa: dict[str, list[str]] | None) -> int:
    counts = {}
    private = private_value(ds, 0x0019, SIEMENS_MR_CREATOR, 0x0A)
    if private is not None:
        counts["(0019,100A)"] = private
    csa_count = csa_numbers(csa, "NumberOfImagesInMosaic")
    if csa_count:
        counts["CSA NumberOfImagesInMosaic"] = csa_count[0]
    if not counts:
        raise MosaicError("no NumberOfImagesInMosaic ((0019,100A) or CSA header): its tiles cannot be unpacked")
    values = {}
    for name, raw in counts.items():
        if isinstance(raw, (bytes, bytearray)) and len(raw) == 2:  # US read as UN (implicit VR, no dictionary)
            raw = int.from_bytes(raw, "little")
        try:
            values[name] = int(float(raw[0] if isinstance(raw, (list, tuple)) else raw))
        except (TypeError, ValueError):
            raise MosaicError(f"{name} is not a number ({raw!r})") from None
    if len(set(values.values())) > 1:
        raise MosaicError("number of images disagrees: " + ", ".join(f"{n} says {v}" for n, v in values.items()))
    count = next(iter(values.values()))
    if count < 1:
        raise MosaicError(f"number of images is {count}")
    return count


def mosaic_geometry(
    ds: Dataset, rows: int, columns: int, orientation: np.ndarray, position: np.ndarray, pixel_spacing: tuple[float, float]
) -> MosaicGeometry:
    """Tile layout and the real position/direction of the slices, or :class:`MosaicError`."""
    try:
        csa = csa_image_header(ds)
    except CSAError as error:
        raise MosaicError(f"unreadable CSA image header ({error})") from None
    count = _count(ds, csa)
    grid = math.ceil(math.sqrt(count))
    if rows % grid or columns % grid:
        raise MosaicError(f"{rows}x{columns} frame does not split into a {grid}x{grid} grid of tiles ({count} images)")
    layout = MosaicLayout(count, grid, rows // grid, columns // grid)
    norms = np.linalg.norm(orientation.reshape(2, 3), axis=1)
    normal = np.cross(orientation[:3], orientation[3:])
    if not (norms > 1e-6).all() or np.linalg.norm(normal) < 1e-6 * norms.prod():
        raise MosaicError("ImageOrientationPatient vectors are parallel or zero")
    row_dir, col_dir = orientation[:3] / norms[0], orientation[3:] / norms[1]  # increasing column / row index
    normal /= np.linalg.norm(normal)
    csa_normal = csa_numbers(csa, "SliceNormalVector")
    if csa_normal is None or len(csa_normal) != 3 or not np.isfinite(csa_normal).all() or not any(csa_normal):
        raise MosaicError("no CSA SliceNormalVector: the direction in which the tiles follow each other is unknown")
    cosine = float(np.dot(normal, csa_normal) / np.linalg.norm(csa_normal))
    if abs(abs(cosine) - 1.0) > NORMAL_TOLERANCE:
        raise MosaicError("CSA SliceNormalVector is not perpendicular to the ImageOrientationPatient plane")
    if cosine < 0:
        normal = -normal
    step = positive_float(ds.get("SpacingBetweenSlices")) or positive_float(ds.get("SliceThickness"))
    if step is None:
        raise MosaicError("neither SpacingBetweenSlices nor SliceThickness: the slice distance is unknown")
    between_rows, between_columns = pixel_spacing
    shift = (col_dir * between_rows * (rows - layout.rows) / 2.0
             + row_dir * between_columns * (columns - layout.columns) / 2.0)
    return MosaicGeometry(layout, position + shift, normal, step)


def unpack_mosaic(pixels: np.ndarray, layout: MosaicLayout) -> np.ndarray:
    """(1, rows, columns) mosaic frame -> (count, tile rows, tile columns), tiles taken row by row."""
    grid, rows, columns = layout.grid, layout.rows, layout.columns
    tiles = pixels[0].reshape(grid, rows, grid, columns).transpose(0, 2, 1, 3).reshape(grid * grid, rows, columns)
    return tiles[: layout.count]
