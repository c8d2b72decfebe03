"""A small LZNT1 compressor for tests: streams that exercise every path of the decoder.

References: [MS-XCA] 2.5 (LZNT1); Russon & Fledel "NTFS Documentation" 7.4.  Greedy matching
over a hash of the next three bytes; not what Windows emits byte for byte, but every stream it
writes is valid LZNT1 (checked against ntfs-3g-written files by the decoder tests).
"""

from __future__ import annotations

CHUNK = 4096


def _split(pos: int) -> tuple[int, int]:
    """(length mask, offset shift) of a back reference ``pos`` bytes into its chunk: the
    offset takes as many bits as ``pos - 1`` needs, at least 4 ([MS-XCA] 2.5.1.1), the length
    the rest of the 16."""
    length_bits = 16 - max(4, (pos - 1).bit_length())
    return (1 << length_bits) - 1, length_bits


def _compress_chunk(chunk: bytes) -> bytes:
    out = bytearray()
    pos = 0
    last: dict[bytes, int] = {}
    while pos < len(chunk):
        flags_at = len(out)
        out.append(0)
        for bit in range(8):
            if pos >= len(chunk):
                break
            mask, shift = _split(pos) if pos else (0, 0)
            key = chunk[pos : pos + 3]
            cand = last.get(key) if pos and len(key) == 3 else None
            length = 0
            if cand is not None and pos - cand <= (0xFFFF >> shift) + 1:
                limit = min(len(chunk) - pos, mask + 3)
                while length < limit and chunk[cand + length] == chunk[pos + length]:
                    length += 1
            for i in range(pos, pos + max(length, 1)):
                if i + 3 <= len(chunk):
                    last[chunk[i : i + 3]] = i
            if length >= 3:
                token = ((pos - cand - 1) << shift) | (length - 3)  # type: ignore[operator]
                out += token.to_bytes(2, "little")
                out[flags_at] |= 1 << bit
                pos += length
            else:
                out.append(chunk[pos])
                pos += 1
    return bytes(out)


def compress(data: bytes) -> bytes:
    """LZNT1 stream of ``data``: each 4 KiB chunk compressed, or stored when that is smaller."""
    out = bytearray()
    for at in range(0, len(data), CHUNK):
        chunk = data[at : at + CHUNK]
        packed = _compress_chunk(chunk)
        if len(packed) < len(chunk):
            out += (0xB000 | (len(packed) - 1)).to_bytes(2, "little") + packed
        else:
            out += (0x3000 | (len(chunk) - 1)).to_bytes(2, "little") + chunk
    return bytes(out)
