"""File systems inside volumes: readers (walk, stat, file runs) and editors.

References: each sub-package names its specification (``fat``: Microsoft fatgen103).
A file system is opened over any BlockDevice, usually a partition from
``strata.partition.open_partition``, so it works through differencing chains too.
"""

from __future__ import annotations

from strata.blockdev.base import BlockDevice

WHOLE_DISK = 0  # the volume number of a file system on the whole disk (partitions count from 1)

_MARKS = (
    (3, b"NTFS    ", "ntfs"),
    # A BitLocker volume's boot sector names its FVE metadata instead of the file system
    # (what blkid reports as TYPE="BitLocker"); the volume behind it is ciphertext.
    (3, b"-FVE-FS-", "bitlocker"),
    (3, b"EXFAT   ", "exfat"),
    (54, b"FAT12   ", "fat"),
    (54, b"FAT16   ", "fat"),
    (54, b"FAT     ", "fat"),
    (82, b"FAT32   ", "fat"),
)


def detect(dev: BlockDevice) -> str | None:
    """The file system on ``dev`` by its boot-sector or superblock magic, else None."""
    head = bytearray(min(dev.size, 2048))
    dev.readinto(0, head)
    for offset, magic, name in _MARKS:
        if head[offset : offset + len(magic)] == magic and head[510:512] == b"\x55\xaa":
            return name
    if head[1080:1082] == b"\x53\xef":
        return "ext"
    return None


def component_problem(name: str) -> str | None:
    """Why ``name`` cannot be one component of a path in a volume's tree, else None: empty,
    ``.`` and ``..`` name no entry of their own, ``/`` splits a path and NUL ends one (a path
    made of such a name would name another file)."""
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    if "/" in name or "\0" in name:
        return "holds '/' or NUL"
    return None


def where(number: int) -> str:
    """How a user reads a volume number."""
    return "whole disk" if number == WHOLE_DISK else f"partition {number}"
