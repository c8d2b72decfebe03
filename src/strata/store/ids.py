"""Chunk ids: the xxh3-128 digest of a chunk's uncompressed bytes.

References: xxHash XXH3 128-bit (https://github.com/Cyan4973/xxHash, doc/xxhash_spec.md).
"""

from __future__ import annotations

import xxhash

from strata.errors import InvalidInput

Buffer = bytes | bytearray | memoryview

ID_SIZE = 16
# An all-zero chunk is never stored; tables name it with this id and its length.
ZERO_ID = bytes(ID_SIZE)


def chunk_id(data: Buffer) -> bytes:
    return xxhash.xxh3_128_digest(data)


def to_hex(cid: bytes) -> str:
    return bytes(cid).hex()


def from_hex(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError as e:
        raise InvalidInput(f"{text!r} is not a chunk id (32 hex digits)") from e
    if len(raw) != ID_SIZE:
        raise InvalidInput(f"{text!r} is not a chunk id (32 hex digits)")
    return raw
