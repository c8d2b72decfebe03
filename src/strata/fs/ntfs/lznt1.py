"""LZNT1 decompression, the codec of NTFS compressed files (one compression unit at a time).

References: Russon & Fledel "NTFS Documentation" 7.4; [MS-XCA] 2.5.  The decoder is a kernel
(``native.lznt1_decompress``, C, with the pure-Python reference in ``strata._py.lznt1``);
this turns what it says is wrong with a stream into the error that names it.
"""

from __future__ import annotations

from strata.errors import CorruptImage
from strata.native import lznt1_decompress


def decompress(data: bytes, limit: int, where: str = "<lznt1>") -> bytes:
    """Decompress ``data`` (one compression unit) to at most ``limit`` bytes."""
    out, problem, pos = lznt1_decompress(data, limit)
    if problem is not None:
        raise CorruptImage(path=where, structure="LZNT1 stream", problem=f"{problem} at byte {pos}")
    return out
