"""Capture a disk, or what a child changed against its base, as chunks on the 64 KiB grid."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from strata.blockdev.base import BlockDevice, ExtentState
from strata.blockdev.copy import Progress, iter_blocks
from strata.store import Store, chunk_table, register_schema
from strata.store.chunkstore import PutStats

BLOCK_SIZE = 64 << 10
# Windows read at once for a capture: one. The store's compression threads already use every
# core, so a second read thread only competes with them (measured, fresh process per run,
# alternating: finalize of the benchmark's VHD packaging disk, medians 0.530 and 0.547 s with
# one, 0.558 and 0.563 s with two, in runs of 6 and 8 pairs; an OS import of 1 GiB of data
# from raw or VHD, 1.28-1.33 s either way). Converts, which write where the store compresses,
# keep two.
CAPTURE_READS = 1
SECTOR_MASK_ROW = np.dtype([("offset", "<u8"), ("mask", "V16")])
register_schema("sector-mask-v1", SECTOR_MASK_ROW)


@dataclass
class Capture:
    blocks: np.ndarray
    masks: np.ndarray | None
    stats: PutStats


def split_blocks(runs: Iterable[tuple[int, memoryview]]) -> Iterator[tuple[int, memoryview]]:
    """Cut runs of whole blocks into single 64 KiB blocks (the last may be shorter)."""
    for offset, data in runs:
        for at in range(0, len(data), BLOCK_SIZE):
            yield offset + at, data[at : at + BLOCK_SIZE]


def capture_disk(
    store: Store, dev: BlockDevice, *, level: int | None = None, progress: Progress | None = None
) -> Capture:
    """Every non-zero block of ``dev`` (zero and unallocated space elided)."""
    blocks = iter_blocks(dev, BLOCK_SIZE, progress=progress, max_reads=CAPTURE_READS)
    runs = ((b.offset, b.data) for b in blocks)
    stats = PutStats()
    table = store.put_blocks(split_blocks(runs), level=level, stats=stats)
    return Capture(table, None, stats)


def allocated_ranges(layer: BlockDevice) -> Iterator[tuple[int, int]]:
    """Where a layer itself holds something (data or explicit zeros): what it may have changed."""
    for ext in layer.extents(0, layer.size):
        if ext.state != ExtentState.UNALLOCATED:
            yield ext.offset, ext.end


def capture_delta(
    store: Store,
    disk: BlockDevice,
    base: BlockDevice,
    *,
    within: Iterable[tuple[int, int]] | None,
    level: int | None = None,
    progress: Progress | None = None,
) -> Capture:
    """The blocks of ``disk`` in which some sector differs from ``base``, with sector masks."""
    offsets: list[int] = []
    masks: list[bytes] = []

    def blocks() -> Iterator[tuple[int, memoryview]]:
        changed = iter_blocks(
            disk, BLOCK_SIZE, base=base, within=within, progress=progress, max_reads=CAPTURE_READS
        )
        for blk in changed:
            offsets.append(blk.offset)
            masks.append((blk.changed or b"").ljust(16, b"\0")[:16])
            yield blk.offset, blk.data

    stats = PutStats()
    table = store.put_blocks(blocks(), level=level, stats=stats)
    mask_rows = np.zeros(len(offsets), SECTOR_MASK_ROW)
    if offsets:
        mask_rows["offset"] = offsets
        mask_rows["mask"] = np.frombuffer(b"".join(masks), "V16")
    return Capture(table, mask_rows, stats)


def empty_table() -> np.ndarray:
    return chunk_table([], [], [])
