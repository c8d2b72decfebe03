"""One VHD file as a BlockDevice layer: fixed, dynamic and differencing, read and write.

References: Microsoft "Virtual Hard Disk Image Format Specification" v1.0 ("Block Allocation
Table and Data Blocks", "Implementing a Differencing Hard Disk"); qemu 7.2 ``block/vpc.c``.

The virtual size is the footer's current size, as Hyper-V, libvhdi and qemu (for the creators
it trusts) read it; the CHS geometry is reported but never shortens the disk.  In a dynamic
disk a clear bitmap bit reads as zeros (ZERO); in a differencing disk it means "ask the
parent" (UNALLOCATED), as does an unallocated block.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from strata.blockdev.base import BaseDevice, BlockDevice, Extent, ExtentState, zero_fill
from strata.blockdev.chain import ChainDevice, ParentRef
from strata.blockdev.rawfile import data_runs, open_file, pread_exact, punch_hole, pwrite_all
from strata.errors import IntegrityError, InvalidInput, StateError, TruncatedImage
from strata.formats.vhd import structs as s
from strata.formats.vhd.layout import Layout, inspect
from strata.native import is_zero

BITMAP_CACHE = 4096


class VhdDevice(BaseDevice):
    format_name = "vhd"
    concurrent_reads = True  # preads; two threads filling one bitmap cache slot agree

    def __init__(self, path: str, writable: bool = False) -> None:
        self.path = path
        self.writable = writable
        self._fd = open_file(path, writable)
        try:
            self.layout = inspect(self._fd, path)
            error = self.layout.first_error()
            if error is not None:
                raise error.exception(path)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        self._size = self.layout.size
        self._bitmaps: dict[int, np.ndarray] = {}
        self._bat = self.layout.bat
        self._next_free = self.layout.footer_offset
        self.parent_ref = self._parent_ref() if self.is_differencing else None

    # -- facts -------------------------------------------------------------------------

    @property
    def disk_type(self) -> int:
        return self.layout.disk_type

    @property
    def is_differencing(self) -> bool:
        return self.disk_type == s.DISK_DIFFERENCING

    @property
    def unique_id(self) -> bytes:
        return bytes(self.layout.footer.unique_id)

    @property
    def timestamp(self) -> int:
        return int(self.layout.footer.timestamp)

    @property
    def block_size(self) -> int:
        return self.layout.block_size

    def info(self) -> dict[str, Any]:
        facts = self.layout.facts()
        if self.disk_type != s.DISK_FIXED:
            assert self._bat is not None
            facts["block-size"] = self.block_size
            facts["allocated-blocks"] = int(np.count_nonzero(self._bat != s.UNALLOCATED))
        if self.is_differencing:
            header = self.layout.header
            facts["parent-uuid"] = s.uuid_text(header.parent_unique_id)
            facts["parent-timestamp"] = s.timestamp_text(int(header.parent_timestamp))
            facts["parent-name"] = s.decode_name(header.parent_name, "utf-16-be")
        return facts

    # -- parents -----------------------------------------------------------------------

    def _parent_ref(self) -> ParentRef:
        return ParentRef(
            candidates=parent_candidates(self.layout),
            verify=self._verify_parent,
            description=parent_description(self.layout),
            formats=("vhd",),
        )

    def _verify_parent(self, parent: BlockDevice) -> None:
        if not isinstance(parent, VhdDevice):
            raise IntegrityError(
                what=f"{self.path}: parent {getattr(parent, 'path', parent)} is not a VHD"
            )
        want = bytes(self.layout.header.parent_unique_id)
        if parent.unique_id != want:
            raise IntegrityError(
                what=f"{self.path}: parent {parent.path} has UUID {s.uuid_text(parent.unique_id)}"
                f", the child expects {s.uuid_text(want)}"
            )

    # -- reading -----------------------------------------------------------------------

    def _readinto(self, offset: int, view: memoryview) -> None:
        if self.disk_type == s.DISK_FIXED:
            self._pread(offset, view)
            return
        for ext in self._extents(offset, len(view)):
            part = view[ext.offset - offset : ext.end - offset]
            if ext.state == ExtentState.DATA and ext.file_offset is not None:
                self._pread(ext.file_offset, part)
            else:
                zero_fill(part)

    def _pread(self, file_offset: int, view: memoryview) -> None:
        got = pread_exact(self._fd, file_offset, view)
        if got < len(view):
            raise TruncatedImage(
                path=self.path,
                structure="data",
                problem="file ends inside data",
                offset=file_offset + got,
            )

    def _extents(self, offset: int, length: int) -> Iterator[Extent]:
        if self.disk_type == s.DISK_FIXED:
            yield from self._fixed_extents(offset, length)
            return
        end, bs = offset + length, self.block_size
        first, last = offset // bs, (end - 1) // bs
        assert self._bat is not None
        entries = self._bat[first : last + 1]
        for lo_block, hi_block, allocated in _runs(entries != s.UNALLOCATED):
            lo = max(offset, (first + lo_block) * bs)
            hi = min(end, (first + hi_block) * bs)
            if not allocated:
                yield Extent(lo, hi - lo, ExtentState.UNALLOCATED)
                continue
            for block in range(first + lo_block, first + hi_block):
                yield from self._block_extents(
                    block, max(lo, block * bs), min(hi, (block + 1) * bs)
                )

    def _fixed_extents(self, offset: int, length: int) -> Iterator[Extent]:
        for start, stop, is_data in data_runs(self._fd, offset, offset + length):
            state = ExtentState.DATA if is_data else ExtentState.ZERO
            yield Extent(start, stop - start, state, 0, start if is_data else None)

    def _block_extents(self, block: int, lo: int, hi: int) -> Iterator[Extent]:
        bs = self.block_size
        bits = self._bitmap(block)
        data_at = self._block_data_offset(block)
        absent = ExtentState.UNALLOCATED if self.is_differencing else ExtentState.ZERO
        first = (lo - block * bs) // s.SECTOR
        last = -(-(hi - block * bs) // s.SECTOR)
        for a, b, present in _runs(bits[first:last]):
            start = max(lo, block * bs + (first + a) * s.SECTOR)
            stop = min(hi, block * bs + (first + b) * s.SECTOR)
            if present:
                yield Extent(start, stop - start, ExtentState.DATA, 0, data_at + start - block * bs)
            else:
                yield Extent(start, stop - start, absent)

    def _block_data_offset(self, block: int) -> int:
        assert self._bat is not None
        return int(self._bat[block]) * s.SECTOR + self.layout.bitmap_size

    def _bitmap(self, block: int) -> np.ndarray:
        """The block's sector bits (one bool per sector, MSB-first on disk)."""
        cached = self._bitmaps.get(block)
        if cached is not None:
            return cached
        assert self._bat is not None
        at = int(self._bat[block]) * s.SECTOR
        raw = bytearray(self.layout.bitmap_size)
        self._pread(at, memoryview(raw))
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="big")
        bits = bits[: self.block_size // s.SECTOR].astype(bool)
        if len(self._bitmaps) >= BITMAP_CACHE:
            self._bitmaps.clear()
        self._bitmaps[block] = bits
        return bits

    # -- writing -----------------------------------------------------------------------

    def _write(self, offset: int, view: memoryview) -> None:
        if self.disk_type == s.DISK_FIXED:
            if not (is_zero(view) and punch_hole(self._fd, offset, len(view))):
                pwrite_all(self._fd, offset, view)
            return
        lo = offset - offset % s.SECTOR
        hi = min(self.size, -(-(offset + len(view)) // s.SECTOR) * s.SECTOR)
        if lo != offset or hi != offset + len(view):
            buf = bytearray(hi - lo)
            self._read_visible(lo, memoryview(buf)[: s.SECTOR])
            self._read_visible(hi - s.SECTOR, memoryview(buf)[-s.SECTOR :])
            buf[offset - lo : offset - lo + len(view)] = view
            view, offset = memoryview(buf), lo
        bs = self.block_size
        pos = offset
        while pos < offset + len(view):
            block = pos // bs
            stop = min(offset + len(view), (block + 1) * bs)
            self._write_in_block(block, pos, view[pos - offset : stop - offset])
            pos = stop

    def _read_visible(self, offset: int, view: memoryview) -> None:
        """One sector as the guest sees it (for read-modify-write of a partial sector)."""
        for ext in self._extents(offset, len(view)):
            part = view[ext.offset - offset : ext.end - offset]
            if ext.state == ExtentState.DATA and ext.file_offset is not None:
                self._pread(ext.file_offset, part)
            elif ext.state == ExtentState.UNALLOCATED and self.is_differencing:
                if self.parent is None:
                    raise StateError(
                        what=f"{self.path}: a partial-sector write needs the parent attached"
                    )
                ChainDevice(self.parent).readinto(ext.offset, part)
            else:
                zero_fill(part)

    def _write_in_block(self, block: int, offset: int, view: memoryview) -> None:
        assert self._bat is not None
        if self._bat[block] == s.UNALLOCATED:
            self._allocate(block)
        within = offset - block * self.block_size
        pwrite_all(self._fd, self._block_data_offset(block) + within, view)
        self._set_bits(block, within // s.SECTOR, (within + len(view)) // s.SECTOR)

    def _allocate(self, block: int) -> None:
        assert self._bat is not None
        bitmap_at = s.align_bitmap(self._next_free, self.layout.bitmap_size)
        end = bitmap_at + self.layout.bitmap_size + self.block_size
        old_footer = self._next_free
        pwrite_all(self._fd, bitmap_at, memoryview(bytes(self.layout.bitmap_size)))
        pwrite_all(self._fd, end, memoryview(self.layout.footer_raw))
        if old_footer + s.FOOTER_SIZE <= bitmap_at:
            pwrite_all(self._fd, old_footer, memoryview(bytes(s.FOOTER_SIZE)))
        self._bat[block] = bitmap_at // s.SECTOR
        entry = np.array([bitmap_at // s.SECTOR], s.BAT_DTYPE).tobytes()
        pwrite_all(self._fd, self.layout.bat_offset + 4 * block, memoryview(entry))
        self._bitmaps[block] = np.zeros(self.block_size // s.SECTOR, bool)
        self._next_free = end

    def _set_bits(self, block: int, first: int, last: int) -> None:
        bits = self._bitmap(block)
        if bits[first:last].all():
            return
        wanted = bits.copy()
        wanted[first:last] = True
        self._fill_sectors(block, libvhdi_safe(wanted) & ~wanted)
        bits[:] = libvhdi_safe(wanted)
        raw = np.packbits(bits, bitorder="big").tobytes()
        raw += bytes(self.layout.bitmap_size - len(raw))
        pwrite_all(self._fd, int(self._bat[block]) * s.SECTOR, memoryview(raw))

    def _fill_sectors(self, block: int, extra: np.ndarray) -> None:
        """Store the sectors ``extra`` marks with what they show now (from below)."""
        base = block * self.block_size
        at = self._block_data_offset(block)
        for a, b, on in _runs(extra):
            if not on:
                continue
            lo, hi = base + a * s.SECTOR, min(self.size, base + b * s.SECTOR)
            if lo >= hi:
                continue
            buf = bytearray(hi - lo)
            self._read_visible(lo, memoryview(buf))
            pwrite_all(self._fd, at + lo - base, memoryview(buf))

    def flush(self) -> None:
        if self.writable and self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


def parent_description(layout: Layout) -> str:
    """How errors name a differencing disk's parent: by the UUID it must have."""
    return f"VHD parent {s.uuid_text(layout.header.parent_unique_id)}"


def libvhdi_safe(bits: np.ndarray) -> np.ndarray:
    """Bits widened so that no clear bit follows a set bit within one bitmap byte.

    libvhdi (libvhdi_block_descriptor_read_sector_bitmap_data, through 20260901) shifts a
    VHD bitmap byte without masking, so it takes every sector after the first present one
    in the same byte as present too.  Storing those sectors (with the content they already
    show) keeps the meaning for every reader and makes libvhdi read the chain correctly.
    """
    pad = -bits.size % 8
    grid = np.concatenate((bits, np.zeros(pad, bool))).reshape(-1, 8)
    return np.logical_or.accumulate(grid, axis=1).reshape(-1)[: bits.size]


def _runs(flags: np.ndarray) -> Iterator[tuple[int, int, bool]]:
    """(start, end, value) runs of equal values in a boolean array."""
    if not flags.size:
        return
    edges = np.flatnonzero(flags[1:] != flags[:-1]) + 1
    bounds = np.concatenate(([0], edges, [flags.size]))
    for a, b in itertools.pairwise(bounds):
        yield int(a), int(b), bool(flags[a])


def parent_candidates(lay: Layout) -> list[str]:
    """Parent paths in preference order.

    Relative locators (W2ru) first, then absolute ones (W2ku, MacX), then the header's parent
    name; last, the file name of any Windows path (``C:\\vms\\base.vhd``) beside the child,
    since a chain made on Windows and copied here keeps only that part of its meaning.
    """
    texts = [loc.path for loc in lay.locators if loc.path]
    texts.append(s.decode_name(lay.header.parent_name, "utf-16-be"))
    paths = [p for p in map(host_path, texts) if p]
    relative = [p for p in paths if not os.path.isabs(p)]
    absolute = [p for p in paths if os.path.isabs(p)]
    names = [n for n in map(windows_name, texts) if n]
    return list(dict.fromkeys([*relative, *absolute, *names]))


def host_path(text: str) -> str | None:
    """A locator's path as a POSIX path; drive-letter and UNC paths have no meaning here."""
    text = text.strip()
    if not text or is_windows_absolute(text):
        return None
    path = text.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path or None


def is_windows_absolute(text: str) -> bool:
    return (len(text) > 1 and text[1] == ":") or text.startswith("\\\\")


def windows_name(text: str) -> str | None:
    text = text.strip()
    if not is_windows_absolute(text):
        return None
    name = text.replace("\\", "/").rsplit("/", 1)[-1]
    return name if name not in ("", ".", "..") else None


def open_vhd(path: str, writable: bool) -> VhdDevice:
    return VhdDevice(path, writable)


def require_vhd_parent(parent: BlockDevice | None) -> VhdDevice:
    if not isinstance(parent, VhdDevice):
        raise InvalidInput(
            "a VHD differencing disk needs a VHD parent "
            f"(got {getattr(parent, 'format_name', type(parent).__name__)})"
        )
    return parent
