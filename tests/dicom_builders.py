"""Builders of scanner-like DICOM for the reader tests: Siemens mosaics with a CSA header, 4D series,
localizers, and a reference lossless-JPEG (process 14, any predictor) encoder. Each is written from the
DICOM/JPEG definitions, independently of the reader under test."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLossless, generate_uid
from scipy.spatial.transform import Rotation

from meddiff_cli.io import LPS_TO_RAS, Volume, write_dicom_series

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def oblique_volume(seed: int, shape=(12, 10, 5), angles=(10.0, -20.0, 30.0), flip_k: bool = False) -> Volume:
    """Integer-valued MR-like volume on an oblique grid; ``flip_k`` makes k run against row x column."""
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() * np.array([1.5, 1.25, 3.0])
    if flip_k:
        affine[:3, 2] *= -1
    affine[:3, 3] = [20.0, -35.5, 12.0]
    return Volume(rng.integers(0, 3000, shape).astype(np.float32), affine, "mri")


CSA_VR = {"NumberOfImagesInMosaic": b"US", "SliceNormalVector": b"FD"}  # as syngo declares them


def csa_bytes(tags: dict[str, list[str]]) -> bytes:
    """A Siemens CSA2 (``SV10``) header holding ``tags`` (values as text, as syngo writes them)."""
    out = bytearray(b"SV10\x04\x03\x02\x01" + struct.pack("<2I", len(tags), 77))
    for name, values in tags.items():
        vr = CSA_VR.get(name, b"LO")
        out += struct.pack("<64si4s3i", name.encode(), len(values), vr + b"\0\0", 3, len(values), 77)
        for value in values:
            data = value.encode() + b"\0"
            out += struct.pack("<4i", len(data), len(data), 77, len(data)) + data + b"\0" * (-len(data) % 4)
    return bytes(out)


def _base_dataset(path: Path, series_uid: str, modality: str = "MR") -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.Manufacturer = modality, series_uid, "SIEMENS"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def write_mosaic(volume: Volume, path: Path, series_uid: str, *, acquisition: int = 1, private_count: bool = True,
                 csa_count: bool = True, csa_normal: bool = True, count: int | None = None) -> Path:
    """``volume`` as one Siemens mosaic file: tiles row by row on a ceil(sqrt(n)) grid, the mosaic
    ImagePositionPatient (tile-sized image centred on the frame) and the CSA SliceNormalVector."""
    lps = LPS_TO_RAS @ volume.affine
    sizes = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir, normal = (lps[:3, axis] / sizes[axis] for axis in range(3))
    columns, rows, slices = volume.shape
    grid = math.ceil(math.sqrt(slices))
    frame = np.zeros((grid * rows, grid * columns), dtype=np.uint16)
    for k in range(slices):
        r, c = divmod(k, grid)
        frame[r * rows:(r + 1) * rows, c * columns:(c + 1) * columns] = volume.array[:, :, k].T
    shift = col_dir * sizes[1] * (grid * rows - rows) / 2 + row_dir * sizes[0] * (grid * columns - columns) / 2
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _base_dataset(path, series_uid)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM", "MOSAIC"]
    ds.AcquisitionNumber, ds.InstanceNumber = acquisition, acquisition
    ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] - shift]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
    ds.PixelSpacing = [f"{sizes[1]:.6f}", f"{sizes[0]:.6f}"]
    ds.SliceThickness = ds.SpacingBetweenSlices = f"{sizes[2]:.6f}"
    ds.Rows, ds.Columns = frame.shape
    number = slices if count is None else count
    if private_count:
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0A, "US", number)
    tags = {}
    if csa_count:
        tags["NumberOfImagesInMosaic"] = [str(number)]
    if csa_normal:
        tags["SliceNormalVector"] = [f"{v:.8f}" for v in normal]
    if tags:
        ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", csa_bytes(tags))
    ds.PixelData = frame.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_4d_series(volumes: list[Volume], folder: Path, tag: str = "AcquisitionNumber") -> Path:
    """Several volumes of one geometry as one classic series, volume v having ``tag`` = v + 1, files shuffled."""
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(volumes))
    for v, volume in enumerate(volumes):
        written = write_dicom_series(volume, folder.parent / f".{folder.name}-{v}", modality="mri")
        for path in sorted(written.iterdir()):
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID = series_uid
            setattr(ds, tag, v + 1)
            ds.save_as(folder / f"{rng.integers(1 << 40):010x}")
            path.unlink()
        written.rmdir()
    return folder


def write_localizer(folder: Path) -> Path:
    """A GE-style 3-plane localizer: one series, one slice in each of three orientations, ImageType LOCALIZER."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for index, orientation in enumerate(([1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1])):
        ds = _base_dataset(folder / f"loc{index}", series_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [-100, -100, 0], orientation
        ds.PixelSpacing, ds.SliceThickness, ds.Rows, ds.Columns = [4, 4], 5, 16, 16
        ds.PixelData = np.full((16, 16), 100 + index, dtype=np.uint16).tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)
    return folder


# ---------------------------------------------------------------------------------- lossless JPEG (ITU T.81 H)


def _predict(x: np.ndarray, predictor: int, precision: int) -> np.ndarray:
    """Prediction of every sample (H.1.2.1): first sample 2^(P-1), first row Ra, first column Rb."""
    ra, rb, rc = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    ra[:, 1:], rb[1:, :], rc[1:, 1:] = x[:, :-1], x[:-1, :], x[:-1, :-1]
    p = {1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1), 6: rb + ((ra - rc) >> 1),
         7: (ra + rb) >> 1}[predictor].copy()
    p[0, :], p[1:, 0] = ra[0, :], rb[1:, 0]
    p[0, 0] = 1 << (precision - 1)
    return p


def encode_lossless_jpeg(image: np.ndarray, precision: int, predictor: int) -> bytes:
    """One-component lossless JPEG (SOF3, point transform 0) with a fixed Huffman table: every
    difference category 0..16 gets a 5-bit code (valid: 17 codes of length 5, none all ones)."""
    x = image.astype(np.int64)
    diff = (x - _predict(x, predictor, precision)) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
    bits: list[str] = []
    for d in diff:
        d = int(d)
        category = 16 if d == -32768 else abs(d).bit_length()
        bits.append(f"{category:05b}")
        if 0 < category < 16:
            bits.append(f"{(d if d > 0 else d + (1 << category) - 1):0{category}b}")
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)
    rows, columns = image.shape
    counts = [0] * 16
    counts[4] = 17
    dht = bytes([0x00, *counts, *range(17)])
    return (b"\xff\xd8"
            + b"\xff\xc3" + struct.pack(">HBHHB", 11, precision, rows, columns, 1) + bytes([1, 0x11, 0])
            + b"\xff\xc4" + struct.pack(">H", 2 + len(dht)) + dht
            + b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0x00, predictor, 0, 0])
            + bytes(data) + b"\xff\xd9")


def to_lossless_jpeg(path: Path, predictor: int) -> None:
    """Re-encode an uncompressed single-frame file in place as JPEG Lossless process 14 with ``predictor``."""
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.int64) & ((1 << ds.BitsAllocated) - 1)  # the bit pattern JPEG codes
    ds.PixelData = encapsulate([encode_lossless_jpeg(stored, int(ds.BitsStored), predictor)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.save_as(path)


def as_unsigned_12_bit_ct(folder: Path) -> None:
    """Turn a written int16 CT series into the common scanner form: uint16, 12 bits stored, intercept -1024."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.int32) + 1024
        assert stored.min() >= 0 and stored.max() < 4096
        ds.PixelData = stored.astype(np.uint16).tobytes()
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.save_as(path)
