"""Pack files: append-only files of frames, one writer per pack.

References: strata store format 1 (structs.PACK_HEADER, structs.FRAME).

Each writing process appends to packs it created itself (O_EXCL, random names), so writers
never share a file; a pack is only ever rewritten by ``gc`` under the store's exclusive lock.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

from strata.errors import CorruptImage, NotFound, TruncatedImage
from strata.store.structs import FORMAT_VERSION, PACK_HEADER, PACK_MAGIC

PACK_SUFFIX = ".pack"


def new_pack_name() -> str:
    return f"{secrets.token_hex(8)}{PACK_SUFFIX}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PackWriter:
    """Appends frames to one new pack; ``sync`` makes everything written so far durable."""

    def __init__(self, directory: Path, tmp_dir: Path) -> None:
        self.name = new_pack_name()
        self.path = directory / self.name
        # The header is made durable under a temporary name first, so a pack in packs/
        # always starts with a whole header, whenever the writer is killed.
        tmp = tmp_dir / f"{self.name}.tmp"
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self.size = 0
        self._write(PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION, 0))
        os.fsync(self.fd)
        os.rename(tmp, self.path)
        fsync_dir(directory)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            done = os.write(self.fd, view)
            view = view[done:]
        self.size += len(data)

    def append(self, frame: bytes) -> int:
        """Offset of the frame in the pack."""
        offset = self.size
        self._write(frame)
        return offset

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PackFiles:
    """Read-only descriptors of packs, opened once each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is not None:
            return fd
        with self._lock:
            return self._open(name)

    def _open(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            if "/" in name or not name.endswith(PACK_SUFFIX):
                raise CorruptImage(
                    path=self.directory, structure="index", problem=f"bad pack name {name!r}"
                )
            try:
                fd = os.open(self.directory / name, os.O_RDONLY)
            except FileNotFoundError as e:
                raise NotFound(what=f"pack {self.directory / name}") from e
            self._fds[name] = fd
        return fd

    def read(self, name: str, offset: int, length: int) -> bytes:
        data = os.pread(self.fd(name), length, offset)
        if len(data) != length:
            raise TruncatedImage(
                path=self.directory / name,
                structure="frame",
                problem=f"index entry of {length} bytes at {offset:#x} runs past the end "
                f"of the pack ({len(data)} bytes readable)",
                field="index.length",
                offset=offset,
            )
        return data

    def forget(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for name in list(self._fds):
            self.forget(name)


def check_pack_header(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(PACK_HEADER.size)
    if len(head) < PACK_HEADER.size:
        raise TruncatedImage(path=path, structure="pack header", problem="file too short", offset=0)
    magic, version, _ = PACK_HEADER.unpack(head)
    if magic != PACK_MAGIC:
        raise CorruptImage(
            path=path, structure="pack header", problem=f"magic {magic!r}", field="magic", offset=0
        )
    if version != FORMAT_VERSION:
        raise CorruptImage(
            path=path,
            structure="pack header",
            problem=f"version {version}",
            field="version",
            offset=8,
        )
