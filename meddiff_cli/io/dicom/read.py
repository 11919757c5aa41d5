"""Decoding pixel data and assembling a grouped series into a RAS+ :class:`Volume`."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

from meddiff_cli.errors import BadInputError, InputNotFoundError
from meddiff_cli.io.dicom.isolated import GDCM, decode_with_gdcm
from meddiff_cli.io.dicom.mosaic import unpack_mosaic
from meddiff_cli.io.dicom.scan import DicomSeries, find_dicom_files, read_dataset, scan_dicom_files
from meddiff_cli.io.dicom.stack import slice_axes, stack_geometry
from meddiff_cli.io.dicom.volumes import select_volume
from meddiff_cli.io.limits import check_affine, check_finite, check_voxel_count
from meddiff_cli.io.volume import LPS_TO_RAS, Volume

MODALITY_NAMES = {"CT": "ct", "MR": "mri"}
DECODER_PREFERENCE = ("pydicom", "pylibjpeg", "pyjpegls", "pillow")
"""pydicom plugins tried in this process, in this order. GDCM (first in pydicom's own order for most JPEG
syntaxes) decodes only what nothing else does (JPEG Lossless process 14), and only in a child process
(``isolated.py``): on some corrupt streams it aborts the process it runs in."""


def _transfer_syntax(ds: Dataset, path: Path) -> UID:
    transfer_syntax = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ExplicitVRLittleEndian))
    if not transfer_syntax.is_transfer_syntax:
        raise BadInputError(f"TransferSyntaxUID {str(transfer_syntax)[:64]!r} is not a transfer syntax", path)
    return transfer_syntax


def decoders(ds: Dataset, path: Path) -> list[str | None]:
    """In-process plugins to try in order: ``[None]`` when uncompressed, ``[]`` when only GDCM decodes it.

    A compressed syntax that no installed, permissively licensed decoder handles is refused here.
    """
    transfer_syntax = _transfer_syntax(ds, path)
    if not transfer_syntax.is_compressed:
        return [None]
    try:
        available = get_decoder(transfer_syntax).available_plugins
    except Exception:
        available = ()
    plugins: list[str | None] = [name for name in DECODER_PREFERENCE if name in available]
    if not plugins and GDCM not in available:
        raise BadInputError(
            f"unsupported transfer syntax {transfer_syntax.name or transfer_syntax} ({transfer_syntax}): "
            "no permissively licensed decoder installed",
            path,
        )
    return plugins


def decode(ds: Dataset, path: Path) -> np.ndarray:
    """Decode all frames of a file as (frames, rows, columns); a GDCM-only syntax in a child process."""
    plugins = decoders(ds, path)
    name = _transfer_syntax(ds, path).name
    if not plugins:
        return decode_with_gdcm([path], name)[path]
    failure: Exception | None = None
    for plugin in plugins:  # the next decoder gets its chance when one fails on this file
        try:
            if plugin is not None:
                ds.pixel_array_options(decoding_plugin=plugin)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels = np.asarray(ds.pixel_array)
            return pixels[np.newaxis] if pixels.ndim == 2 else pixels
        except Exception as error:
            failure = failure or error
    raise BadInputError(f"cannot decode pixel data ({name}): {type(failure).__name__}: {failure}", path) from None


def load_series(series: DicomSeries, label: Path, modality: str = "auto", volume_index: int | None = None) -> Volume:
    """Decode a grouped series into a RAS+ :class:`Volume` (rescale applied, float32).

    A 4D series is refused unless ``volume_index`` picks one of its volumes (see ``volumes.py``);
    a 3D series ignores ``volume_index``.
    """
    first = series.frames[0]
    problem = next((frame for frame in series.frames if frame.problem), None)
    if problem is not None:
        raise BadInputError(f"series {series.case_id}: {problem.problem}", problem.path)
    check_voxel_count(first.rows * first.columns * len(series.frames), label)
    axes = slice_axes(first, series.case_id, label)
    along = np.array([frame.position for frame in series.frames]) @ axes.normal
    frames, selection = select_volume(series.frames, along, series.case_id, volume_index, label)
    frames, affine_lps, warnings_ = stack_geometry(frames, axes, series.case_id, label)
    array = np.empty((first.columns, first.rows, len(frames)), dtype=np.float32)
    decoded = _decode_with_gdcm(series, sorted({frame.path for frame in frames}))
    unpacked: dict[Path, np.ndarray] = {}
    for k, frame in enumerate(frames):
        if frame.path not in unpacked:
            unpacked[frame.path] = _decode_frames(series, frame.path, frame.mosaic, decoded.get(frame.path))
        pixels = unpacked[frame.path]
        index = frame.frame_index or 0
        if index >= pixels.shape[0] or pixels.shape[1:] != (first.rows, first.columns):
            raise BadInputError(f"pixel data does not match Rows/Columns/NumberOfFrames (shape {pixels.shape})", frame.path)
        array[:, :, k] = pixels[index].T.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
    check_finite(array, label)
    slopes = {(f.slope, f.intercept) for f in frames}
    rescale: dict[str, Any] = (
        {"slope": first.slope, "intercept": first.intercept} if len(slopes) == 1 else {"per_slice": True}
    )
    if modality == "auto":
        modality = MODALITY_NAMES.get(series.modality.upper(), "unknown")
    metadata: dict[str, Any] = {
        "source_format": "dicom",
        "dicom_modality": series.modality,
        "manufacturer_model": series.model_name,
        "slices": len(frames),
        "rescale": rescale,
        "transfer_syntax": sorted(UID(ts).name or ts for ts in series.transfer_syntaxes),
        "warnings": warnings_,
    }
    if first.mosaic is not None:
        metadata["mosaic"] = {"images": first.mosaic.count, "grid": first.mosaic.grid}
    if selection is not None:
        metadata["selected_volume"] = selection
    affine = LPS_TO_RAS @ affine_lps
    check_affine(affine, label)
    return Volume(array, affine, modality, metadata)


def _decode_with_gdcm(series: DicomSeries, paths: list[Path]) -> dict[Path, np.ndarray]:
    """Pixels of the files only GDCM decodes, all in one child process (empty when there are none)."""
    needing: dict[str, list[Path]] = {}
    for path in paths:
        ds = series.datasets.get(path)
        if ds is not None and not decoders(ds, path):
            needing.setdefault(_transfer_syntax(ds, path).name, []).append(path)
    decoded: dict[Path, np.ndarray] = {}
    for syntax_name, files in needing.items():
        decoded.update(decode_with_gdcm(files, syntax_name))
    return decoded


def _decode_frames(series: DicomSeries, path: Path, mosaic: Any, pixels: np.ndarray | None) -> np.ndarray:
    """All frames (or mosaic tiles) of one file as (frames, rows, columns); ``pixels`` if decoded already."""
    try:
        if pixels is None:
            ds = series.datasets.get(path) or read_dataset(path, header_only=False)
            pixels = decode(ds, path)
    except BadInputError:
        raise
    except Exception as error:  # a malformed element met only now (values are parsed lazily)
        detail = " ".join(str(error).split())[:120]
        raise BadInputError(f"malformed DICOM ({type(error).__name__}: {detail})", path) from None
    if mosaic is None:
        return pixels
    if pixels.shape != (1, mosaic.grid * mosaic.rows, mosaic.grid * mosaic.columns):
        raise BadInputError(f"mosaic pixel data of shape {pixels.shape} does not match Rows/Columns", path)
    return unpack_mosaic(pixels, mosaic)


def read_dicom(path: str | Path, modality: str = "auto", case_id: str | None = None,
               files: Iterable[Path] | None = None, volume_index: int | None = None) -> Volume:
    """Read one DICOM file, or the single series of a folder (``case_id`` picks one of several).

    Localizers and non-image objects beside the series are skipped (counted in ``skipped_files``);
    ``volume_index`` picks one volume of a 4D series.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError("no such file or folder", path)
    if files:
        candidates = [Path(f) for f in files]
    elif path.is_dir():
        candidates = find_dicom_files(path)
    else:
        candidates = [path]
    series, skipped = scan_dicom_files(candidates)
    if path.is_file() and not series:
        reason = skipped[0][1] if skipped else "not a DICOM image"
        raise BadInputError(reason, path)
    if case_id is not None:
        series = [s for s in series if s.case_id == case_id]
        if not series:
            raise InputNotFoundError(f"DICOM series {case_id} not found (folder changed since discovery?)", path)
    if not series:
        reasons = Counter(reason for _, reason in skipped)
        detail = "; ".join(f"{n} file(s): {r}" for r, n in reasons.most_common(3))
        raise InputNotFoundError("no DICOM image series found" + (f" ({detail})" if detail else ""), path)
    if len(series) > 1:
        listing = ", ".join(s.describe() for s in series)
        raise BadInputError(f"{len(series)} DICOM series found, expected one: {listing}", path)
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # malformed values fail below, not warn on stderr
        warnings.simplefilter("ignore")
        volume = load_series(series[0], path, modality, volume_index)
    if skipped:
        volume.metadata["skipped_files"] = dict(Counter(reason for _, reason in skipped))
    return volume
