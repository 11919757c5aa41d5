"""Siemens CSA image header (private element (0029,xx10), creator ``SIEMENS CSA HEADER``).

Only the ``SV10`` (CSA2) layout, which every syngo MR version since VB writes, is parsed:
``SV10``, 4 unused bytes, uint32 tag count, uint32 unused; per tag a 64-byte name, int32 VM, 4-byte
VR, int32 syngo type, int32 item count, int32 unused; per item four int32 (the second is the
length) and the value, padded to 4 bytes. Everything is bounds-checked: the bytes come from a file.
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset

from meddiff_cli.io.dicom.headers import private_value

CSA_CREATOR = "SIEMENS CSA HEADER"
MAX_ITEMS = 1000  # nibabel's limit too: real headers hold about 100 tags of a few items


class CSAError(ValueError):
    """Bytes that do not parse as a CSA2 header."""


def parse_csa(data: bytes) -> dict[str, list[str]]:
    """Tag name -> its non-empty string values (numbers stay text; callers convert what they use)."""
    if data[:4] != b"SV10":
        raise CSAError("not a CSA2 (SV10) header")
    (count,) = _unpack("<I", data, 8)
    if not 0 < count <= MAX_ITEMS:
        raise CSAError(f"implausible tag count {count}")
    tags: dict[str, list[str]] = {}
    offset = 16
    for _ in range(count):
        name, vm, _vr, _syngo, items, _unused = _unpack("<64si4s3i", data, offset)
        offset += 84
        if not 0 <= items <= MAX_ITEMS:
            raise CSAError(f"implausible item count {items}")
        values = []
        for item in range(items):
            length = _unpack("<4i", data, offset)[1]
            offset += 16
            if length < 0 or offset + length > len(data):
                raise CSAError("item runs past the end of the header")
            text = data[offset : offset + length].split(b"\0", 1)[0].decode("latin-1").strip()
            if text and (vm <= 0 or item < vm):
                values.append(text)
            offset += length + (-length % 4)
        tags[name.split(b"\0", 1)[0].decode("latin-1")] = values
    return tags


def _unpack(layout: str, data: bytes, offset: int) -> tuple:
    size = struct.calcsize(layout)
    if offset + size > len(data):
        raise CSAError("header is truncated")
    return struct.unpack_from(layout, data, offset)


def csa_image_header(ds: Dataset) -> dict[str, list[str]] | None:
    """The parsed CSA image header of a Siemens file; None when absent (e.g. removed by anonymisation).

    A present but malformed header raises :class:`CSAError`: a mosaic must not be guessed from it.
    """
    raw = private_value(ds, 0x0029, CSA_CREATOR, 0x10)
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return None
    return parse_csa(bytes(raw))


def csa_numbers(header: dict[str, list[str]] | None, name: str) -> list[float] | None:
    """The numeric values of one CSA tag, or None when the tag is missing, empty or not numeric."""
    if not header or not header.get(name):
        return None
    try:
        return [float(value) for value in header[name]]
    except ValueError:
        return None
