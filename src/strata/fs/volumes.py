"""Where a disk's file systems sit: the whole disk when it holds one directly (a
"superfloppy", as ``mkfs.fat`` makes on a bare image), else each partition of its table.

``fs ls``/``cat``, the finalize gate, the file delta and the file-level merge all find
volumes here, so a volume one of them sees is a volume for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from strata.blockdev.base import BlockDevice
from strata.fs import WHOLE_DISK, detect, where

if TYPE_CHECKING:  # a volume on the whole disk (``fs ls`` of a bare NTFS image) reads no table
    from strata.partition import PartitionTable


@dataclass(frozen=True)
class Located:
    """One volume: its number (a partition's, or ``WHOLE_DISK``), its byte range on the
    disk, the file system ``detect`` found there (None: none recognised) and its device."""

    number: int
    start: int
    length: int
    fs: str | None
    dev: BlockDevice

    @property
    def where(self) -> str:
        return where(self.number)


def located_volumes(disk: BlockDevice, table: PartitionTable | None = None) -> Iterator[Located]:
    """The whole disk when ``detect`` finds a file system on it, else every partition of
    ``table`` (read from ``disk`` when not given), each probed once."""
    kind = detect(disk)
    if kind is not None:
        yield Located(WHOLE_DISK, 0, disk.size, kind, disk)
        return
    from strata.partition import open_partition, read_table

    table = table if table is not None else read_table(disk)
    for part in table.partitions:
        dev = open_partition(disk, part.number, table)
        fs = detect(dev) if dev.size >= 512 else None
        yield Located(part.number, part.start, part.length, fs, dev)


def open_volume(disk: BlockDevice, number: int, table: PartitionTable | None = None) -> BlockDevice:
    """Volume ``number`` of ``disk`` (``WHOLE_DISK``: the disk itself) as a device."""
    if number == WHOLE_DISK:
        return disk
    from strata.partition import open_partition

    return open_partition(disk, number, table)
