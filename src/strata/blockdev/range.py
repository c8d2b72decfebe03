"""A slice of another device: a partition, a volume, a region of a disk."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from strata.blockdev.base import BaseDevice, BlockDevice, Buffer, Extent
from strata.errors import InvalidInput


class RangeDevice(BaseDevice):
    format_name = "range"

    def __init__(self, base: BlockDevice, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > base.size:
            raise InvalidInput(
                f"range {offset}+{length} does not fit in a device of {base.size} bytes"
            )
        self.base = base
        self.start = offset
        self._size = length
        self._sector_size = base.sector_size
        self.writable = bool(getattr(base, "writable", False))
        self.path = getattr(base, "path", None)

    def _readinto(self, offset: int, view: memoryview) -> None:
        self.base.readinto(self.start + offset, view)

    def readv(self, pieces: Iterable[tuple[int, Buffer]]) -> None:
        shifted = []
        for offset, buf in pieces:
            self.check_range(offset, memoryview(buf).nbytes)
            shifted.append((self.start + offset, buf))
        readv = getattr(self.base, "readv", None)
        if readv is not None:
            readv(shifted)
            return
        for offset, buf in shifted:  # a base that only has the protocol's readinto
            self.base.readinto(offset, buf)

    def _write(self, offset: int, view: memoryview) -> None:
        self.base.write(self.start + offset, view)  # type: ignore[attr-defined]

    def _extents(self, offset: int, length: int) -> Iterator[Extent]:
        for ext in self.base.extents(self.start + offset, length):
            yield Extent(ext.offset - self.start, ext.length, ext.state, ext.depth, ext.file_offset)

    def close(self) -> None:
        """The range does not own its base device."""
