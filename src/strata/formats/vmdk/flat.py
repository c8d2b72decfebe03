"""Flat extents (monolithicFlat, twoGbMaxExtentFlat, VMFS): plain disk bytes in a file.

References: VMware Virtual Disk Format 5.0 §"Extent descriptions" (FLAT with
an offset in sectors).  Holes of a sparse host file read as ZERO.
"""

from __future__ import annotations

from collections.abc import Iterator

from strata.blockdev.base import Extent, ExtentState
from strata.blockdev.rawfile import data_runs, pread_exact, pwrite_all
from strata.errors import TruncatedImage


class FlatExtent:
    def __init__(self, path: str, fd: int, start: int, size: int, file_size: int) -> None:
        self.path = path
        self.fd = fd
        self.start = start
        self.size = size
        if start + size > file_size:
            raise TruncatedImage(
                path=path,
                structure="flat extent",
                field="size",
                problem=f"extent needs {start + size} bytes, the file has {file_size}",
                offset=file_size,
            )

    def extents(self, offset: int, length: int) -> Iterator[Extent]:
        lo = self.start + offset
        for a, b, is_data in data_runs(self.fd, lo, lo + length):
            state = ExtentState.DATA if is_data else ExtentState.ZERO
            yield Extent(a - self.start, b - a, state, 0, a if is_data else None)

    def readinto(self, offset: int, view: memoryview) -> None:
        got = pread_exact(self.fd, self.start + offset, view)
        if got < len(view):
            view[got:] = bytes(len(view) - got)

    def write(self, offset: int, view: memoryview, _parent: object = None) -> None:
        pwrite_all(self.fd, self.start + offset, view)


class ZeroExtent:
    """A ZERO extent line: reads zeros, stores nothing."""

    path = None

    def __init__(self, size: int) -> None:
        self.size = size

    def extents(self, offset: int, length: int) -> Iterator[Extent]:
        yield Extent(offset, length, ExtentState.ZERO)

    def readinto(self, offset: int, view: memoryview) -> None:
        view[:] = bytes(len(view))
