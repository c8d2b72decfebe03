"""The store-wide lock: every open store holds it shared, ``gc`` holds it exclusive; and the
claim one writer holds on a layer version it is writing (``claim``).

References: flock(2) (locks belong to the open file description, so two handles in one
process exclude each other too, and the kernel drops them when a process dies; the file's
open mode does not matter, so a reader takes its shared lock through a read-only open).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from strata.errors import Conflict


class StoreLock:
    def __init__(self, path: Path, exclusive: bool, timeout: float, readonly: bool = False) -> None:
        """``readonly``: open the lock file without asking to write it, so a store the user
        cannot write (``chmod -R a-w``, a read-only mount) can still be read under the lock."""
        access = os.O_RDONLY if readonly else os.O_RDWR
        self.fd = os.open(path, access | os.O_CREAT, 0o644)
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.fd, mode)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    holder = "gc" if not exclusive else "another process using the store"
                    raise Conflict(
                        what=f"store lock {path} is held by {holder} (waited {timeout:g} s)"
                    ) from None
                time.sleep(0.05)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextmanager
def claim(path: Path, what: str) -> Iterator[None]:
    """Hold ``path`` exclusively while the block runs; Conflict at once when another process
    holds it (``what`` names the work).  The file goes when the block ends: it is removed
    while still held, so a process that opened it just before sees, once it gets the lock,
    that its file is no longer the one at ``path``, and opens it again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(what=f"{what} is under way in another process ({path})") from None
        if _is_at(fd, path):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    try:
        here, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)
