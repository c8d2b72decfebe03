"""Pack files: append-only files of frames, one writer per pack.

References: strata store format 1 (structs.PACK_HEADER, structs.FRAME).

Each writing process appends to packs it created itself (O_EXCL, random names), so writers
never share a file; a pack is only ever rewritten by ``gc`` under the store's exclusive lock.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from strata.errors import CorruptImage, NotFound, StateError, SystemIOError, TruncatedImage
from strata.store.ids import Buffer
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
    """Appends frames to one new pack; ``sync`` makes everything written so far durable.

    Writes go through one I/O thread in batches of BATCH bytes, so the caller keeps
    hashing and compressing while the kernel takes the data; at most QUEUE bytes wait.
    """

    BATCH = 1 << 20
    IOV = 512  # below IOV_MAX (1024 on Linux)
    QUEUE = 64 << 20

    def __init__(self, directory: Path, tmp_dir: Path) -> None:
        self.name = new_pack_name()
        self.path = directory / self.name
        # The header is made durable under a temporary name first, so a pack in packs/
        # always starts with a whole header, whenever the writer is killed.
        tmp = tmp_dir / f"{self.name}.tmp"
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        header = PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION, 0)
        _write_all(self.fd, header)
        os.fsync(self.fd)
        os.rename(tmp, self.path)
        fsync_dir(directory)
        self.size = len(header)
        self._io = ThreadPoolExecutor(1, thread_name_prefix="strata-pack")
        self._batch: list[Buffer] = []
        self._batch_bytes = 0
        self._queued: deque[tuple[Future[None], int]] = deque()
        self._queued_bytes = 0
        self._failed: BaseException | None = None  # the first write that failed

    def _refuse_after_failure(self) -> None:
        """Once a write failed, the frames after it would not lie where their offsets say;
        once an fsync failed, the kernel may have dropped the dirty pages and a second fsync
        can succeed without them: nothing more is appended or synced (the store's rows for
        this pack never commit)."""
        if self._failed is None:
            return
        failed = self._failed
        reason = failed.strerror if isinstance(failed, OSError) else failed
        what = (
            f"pack {self.path}: an earlier write or fsync failed ({reason}); "
            "nothing more is written to it"
        )
        if isinstance(failed, OSError):
            raise SystemIOError(what=what) from failed
        raise StateError(what=what) from failed

    def append(self, frame: Buffer) -> int:
        """Offset of the frame (one, or several back to back) in the pack."""
        self._refuse_after_failure()
        offset = self.size
        self.size += len(frame)
        self._batch.append(frame)
        self._batch_bytes += len(frame)
        if self._batch_bytes >= self.BATCH or len(self._batch) >= self.IOV:
            self._submit()
        return offset

    def _submit(self) -> None:
        if self._batch:
            future = self._io.submit(_write_frames, self.fd, self._batch)
            self._queued.append((future, self._batch_bytes))
            self._queued_bytes += self._batch_bytes
            self._batch, self._batch_bytes = [], 0
        self._wait(self.QUEUE)

    def _wait(self, limit: int) -> None:
        while self._queued and self._queued_bytes > limit:
            future, size = self._queued.popleft()
            self._queued_bytes -= size
            self._result(future)

    def _result(self, future: Future[None]) -> None:
        """The outcome of a write or fsync on the I/O thread; a failure is kept (see
        ``_refuse_after_failure``)."""
        try:
            future.result()
        except OSError as e:
            self._failed = e
            raise SystemIOError.of(e, self.path) from e
        except BaseException as e:
            self._failed = e
            raise

    def drain(self) -> None:
        """Every appended frame is in the file (not necessarily durable)."""
        self._submit()
        self._wait(0)

    def sync(self) -> None:
        self.sync_in_background()()

    def sync_in_background(self) -> Callable[[], None]:
        """Start making every appended frame durable on the I/O thread, after the writes
        queued before it; returns the wait for it, which raises a failed write or fsync.
        The caller works meanwhile (the index rows go in while the pack is synced)."""
        self._refuse_after_failure()
        self._submit()
        synced = self._io.submit(os.fsync, self.fd)

        def wait() -> None:
            self._wait(0)
            self._result(synced)

        return wait

    def close(self) -> None:
        if self.fd >= 0:
            try:
                if self._failed is None:
                    self.drain()
            finally:
                self._io.shutdown(wait=True)
                os.close(self.fd)
                self.fd = -1


def _write_frames(fd: int, frames: list[Buffer]) -> None:
    done = os.writev(fd, frames)
    if done < sum(len(f) for f in frames):  # a short write: finish frame by frame
        for frame in frames:
            if done >= len(frame):
                done -= len(frame)
                continue
            _write_all(fd, frame[done:])
            done = 0


def _write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
