"""In-memory devices for partition and file-system tests: a flat disk and a differencing layer.

The overlay is a minimal copy-on-write layer (whole sectors held in a dict, everything else
UNALLOCATED) so tests can prove that readers and editors work through ``ChainDevice`` and that
writes land in the top layer only.
"""

from __future__ import annotations

from collections.abc import Iterator

from strata.blockdev.base import BaseDevice, BlockDevice, Extent, ExtentState


class MemoryDevice(BaseDevice):
    format_name = "memory"

    def __init__(self, data: bytes | bytearray, writable: bool = True) -> None:
        self.data = bytearray(data)
        self._size = len(self.data)
        self.writable = writable
        self.path = "<memory>"

    def _readinto(self, offset: int, view: memoryview) -> None:
        view[:] = self.data[offset : offset + len(view)]

    def _write(self, offset: int, view: memoryview) -> None:
        self.data[offset : offset + len(view)] = view


class OverlayDevice(BaseDevice):
    """One differencing layer over ``parent``: sectors it holds are DATA, others UNALLOCATED."""

    format_name = "overlay"

    def __init__(self, parent: BlockDevice, sector_size: int = 512) -> None:
        self._parent = parent
        self._size = parent.size
        self._sector_size = sector_size
        self.sectors: dict[int, bytearray] = {}
        self.writable = True
        self.path = "<overlay>"

    def _readinto(self, offset: int, view: memoryview) -> None:
        ss = self._sector_size
        for pos in range(offset - offset % ss, offset + len(view), ss):
            data = self.sectors.get(pos // ss, bytes(ss))
            lo, hi = max(pos, offset), min(pos + ss, offset + len(view))
            view[lo - offset : hi - offset] = data[lo - pos : hi - pos]

    def _write(self, offset: int, view: memoryview) -> None:
        ss = self._sector_size
        for pos in range(offset - offset % ss, offset + len(view), ss):
            lba = pos // ss
            if lba not in self.sectors:
                current = bytearray(ss)
                self._parent.readinto(pos, current)
                self.sectors[lba] = current
            lo, hi = max(pos, offset), min(pos + ss, offset + len(view))
            self.sectors[lba][lo - pos : hi - pos] = view[lo - offset : hi - offset]

    def _extents(self, offset: int, length: int) -> Iterator[Extent]:
        ss = self._sector_size
        end = offset + length
        first, last = offset // ss, (end - 1) // ss
        pos = offset
        for lba in sorted(k for k in self.sectors if first <= k <= last):
            lo, hi = max(lba * ss, offset), min((lba + 1) * ss, end)
            if lo > pos:
                yield Extent(pos, lo - pos, ExtentState.UNALLOCATED)
            yield Extent(lo, hi - lo, ExtentState.DATA)
            pos = hi
        if pos < end:
            yield Extent(pos, end - pos, ExtentState.UNALLOCATED)

    def close(self) -> None:
        """The parent is owned by the test."""
