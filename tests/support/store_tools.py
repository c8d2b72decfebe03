"""Helpers for store tests: deterministic layer content, and a raw scan of pack files.

The scan reads pack files with nothing but ``struct`` and the documented frame layout (not
strata's reader), so tests can count physical copies of a chunk independently of the index.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from support.images import mixed_bytes

MiB = 1 << 20
PIECE = 8 * MiB
CHUNK = 64 << 10
INGEST = Path(__file__).with_name("store_ingest.py")
# Frame header: magic 4s, version B, codec B, flags H, raw_length I, stored_length I, id 16s.
FRAME = struct.Struct("<4sBBHII16s")
PACK_HEADER_SIZE = 16


def piece(seed: int, size: int = PIECE) -> bytes:
    """One deterministic piece of mixed content (random, text-like, zeros, low-entropy)."""
    return mixed_bytes(size, seed)


def blocks(seeds: Sequence[int], size: int = PIECE) -> Iterator[tuple[int, memoryview]]:
    """(offset, 64 KiB view) over the pieces of ``seeds``, generated one piece at a time."""
    offset = 0
    for seed in seeds:
        data = memoryview(piece(seed, size))
        for start in range(0, len(data), CHUNK):
            yield offset + start, data[start : start + CHUNK]
        offset += len(data)


def scan_pack(path: Path) -> list[tuple[bytes, int, int]]:
    """(id, offset, frame length) of every whole frame in a pack, in file order."""
    raw = path.read_bytes()
    out = []
    offset = PACK_HEADER_SIZE
    while offset + FRAME.size <= len(raw):
        magic, _, _, _, _, stored, cid = FRAME.unpack_from(raw, offset)
        if magic != b"SCHK" or offset + FRAME.size + stored > len(raw):
            break
        out.append((cid, offset, FRAME.size + stored))
        offset += FRAME.size + stored
    return out


def physical_copies(store: Path) -> Counter[bytes]:
    """How many frames of each chunk id the pack files physically hold."""
    counts: Counter[bytes] = Counter()
    for pack in sorted((store / "packs").glob("*.pack")):
        counts.update(cid for cid, _, _ in scan_pack(pack))
    return counts


def ingest_cmd(
    store: Path, layer: str, version: str, seeds: Sequence[int], size: int = PIECE
) -> list[str]:
    return [
        sys.executable,
        str(INGEST),
        str(store),
        layer,
        version,
        ",".join(map(str, seeds)),
        str(size),
    ]


def run_ingest(
    store: Path, layer: str, version: str, seeds: Sequence[int], size: int = PIECE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ingest_cmd(store, layer, version, seeds, size), capture_output=True, text=True, check=False
    )
