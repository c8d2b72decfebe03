"""The store-wide lock: every open store holds it shared, ``gc`` holds it exclusive.

References: flock(2) (locks belong to the open file description, so two handles in one
process exclude each other too, and the kernel drops them when a process dies; the file's
open mode does not matter, so a reader takes its shared lock through a read-only open).
"""

from __future__ import annotations

import fcntl
import os
import time
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
