"""The streamOptimized writer, in VMware's canonical layout, deflating on every core.

References: VMware Virtual Disk Format 5.0 §"Stream-Optimized Compressed Sparse
Extents".  Layout: header (gdOffset = GD_AT_END) and embedded descriptor in the
first grain; then grains, each a marker {lba, size} and zlib data padded to a
sector; after the grains of each 32 MiB span a GT marker and its grain table
(empty tables are omitted, their GD entry 0); then the GD marker and grain
directory, the footer marker and a header copy holding the real gdOffset, and
the end-of-stream marker.  Zero grains are never written.

zlib releases the GIL, so grains are deflated in a thread pool with a bounded
number of batches in flight and written in order.
"""

from __future__ import annotations

import os
import zlib
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from strata.blockdev.copy import Block
from strata.errors import Unsupported
from strata.formats.vmdk import structs as s

BATCH = 1 << 20  # bytes of disk per deflate task
SAMPLE = 4096
# Each grain's deflate is chosen from a 4 KiB sample, all choices valid zlib
# streams: stored blocks (level 0) when the sample does not shrink (already
# compressed data: ~10x faster, at most 0.1 % larger); Huffman-only when it
# does as well as LZ77 (low-entropy data without repeats: ~2x faster and
# smaller); otherwise the requested level.  Measured on tests' mixed_bytes.
INCOMPRESSIBLE = 0.97
HUFFMAN_SLACK = 1.05
GT_SECTORS = s.GTES_PER_GT * 4 // s.SECTOR


@dataclass
class StreamPlan:
    capacity: int  # sectors
    descriptor: bytes
    grain_size: int = s.GRAIN_SECTORS
    level: int = 1

    @property
    def grain_bytes(self) -> int:
        return self.grain_size * s.SECTOR

    @property
    def num_gts(self) -> int:
        grains = -(-self.capacity // self.grain_size)
        return -(-grains // s.GTES_PER_GT)

    @property
    def descriptor_sectors(self) -> int:
        return max(s.DESCRIPTOR_SECTORS, -(-len(self.descriptor) // s.SECTOR))

    @property
    def overhead(self) -> int:
        """Sectors before the first grain: header and descriptor, rounded to a grain."""
        used = 1 + self.descriptor_sectors
        return -(-used // self.grain_size) * self.grain_size

    def header(self, gd_offset: int) -> bytes:
        return s.build_header(
            version=3,
            flags=s.FLAG_NEWLINE_TEST | s.FLAG_COMPRESSED | s.FLAG_MARKERS,
            capacity=self.capacity,
            grain_size=self.grain_size,
            descriptor_offset=1,
            descriptor_size=self.descriptor_sectors,
            num_gtes_per_gt=s.GTES_PER_GT,
            rgd_offset=0,
            gd_offset=gd_offset,
            overhead=self.overhead,
            compress_algorithm=s.COMPRESSION_DEFLATE,
        )


def _deflate(
    data: bytes | memoryview, level: int, strategy: int = zlib.Z_DEFAULT_STRATEGY
) -> bytes:
    packer = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 8, strategy)
    return packer.compress(data) + packer.flush()


def deflate_grain(data: bytes | memoryview, level: int) -> bytes:
    if level == 0 or len(data) <= SAMPLE:
        return zlib.compress(data, level)
    sample = data[:SAMPLE]
    lz = len(zlib.compress(sample, 1))
    if lz > SAMPLE * INCOMPRESSIBLE:
        return zlib.compress(data, 0)
    if len(_deflate(sample, 1, zlib.Z_HUFFMAN_ONLY)) <= lz * HUFFMAN_SLACK:
        return _deflate(data, 1, zlib.Z_HUFFMAN_ONLY)
    return zlib.compress(data, level)


def deflate_batch(
    first_lba: int, data: bytes, grain_bytes: int, level: int
) -> tuple[list[int], bytes]:
    """Marker-framed, sector-padded compressed grains and each one's length in sectors."""
    view = memoryview(data)
    pieces: list[bytes] = []
    sectors: list[int] = []
    grain_sectors = grain_bytes // s.SECTOR
    for index, start in enumerate(range(0, len(view), grain_bytes)):
        chunk = view[start : start + grain_bytes]
        packed = deflate_grain(chunk, level)
        head = s.GRAIN_MARKER.pack(first_lba + index * grain_sectors, len(packed))
        total = len(head) + len(packed)
        pad = -total % s.SECTOR
        pieces += [head, packed, bytes(pad)]
        sectors.append((total + pad) // s.SECTOR)
    return sectors, b"".join(pieces)


@dataclass
class StreamWriter:
    """Writes one streamOptimized file from blocks in increasing offset order."""

    out: BinaryIO
    plan: StreamPlan
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    gd: np.ndarray = field(init=False)
    gt: np.ndarray = field(init=False)
    gt_index: int = field(init=False, default=-1)

    def __post_init__(self) -> None:
        self.gd = np.zeros(self.plan.num_gts, s.GTE_DTYPE)
        self.gt = np.zeros(s.GTES_PER_GT, s.GTE_DTYPE)
        head = self.plan.header(s.GD_AT_END)
        desc = self.plan.descriptor.ljust(self.plan.descriptor_sectors * s.SECTOR, b"\0")
        self.out.write(head + desc)
        self.out.write(bytes(self.plan.overhead * s.SECTOR - len(head) - len(desc)))

    def write_blocks(self, blocks: Iterable[Block]) -> None:
        gb = self.plan.grain_bytes
        in_flight: deque[tuple[int, Future[tuple[list[int], bytes]]]] = deque()
        limit = 2 * self.workers + 2
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for blk in blocks:
                for lo in range(0, len(blk.data), BATCH):
                    chunk = bytes(blk.data[lo : lo + BATCH])
                    if len(chunk) % gb:
                        # The disk's last grain is partial: store it whole, as VMware does.
                        chunk += bytes(gb - len(chunk) % gb)
                    grain = (blk.offset + lo) // gb
                    job = pool.submit(
                        deflate_batch, grain * self.plan.grain_size, chunk, gb, self.plan.level
                    )
                    in_flight.append((grain, job))
                    while len(in_flight) > limit:
                        self._emit(*in_flight.popleft())
            while in_flight:
                self._emit(*in_flight.popleft())

    def _emit(self, first_grain: int, job: Future[tuple[list[int], bytes]]) -> None:
        sectors, blob = job.result()
        ends = np.cumsum(sectors, dtype=np.int64)
        starts = ends - np.asarray(sectors, np.int64)
        tables = (first_grain + np.arange(len(sectors))) // s.GTES_PER_GT
        cuts = np.flatnonzero(np.diff(tables)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(sectors)], strict=True):
            # A grain table follows its grains, so switch tables before writing the next run.
            self._switch_gt(int(tables[a]))
            here = self.out.tell() // s.SECTOR
            self._addressable(here + int(starts[b - 1] - starts[a]))
            slots = (first_grain + np.arange(a, b)) % s.GTES_PER_GT
            self.gt[slots] = here + starts[a:b] - starts[a]
            self.out.write(
                memoryview(blob)[int(starts[a]) * s.SECTOR : int(ends[b - 1]) * s.SECTOR]
            )

    def _switch_gt(self, index: int) -> None:
        if index != self.gt_index:
            self._flush_gt()
            self.gt_index = index

    def _flush_gt(self) -> None:
        if self.gt_index < 0 or not self.gt.any():
            return
        self.out.write(s.metadata_marker(s.MARKER_GT, GT_SECTORS))
        self.gd[self.gt_index] = self._addressable(self.out.tell() // s.SECTOR)
        self.out.write(self.gt.tobytes())
        self.gt[:] = 0

    def _addressable(self, sector: int) -> int:
        """``sector`` when a 32-bit table entry can hold it (numpy would wrap it silently)."""
        if sector >= s.MAX_EXTENT_SECTORS:
            size = self.plan.capacity * s.SECTOR
            raise Unsupported(
                what=f"a streamOptimized VMDK of {size} bytes whose data compresses too little: "
                "the file outgrows the 2 TiB its 32-bit grain tables address "
                "(monolithicSparse or twoGbMaxExtentSparse hold it)"
            )
        return sector

    def finish(self) -> int:
        """Write the tables, GD, footer and end-of-stream; returns the file size."""
        self._flush_gt()
        gd_bytes = self.gd.tobytes()
        gd_sectors = -(-len(gd_bytes) // s.SECTOR)
        self.out.write(s.metadata_marker(s.MARKER_GD, gd_sectors))
        gd_offset = self.out.tell() // s.SECTOR
        self.out.write(gd_bytes.ljust(gd_sectors * s.SECTOR, b"\0"))
        self.out.write(s.metadata_marker(s.MARKER_FOOTER, 1))
        self.out.write(self.plan.header(gd_offset))
        self.out.write(s.metadata_marker(s.MARKER_EOS, 0))
        self.out.flush()
        return self.out.tell()
