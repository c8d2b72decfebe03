"""The BlockDevice protocol, extent runs and a base class for drivers.

References: qemu's block-status model (``bdrv_block_status``): a run of the
virtual disk is DATA (this image holds it), ZERO (reads as zeros, nothing
stored) or UNALLOCATED (this image says nothing; ask the parent, or zeros at the
bottom of a chain).

A driver's ``readinto`` returns only its own layer: it fills UNALLOCATED runs
with zeros.  ``strata.blockdev.chain`` composes a layer with its parents.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

from strata.errors import InvalidInput, StateError

Buffer = bytearray | memoryview


class ExtentState(enum.IntEnum):
    DATA = 0
    ZERO = 1
    UNALLOCATED = 2


class Extent(NamedTuple):
    offset: int
    length: int
    state: ExtentState
    depth: int = 0
    file_offset: int | None = None

    @property
    def end(self) -> int:
        return self.offset + self.length

    def clip(self, start: int, end: int) -> Extent | None:
        lo, hi = max(self.offset, start), min(self.end, end)
        if lo >= hi:
            return None
        shift = lo - self.offset
        fo = None if self.file_offset is None else self.file_offset + shift
        return self._replace(offset=lo, length=hi - lo, file_offset=fo)


def read_concurrently(devices: Iterable[object]) -> bool:
    """Every one of ``devices`` allows reads on several threads at once
    (``BaseDevice.concurrent_reads``; a device that does not say so does not)."""
    return all(getattr(dev, "concurrent_reads", False) for dev in devices)


@runtime_checkable
class BlockDevice(Protocol):
    """What every disk, volume and view in strata offers."""

    @property
    def size(self) -> int: ...

    @property
    def sector_size(self) -> int: ...

    @property
    def parent(self) -> BlockDevice | None: ...

    def readinto(self, offset: int, buf: Buffer) -> int: ...

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]: ...

    def close(self) -> None: ...


class BaseDevice:
    """Shared plumbing for drivers: range checks, ``read``, context manager.

    Subclasses set ``_size`` and implement ``_readinto`` (and ``_write`` when
    writable).  The default extent map says the whole device is DATA.
    """

    format_name = "device"
    _size: int = 0
    _sector_size: int = 512
    _parent: BlockDevice | None = None
    writable: bool = False
    path: str | None = None
    # True when ``readinto`` may run on several threads at once while nothing writes: reads
    # are positioned (no shared file position or buffer) and any cache stays consistent when
    # two threads fill it.  Bulk copies then keep more than one read in flight.
    concurrent_reads: bool = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def sector_size(self) -> int:
        return self._sector_size

    @property
    def parent(self) -> BlockDevice | None:
        return self._parent

    @parent.setter
    def parent(self, dev: BlockDevice | None) -> None:
        self._parent = dev

    def check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidInput(
                f"range {offset:#x}+{length:#x} lies outside the device of {self.size} bytes"
            )

    def readinto(self, offset: int, buf: Buffer) -> int:
        view = memoryview(buf).cast("B")
        self.check_range(offset, len(view))
        if view:
            self._readinto(offset, view)
        return len(view)

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readv(self, pieces: Iterable[tuple[int, Buffer]]) -> None:
        """Fill each buffer from its offset: many small scattered reads (MFT records) in one
        call, which devices override to skip per-call work that a whole batch shares."""
        for offset, buf in pieces:
            self.readinto(offset, buf)

    def write(self, offset: int, data: bytes | Buffer) -> None:
        if not self.writable:
            raise StateError(what=f"{self.path or self.format_name} is open read-only")
        view = memoryview(data).cast("B")
        self.check_range(offset, len(view))
        if view:
            self._write(offset, view)

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        length = self.size - offset if length is None else length
        self.check_range(offset, length)
        if length:
            yield from self._extents(offset, length)

    def _extents(self, offset: int, length: int) -> Iterator[Extent]:
        yield Extent(offset, length, ExtentState.DATA)

    def _readinto(self, offset: int, view: memoryview) -> None:
        raise NotImplementedError

    def _write(self, offset: int, view: memoryview) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make written data durable (drivers with caches override)."""

    def close(self) -> None:
        if self._parent is not None:
            self._parent.close()

    def info(self) -> dict[str, Any]:
        """Format-specific facts for ``strata disk info`` (subformat, block size…)."""
        return {}

    @property
    def files(self) -> list[str]:
        """The host files this layer occupies (for allocated-size accounting)."""
        return [self.path] if self.path else []

    @property
    def allocated_bytes(self) -> int:
        return sum(os.stat(p).st_blocks * 512 for p in self.files if os.path.exists(p))

    def __enter__(self) -> BaseDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def coalesce(extents: Iterable[Extent]) -> Iterator[Extent]:
    """Merge neighbouring runs of the same state and depth (file offsets contiguous)."""
    pending: Extent | None = None
    for ext in extents:
        if pending is not None and _joinable(pending, ext):
            pending = pending._replace(length=pending.length + ext.length)
            continue
        if pending is not None:
            yield pending
        pending = ext
    if pending is not None:
        yield pending


def _joinable(a: Extent, b: Extent) -> bool:
    if a.end != b.offset or a.state != b.state or a.depth != b.depth:
        return False
    if a.file_offset is None or b.file_offset is None:
        return a.file_offset is None and b.file_offset is None
    return a.file_offset + a.length == b.file_offset


def zero_fill(view: memoryview) -> None:
    view[:] = bytes(len(view)) if len(view) <= 1 << 16 else _zeros_like(len(view))


_ZEROS = bytes(1 << 20)


def _zeros_like(n: int) -> bytes | memoryview:
    return memoryview(_ZEROS)[:n] if n <= len(_ZEROS) else bytes(n)
