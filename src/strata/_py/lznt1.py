"""LZNT1 decompression, the reference of ``strata._native.lznt1_decompress``.

References: Russon & Fledel "NTFS Documentation" 7.4; [MS-XCA] 2.5 (LZNT1): a chunk header's
low 12 bits are the stored size minus 3 (header included), bit 15 says compressed; a back
reference splits its 16 bits between offset and length by the position in the 4 KiB chunk.

Returns ``(data, problem, position)``: the output (at most ``limit`` bytes) and None, or what
is wrong with the stream and where; the caller raises (``fs.ntfs.lznt1``).
"""

from __future__ import annotations

# Russon 7.4: chunks of up to 4 KiB uncompressed behind a 16-bit header.
CHUNK = 4096
COMPRESSED = 0x8000
SIZE_MASK = 0x0FFF


class _Bad(Exception):
    def __init__(self, problem: str, pos: int) -> None:
        self.problem, self.pos = problem, pos


def _split(pos: int) -> tuple[int, int]:
    """(length mask, offset shift) for a back reference at ``pos`` bytes into the chunk."""
    mask, shift, p = 0x0FFF, 12, pos - 1
    while p >= 0x10:
        mask >>= 1
        shift -= 1
        p >>= 1
    return mask, shift


def _chunk(data: bytes, start: int, end: int, out: bytearray) -> None:
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
                raise _Bad("back reference cut short", pos)
            token = data[pos] | data[pos + 1] << 8
            pos += 2
            done = len(out) - base
            if done == 0:
                raise _Bad("back reference before any literal", pos)
            mask, shift = _split(done)
            length, offset = (token & mask) + 3, (token >> shift) + 1
            if offset > done or done + length > CHUNK:
                raise _Bad(f"back reference {offset} bytes back, {length} long", pos)
            src = len(out) - offset
            if offset >= length:
                out += out[src : src + length]
            else:
                pattern = out[src:]
                out += (pattern * (length // offset + 1))[:length]


def lznt1_decompress(data: bytes, limit: int) -> tuple[bytes, str | None, int]:
    out = bytearray()
    pos = 0
    try:
        while pos + 2 <= len(data) and len(out) < limit:
            header = data[pos] | data[pos + 1] << 8
            if header == 0:
                break
            size = (header & SIZE_MASK) + 1
            start, end = pos + 2, pos + 2 + size
            if end > len(data):
                raise _Bad(f"chunk of {size} bytes runs past the unit", pos)
            if header & COMPRESSED:
                before = len(out)
                _chunk(data, start, end, out)
                if len(out) - before > CHUNK:
                    raise _Bad("chunk expands past 4 KiB", pos)
            else:
                out += data[start:end]
            pos = end
    except _Bad as bad:
        return b"", bad.problem, bad.pos
    return bytes(out[:limit]), None, 0
