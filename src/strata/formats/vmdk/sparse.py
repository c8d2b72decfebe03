"""Hosted sparse extents: header, grain directory, grain tables, grains.

References: VMware Virtual Disk Format 5.0 §"Hosted Sparse Extents",
§"Stream-Optimized Compressed Sparse Extents" (compressed grains read here; the
stream writer lives in ``stream.py``).

One :class:`SparseExtent` serves monolithicSparse, streamOptimized and each
file of twoGbMaxExtentSparse.  Grain tables load lazily, one per 32 MiB of
virtual disk, cached by file offset, so memory follows what is read and is
bounded by the file's size.
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from construct import ConstructError

from strata.blockdev.base import Extent, ExtentState
from strata.blockdev.rawfile import pread_exact, pwrite_all
from strata.errors import CorruptImage, TruncatedImage, Unsupported
from strata.formats.vmdk import structs as s

MAX_GRAIN_SECTORS = 2048  # 1 MiB; VMware writes 128, qemu accepts up to 1 GiB
MAX_CAPACITY = 1 << 37  # sectors (64 TiB): keeps the grain directory small
ParentRead = Callable[[int, memoryview], None]


@dataclass(frozen=True)
class Header:
    """A parsed SparseExtentHeader and where it came from (0, or the footer)."""

    version: int
    flags: int
    capacity: int
    grain_size: int
    descriptor_offset: int
    descriptor_size: int
    num_gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    overhead: int
    compress_algorithm: int
    check_bytes: tuple[int, int, int, int]
    file_offset: int = 0

    @property
    def compressed(self) -> bool:
        return bool(self.flags & s.FLAG_COMPRESSED)

    @property
    def markers(self) -> bool:
        return bool(self.flags & s.FLAG_MARKERS)

    @property
    def zeroed_grains(self) -> bool:
        return bool(self.flags & s.FLAG_ZEROED_GRAIN)

    @property
    def redundant(self) -> bool:
        return bool(self.flags & s.FLAG_REDUNDANT_GT)

    @property
    def grain_bytes(self) -> int:
        return self.grain_size * s.SECTOR

    @property
    def num_grains(self) -> int:
        return -(-self.capacity // self.grain_size)

    @property
    def num_gts(self) -> int:
        return -(-self.num_grains // self.num_gtes_per_gt)

    @property
    def gt_bytes(self) -> int:
        return self.num_gtes_per_gt * 4


def parse_header(raw: bytes, path: str, file_offset: int = 0) -> Header:
    """Decode and validate a 512-byte SparseExtentHeader."""
    if len(raw) < s.HEADER_SIZE:
        raise TruncatedImage(
            path=path, structure="sparse header", problem="file too short", offset=file_offset
        )
    try:
        h = s.SparseExtentHeader.parse(raw[: s.HEADER_SIZE])
    except ConstructError as e:
        raise CorruptImage(
            path=path,
            structure="sparse header",
            field="magic",
            problem=f"bad magic {raw[:4]!r}, expected {s.MAGIC!r}",
            offset=file_offset,
        ) from e
    header = Header(
        h.version,
        h.flags,
        h.capacity,
        h.grain_size,
        h.descriptor_offset,
        h.descriptor_size,
        h.num_gtes_per_gt,
        h.rgd_offset,
        h.gd_offset,
        h.overhead,
        h.compress_algorithm,
        (
            h.single_end_line_char,
            h.non_end_line_char,
            h.double_end_line_char1,
            h.double_end_line_char2,
        ),
        file_offset,
    )
    validate_header(header, path)
    return header


def validate_header(h: Header, path: str) -> None:
    def bad(field: str, problem: str, cls: type[CorruptImage] = CorruptImage) -> CorruptImage:
        return cls(
            path=path, structure="sparse header", field=field, problem=problem, offset=h.file_offset
        )

    if h.version not in (1, 2, 3):
        raise Unsupported(what=f"{path}: VMDK sparse header version {h.version}")
    if h.grain_size < 1 or h.grain_size > MAX_GRAIN_SECTORS or h.grain_size & (h.grain_size - 1):
        raise bad("grainSize", f"{h.grain_size} sectors is not a power of two up to 2048")
    if h.num_gtes_per_gt != s.GTES_PER_GT:
        raise bad("numGTEsPerGT", f"{h.num_gtes_per_gt}, expected {s.GTES_PER_GT}")
    if not 0 < h.capacity <= MAX_CAPACITY:
        raise bad("capacity", f"{h.capacity} sectors is out of range")
    if h.flags & s.FLAG_NEWLINE_TEST and h.check_bytes != s.CHECK_BYTES:
        raise bad("checkBytes", "newline test bytes damaged (file transferred in text mode?)")
    if h.compressed and h.compress_algorithm != s.COMPRESSION_DEFLATE:
        raise Unsupported(what=f"{path}: VMDK compression algorithm {h.compress_algorithm}")


class SparseExtent:
    """One hosted sparse extent file (read, and random writes when uncompressed)."""

    def __init__(self, path: str, fd: int, writable: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.writable = writable
        self.file_size = os.fstat(fd).st_size
        self.first = parse_header(self._pread(0, s.HEADER_SIZE), path)
        self.header = self._effective_header()
        if writable and self.header.compressed:
            raise Unsupported(what=f"{path}: writing into a compressed (streamOptimized) VMDK")
        self.gd = self._load_gd(self.header.gd_offset, "grain directory")
        self._present = np.flatnonzero(self.gd)
        self._gts: dict[int, np.ndarray] = {}
        self._cache: tuple[int, bytes] | None = None
        self.next_alloc = -(-self.file_size // s.SECTOR) * s.SECTOR

    # -- structure -----------------------------------------------------------
    def _pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        got = pread_exact(self.fd, offset, memoryview(buf))
        return bytes(buf[:got])

    def _effective_header(self) -> Header:
        if self.first.gd_offset != s.GD_AT_END:
            return self.first
        return read_footer(self.path, self.fd, self.file_size)

    def _load_gd(self, gd_offset: int, name: str) -> np.ndarray:
        h = self.header
        start, length = gd_offset * s.SECTOR, h.num_gts * 4
        if gd_offset == 0 or start + length > self.file_size:
            raise CorruptImage(
                path=self.path,
                structure=name,
                field="gdOffset" if name == "grain directory" else "rgdOffset",
                problem=f"{length} bytes at sector {gd_offset} lie outside the file",
                offset=h.file_offset,
            )
        return np.frombuffer(self._pread(start, length), s.GTE_DTYPE).copy()

    def gt(
        self, index: int, gd: np.ndarray | None = None, name: str = "grain directory"
    ) -> np.ndarray:
        """Grain table ``index`` (all zeros when the directory entry is 0)."""
        directory = self.gd if gd is None else gd
        sector = int(directory[index])
        if sector == 0:
            return _EMPTY_GT
        cached = self._gts.get(sector)
        if cached is not None:
            return cached
        start = sector * s.SECTOR
        if start + self.header.gt_bytes > self.file_size:
            raise CorruptImage(
                path=self.path,
                structure=name,
                field=f"GDE[{index}]",
                problem=f"grain table at sector {sector} lies past the end of the file",
                offset=self.header.gd_offset * s.SECTOR + index * 4,
            )
        table = np.frombuffer(self._pread(start, self.header.gt_bytes), s.GTE_DTYPE).copy()
        self._gts[sector] = table
        return table

    @property
    def size(self) -> int:
        return self.header.capacity * s.SECTOR

    # -- mapping -------------------------------------------------------------
    def extents(self, offset: int, length: int) -> Iterator[Extent]:
        """Runs of this extent between ``offset`` and ``offset + length`` (extent-relative)."""
        gb = self.header.grain_bytes
        span = gb * self.header.num_gtes_per_gt
        end = offset + length
        pos = offset
        while pos < end:
            index = pos // span
            if self.gd[index] == 0:
                # Skip the whole run of absent grain tables at once.
                later = self._present[np.searchsorted(self._present, index) :]
                stop = min(end, int(later[0]) * span) if len(later) else end
                yield Extent(pos, stop - pos, ExtentState.UNALLOCATED)
            else:
                stop = min(end, (index + 1) * span)
                yield from self._gt_extents(index, pos, stop)
            pos = stop

    def _gt_extents(self, index: int, start: int, stop: int) -> Iterator[Extent]:
        h = self.header
        gb = h.grain_bytes
        base = index * h.num_gtes_per_gt
        first, last = start // gb - base, (stop - 1) // gb - base + 1
        entries = self.gt(index)[first:last].astype(np.int64)
        state = self._states(entries)
        if h.compressed:
            breaks = np.flatnonzero(np.diff(state)) + 1
        else:
            jump = np.diff(entries) != h.grain_size
            breaks = np.flatnonzero((np.diff(state) != 0) | (jump & (state[1:] == 0))) + 1
        bounds = np.concatenate(([0], breaks, [len(entries)]))
        for a, b in itertools.pairwise(bounds):
            lo = max(start, (base + first + int(a)) * gb)
            hi = min(stop, (base + first + int(b)) * gb)
            yield self._extent(lo, hi, int(state[a]), int(entries[a]), (base + first + int(a)) * gb)

    def _states(self, entries: np.ndarray) -> np.ndarray:
        state = np.full(len(entries), int(ExtentState.DATA), np.int8)
        state[entries == s.GTE_UNALLOCATED] = int(ExtentState.UNALLOCATED)
        if self.header.zeroed_grains:
            state[entries == s.GTE_ZEROED] = int(ExtentState.ZERO)
        return state

    def _extent(self, lo: int, hi: int, state: int, entry: int, grain_start: int) -> Extent:
        st = ExtentState(state)
        fo = None
        if st == ExtentState.DATA and not self.header.compressed:
            fo = entry * s.SECTOR + (lo - grain_start)
        return Extent(lo, hi - lo, st, 0, fo)

    def entry(self, grain: int) -> int:
        n = self.header.num_gtes_per_gt
        return int(self.gt(grain // n)[grain % n])

    # -- reading -------------------------------------------------------------
    def readinto(self, offset: int, view: memoryview) -> None:
        for ext in self.extents(offset, len(view)):
            part = view[ext.offset - offset : ext.end - offset]
            if ext.state != ExtentState.DATA:
                part[:] = bytes(len(part))
            elif ext.file_offset is not None:
                self._read_plain(ext, part)
            else:
                self._read_compressed(ext.offset, part)

    def _read_plain(self, ext: Extent, part: memoryview) -> None:
        assert ext.file_offset is not None
        if ext.file_offset + len(part) > self.file_size:
            grain = ext.offset // self.header.grain_bytes
            raise CorruptImage(
                path=self.path,
                structure="grain table",
                field=f"GTE[{grain}]",
                problem=f"grain at file offset {ext.file_offset:#x} lies past the end of the file",
            )
        pread_exact(self.fd, ext.file_offset, part)

    def _read_compressed(self, offset: int, part: memoryview) -> None:
        gb = self.header.grain_bytes
        pos = 0
        while pos < len(part):
            grain = (offset + pos) // gb
            within = (offset + pos) % gb
            take = min(len(part) - pos, gb - within)
            data = self.grain_data(grain)
            part[pos : pos + take] = data[within : within + take]
            pos += take

    def grain_data(self, grain: int) -> bytes:
        """The decompressed bytes of one compressed grain (last one cached)."""
        cached = self._cache  # read once: another reading thread may replace it
        if cached is not None and cached[0] == grain:
            return cached[1]
        data = self._inflate(grain, self.entry(grain))
        self._cache = (grain, data)
        return data

    def _inflate(self, grain: int, sector: int) -> bytes:
        gb = self.header.grain_bytes
        start = sector * s.SECTOR
        raw = self._pread(start, gb + gb // 8 + 1024)
        skip = s.GRAIN_MARKER_SIZE if self.header.markers else 0
        if len(raw) < skip:
            raise self._grain_error(grain, start, "grain marker lies past the end of the file")
        size = len(raw) - skip
        if self.header.markers:
            lba, size = s.GRAIN_MARKER.unpack_from(raw)
            if lba != grain * self.header.grain_size:
                raise self._grain_error(grain, start, f"marker LBA {lba} for grain {grain}")
            if size == 0 or skip + size > len(raw):
                raise self._grain_error(grain, start, f"compressed size {size} is impossible")
        try:
            data = zlib.decompressobj().decompress(raw[skip : skip + size], gb)
        except zlib.error as e:
            raise self._grain_error(grain, start, f"deflate data damaged: {e}") from e
        expected = min(gb, self.size - grain * gb)
        if len(data) < expected:
            raise self._grain_error(grain, start, f"inflates to {len(data)} of {expected} bytes")
        return data.ljust(gb, b"\0")

    def _grain_error(self, grain: int, offset: int, problem: str) -> CorruptImage:
        return CorruptImage(
            path=self.path,
            structure="compressed grain",
            field=f"grain {grain}",
            problem=problem,
            offset=offset,
        )

    # -- writing (uncompressed only) -------------------------------------------
    def write(self, offset: int, view: memoryview, parent_read: ParentRead | None) -> None:
        gb = self.header.grain_bytes
        pos = 0
        while pos < len(view):
            grain, within = divmod(offset + pos, gb)
            take = min(len(view) - pos, gb - within)
            self._write_grain(grain, within, view[pos : pos + take], parent_read)
            pos += take

    def _write_grain(
        self, grain: int, within: int, data: memoryview, parent_read: ParentRead | None
    ) -> None:
        entry = self.entry(grain)
        gb = self.header.grain_bytes
        if entry > s.GTE_ZEROED or (entry == s.GTE_ZEROED and not self.header.zeroed_grains):
            pwrite_all(self.fd, entry * s.SECTOR + within, data)
            return
        full = bytearray(gb)
        if len(data) < gb and entry == s.GTE_UNALLOCATED and parent_read is not None:
            start = grain * gb
            parent_read(start, memoryview(full)[: min(gb, self.size - start)])
        full[within : within + len(data)] = data
        self._allocate(grain, full)

    def _allocate(self, grain: int, data: bytearray) -> None:
        n = self.header.num_gtes_per_gt
        index = grain // n
        if int(self.gd[index]) == 0:
            self._new_table(index)
        sector = self.next_alloc // s.SECTOR
        pwrite_all(self.fd, self.next_alloc, memoryview(data))
        self.next_alloc += len(data)
        self.file_size = max(self.file_size, self.next_alloc)
        table = self.gt(index)
        table[grain % n] = sector
        self._cache = None
        entry = np.array([sector], s.GTE_DTYPE).tobytes()
        pwrite_all(self.fd, int(self.gd[index]) * s.SECTOR + (grain % n) * 4, memoryview(entry))
        if self.header.redundant and self.header.rgd_offset:
            self._mirror(index, grain % n, entry)

    def _new_table(self, index: int) -> None:
        """Append an empty grain table (and its redundant copy) for directory entry ``index``."""
        h = self.header
        redundant = h.redundant and h.rgd_offset
        sectors = h.gt_bytes // s.SECTOR
        start = self.next_alloc // s.SECTOR
        count = 2 if redundant else 1
        pwrite_all(self.fd, self.next_alloc, memoryview(bytes(count * h.gt_bytes)))
        # Grains stay grain-aligned after the tables, as qemu-img check expects.
        end = (start + count * sectors) * s.SECTOR
        self.next_alloc = -(-end // h.grain_bytes) * h.grain_bytes
        self.file_size = max(self.file_size, end)
        places = [(h.gd_offset, start)] + ([(h.rgd_offset, start + sectors)] if redundant else [])
        for gd_sector, table in places:
            entry = np.array([table], s.GTE_DTYPE).tobytes()
            pwrite_all(self.fd, gd_sector * s.SECTOR + index * 4, memoryview(entry))
        self.gd[index] = start
        self._present = np.flatnonzero(self.gd)

    def _mirror(self, index: int, slot: int, entry: bytes) -> None:
        raw = self._pread(self.header.rgd_offset * s.SECTOR + index * 4, 4)
        if len(raw) == 4:
            rgt = int.from_bytes(raw, "little")
            if rgt:
                pwrite_all(self.fd, rgt * s.SECTOR + slot * 4, memoryview(entry))

    def info(self) -> dict[str, Any]:
        h = self.header
        return {
            "version": h.version,
            "grain-size": h.grain_bytes,
            "compressed": h.compressed,
            "zeroed-grain": h.zeroed_grains,
        }


_EMPTY_GT = np.zeros(s.GTES_PER_GT, s.GTE_DTYPE)
_EMPTY_GT.flags.writeable = False


def read_footer(path: str, fd: int, file_size: int) -> Header:
    """The footer of a stream-optimized extent: marker, header copy, end-of-stream."""
    start = file_size - 3 * s.SECTOR
    if start < s.SECTOR:
        raise TruncatedImage(
            path=path,
            structure="stream footer",
            problem="header says grain directory at end, but the file has no footer",
            offset=max(0, start),
        )
    buf = bytearray(3 * s.SECTOR)
    pread_exact(fd, start, memoryview(buf))
    marker = s.MetadataMarker.parse(bytes(buf[: s.METADATA_MARKER_SIZE]))
    eos = bytes(buf[2 * s.SECTOR :])
    if marker.type != s.MARKER_FOOTER or marker.size != 0 or eos != bytes(s.SECTOR):
        raise TruncatedImage(
            path=path,
            structure="stream footer",
            field="marker",
            problem="no footer and end-of-stream marker at the end (truncated stream?)",
            offset=start,
        )
    footer = parse_header(bytes(buf[s.SECTOR : 2 * s.SECTOR]), path, start + s.SECTOR)
    if footer.gd_offset == s.GD_AT_END:
        raise CorruptImage(
            path=path,
            structure="stream footer",
            field="gdOffset",
            problem="footer does not give the grain directory offset",
            offset=start + s.SECTOR,
        )
    return footer
