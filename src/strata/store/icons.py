"""Layer icons: PNG or JPEG, recognised by content, never by name.

References: PNG (ISO/IEC 15948) section 5.2 signature and 11.2.2 IHDR with CRC-32;
JPEG (ITU-T T.81) B.1.1.2 SOI marker FFD8 and EOI marker FFD9.
"""

from __future__ import annotations

import struct
import zlib

from strata.errors import InvalidInput

MAX_ICON = 1 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR chunk: length u32 BE (13), type, width u32, height u32, 5 bytes of fields, CRC u32.
PNG_IHDR = struct.Struct(">I4sII5sI")


def icon_type(data: bytes) -> str:
    """``image/png`` or ``image/jpeg``; anything else is InvalidInput."""
    if len(data) > MAX_ICON:
        raise InvalidInput(f"icon of {len(data)} bytes is larger than {MAX_ICON}")
    if data.startswith(PNG_SIGNATURE):
        _check_png(data)
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise InvalidInput("icon is not a complete JPEG (no end-of-image marker)")
        return "image/jpeg"
    raise InvalidInput("icon is neither a PNG nor a JPEG image")


def _check_png(data: bytes) -> None:
    start = len(PNG_SIGNATURE)
    if len(data) < start + PNG_IHDR.size:
        raise InvalidInput("icon is a truncated PNG (no IHDR)")
    length, kind, width, height, _, crc = PNG_IHDR.unpack_from(data, start)
    if kind != b"IHDR" or length != 13:
        raise InvalidInput("icon is not a valid PNG (first chunk is not IHDR)")
    if zlib.crc32(data[start + 4 : start + 21]) != crc:
        raise InvalidInput("icon is not a valid PNG (IHDR CRC mismatch)")
    if not (0 < width <= 4096 and 0 < height <= 4096):
        raise InvalidInput(f"icon of {width}x{height} pixels is not a plausible icon")
    if b"IEND" not in data[-12:]:
        raise InvalidInput("icon is a truncated PNG (no IEND)")
