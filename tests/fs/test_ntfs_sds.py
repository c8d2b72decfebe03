"""$Secure:$SDS entry walk (``sds_entries``) against an $SDS laid out as Russon & Fledel 3.12
describe it, built here with ``struct`` (the builder knows where it put each descriptor): 16-byte
aligned entries, each 256 KiB block followed by its mirror, a block's unused tail ending it; a
duplicated id keeps its first entry; damaged headers neither hang nor raise."""

from __future__ import annotations

import random
import struct

from strata.fs.ntfs import structs as s
from strata.fs.ntfs.volume import sds_entries

BLOCK = 256 * 1024


def _build(count: int, seed: int) -> tuple[bytes, dict[int, bytes]]:
    """An $SDS of ``count`` descriptors (ids 256..) spanning several blocks, with each block
    copied to its mirror; the descriptor each id must read as."""
    rng = random.Random(seed)
    blocks: list[bytearray] = [bytearray(BLOCK)]
    truth: dict[int, bytes] = {}
    pos = 0  # inside the current block
    for i in range(count):
        sd = rng.randbytes(rng.randrange(40, 400))
        length = 20 + len(sd)
        if pos + length > BLOCK:  # the tail stays zero: the next entry starts a new block
            blocks.append(bytearray(BLOCK))
            pos = 0
        at = 2 * BLOCK * (len(blocks) - 1) + pos  # stream offset: block k sits at 2k blocks
        sid = 256 + i
        blocks[-1][pos : pos + length] = (
            struct.pack("<IIQI", rng.getrandbits(32), sid, at, length) + sd
        )
        truth.setdefault(sid, sd)
        pos += -(-length // 16) * 16
    data = b"".join(bytes(b) + bytes(b) for b in blocks)  # each block, then its mirror
    return data, truth


def _read(data: bytes) -> dict[int, bytes]:
    return {sid: data[a:b] for sid, (a, b) in sds_entries(data).items()}


def test_every_descriptor_is_found_across_blocks_and_mirrors() -> None:
    data, truth = _build(5000, 1)
    assert len(data) > 4 * BLOCK  # several blocks and their mirrors
    assert _read(data) == truth


def test_a_repeated_id_keeps_its_first_entry() -> None:
    data, truth = _build(50, 2)
    first = bytearray(data)
    at = sds_entries(data)[300][0] - s.SDS_ENTRY_SIZE
    struct.pack_into("<I", first, at + 4, 256)  # entry of id 300 now claims id 256
    got = _read(bytes(first))
    assert got[256] == truth[256] and 300 not in got


def test_damaged_headers_end_the_block_without_error() -> None:
    data, truth = _build(600, 3)
    rng = random.Random(4)
    for _ in range(300):
        bad = bytearray(data)
        for _ in range(8):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        spans = sds_entries(bytes(bad))
        assert all(0 <= a <= b <= len(bad) for a, b in spans.values())
        assert len(spans) <= len(truth)
