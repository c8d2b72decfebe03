"""A file-like view of any BlockDevice, for libraries that want ``io`` objects."""

from __future__ import annotations

import io
import os

from strata.blockdev.base import BlockDevice


class DeviceIO(io.RawIOBase):
    def __init__(self, dev: BlockDevice) -> None:
        super().__init__()
        self.dev = dev
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return bool(getattr(self.dev, "writable", False))

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.dev.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self.dev.size - self._pos))
        if n:
            self.dev.readinto(self._pos, view[:n])
        self._pos += n
        return n

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self.dev.write(self._pos, view)  # type: ignore[attr-defined]
        self._pos += len(view)
        return len(view)
