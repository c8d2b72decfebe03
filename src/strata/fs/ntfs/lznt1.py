"""LZNT1 decompression, the codec of NTFS compressed files (one compression unit at a time).

References: Russon & Fledel "NTFS Documentation" 7.4; [MS-XCA] 2.5 (LZNT1): a chunk header's
low 12 bits are the stored size minus 3 (header included), bit 15 says compressed; a back
reference splits its 16 bits between offset and length by the position in the 4 KiB chunk.
"""

from __future__ import annotations

from strata.errors import CorruptImage
from strata.fs.ntfs import structs as s


def _split(pos: int) -> tuple[int, int]:
    """(length mask, offset shift) for a back reference at ``pos`` bytes into the chunk."""
    mask, shift, p = 0x0FFF, 12, pos - 1
    while p >= 0x10:
        mask >>= 1
        shift -= 1
        p >>= 1
    return mask, shift


def _chunk(data: bytes, start: int, end: int, out: bytearray, where: str) -> None:
    base = len(out)
    pos = start
    while pos < end:
        flags = data[pos]
        pos += 1
        for bit in range(8):
            if pos >= end:
                return
            if not flags >> bit & 1:
                out.append(data[pos])
                pos += 1
                continue
            if pos + 2 > end:
                raise _bad("back reference cut short", where, pos)
            token = data[pos] | data[pos + 1] << 8
            pos += 2
            done = len(out) - base
            if done == 0:
                raise _bad("back reference before any literal", where, pos)
            mask, shift = _split(done)
            length, offset = (token & mask) + 3, (token >> shift) + 1
            if offset > done or done + length > s.LZNT1_CHUNK:
                raise _bad(f"back reference {offset} bytes back, {length} long", where, pos)
            src = len(out) - offset
            if offset >= length:
                out += out[src : src + length]
            else:
                pattern = out[src:]
                out += (pattern * (length // offset + 1))[:length]


def decompress(data: bytes, limit: int, where: str = "<lznt1>") -> bytes:
    """Decompress ``data`` (one compression unit) to at most ``limit`` bytes."""
    out = bytearray()
    pos = 0
    while pos + 2 <= len(data) and len(out) < limit:
        header = data[pos] | data[pos + 1] << 8
        if header == 0:
            break
        size = (header & s.LZNT1_SIZE_MASK) + 1
        start, end = pos + 2, pos + 2 + size
        if end > len(data):
            raise _bad(f"chunk of {size} bytes runs past the unit", where, pos)
        if header & s.LZNT1_COMPRESSED:
            before = len(out)
            _chunk(data, start, end, out, where)
            if len(out) - before > s.LZNT1_CHUNK:
                raise _bad("chunk expands past 4 KiB", where, pos)
        else:
            out += data[start:end]
        pos = end
    return bytes(out[:limit])


def _bad(problem: str, where: str, pos: int) -> CorruptImage:
    return CorruptImage(path=where, structure="LZNT1 stream", problem=f"{problem} at byte {pos}")
