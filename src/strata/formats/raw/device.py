"""A raw image written onto a block device (a disk, an LV, a loop device).

A new file reads as zeros wherever nothing was written, a device does not: every byte of
the image is written, the zero runs with BLKZEROOUT (the device zeroes or unmaps them itself;
written out when it cannot).  The device is opened with O_EXCL, which Linux refuses (EBUSY)
while it is mounted or held by another exclusive opener: an image never lands on a mounted
file system.  Bytes past the image's size are left as they were, as qemu-img leaves them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from strata.blockdev.base import BlockDevice
from strata.blockdev.copy import Progress, iter_blocks
from strata.blockdev.rawfile import file_size, pwrite_all
from strata.errors import InvalidInput, SystemIOError

BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero [start, start + length) of a block device
ZEROS = bytes(4 << 20)
BLOCK = 64 << 10


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def write_device(source: BlockDevice, path: str, progress: Progress | None = None) -> None:
    """Every byte of ``source`` onto the block device at ``path``, flushed to it."""
    fd = _open_exclusive(path)
    try:
        have = file_size(fd)
        if have < source.size:
            raise InvalidInput(
                f"cannot write {path}: the device holds {have} bytes, the image {source.size}"
            )
        done = 0
        for blk in iter_blocks(source, BLOCK, progress=progress):
            zero_range(fd, done, blk.offset - done)
            pwrite_all(fd, blk.offset, blk.data)
            done = blk.end
        zero_range(fd, done, source.size - done)
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_exclusive(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise InvalidInput(
                f"cannot write {path}: the device is in use (mounted, or held by another "
                "program); unmount it first"
            ) from e
        raise SystemIOError.of(e, path) from e


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make ``[offset, offset + length)`` of the device read as zeros."""
    if length <= 0:
        return
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("=QQ", offset, length))
        return
    except OSError as e:  # not a device that takes it, or not aligned to its logical blocks
        if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    end = offset + length
    while offset < end:
        piece = memoryview(ZEROS)[: min(len(ZEROS), end - offset)]
        pwrite_all(fd, offset, piece)
        offset += len(piece)
