"""Partition tables (MBR with logical partitions, GPT): read, write, open a partition.

References: UEFI Specification 2.10 sections 5.2-5.3 (see ``mbr`` and ``gpt``).

``read_table(dev)`` works on any BlockDevice, so also on a differencing chain; each
partition opens as a :class:`~strata.blockdev.range.RangeDevice` over that device.
"""

from __future__ import annotations

from typing import Any

from strata.blockdev.base import BlockDevice
from strata.blockdev.range import RangeDevice
from strata.errors import NotFound
from strata.partition.gpt import read_gpt, write_gpt
from strata.partition.mbr import dev_path, has_signature, read_mbr, records, write_mbr
from strata.partition.structs import (
    GPT_SIGNATURE,
    GPT_TYPE_NAMES,
    MBR_TYPE_NAMES,
    PROTECTIVE_TYPE,
    Partition,
    PartitionTable,
)

__all__ = [
    "Partition",
    "PartitionTable",
    "open_partition",
    "read_table",
    "write_gpt",
    "write_mbr",
]

# File systems whose boot sector also ends in 0x55AA: a bare volume, not a partition table.
_VBR_MARKS = ((3, b"NTFS    "), (3, b"EXFAT   "), (54, b"FAT1"), (82, b"FAT32   "))


def looks_like_vbr(sector: bytes) -> bool:
    jump = sector[0] == 0xE9 or (sector[0] == 0xEB and sector[2] == 0x90)
    bps = int.from_bytes(sector[11:13], "little")
    valid_bps = bps in (512, 1024, 2048, 4096)
    return jump and valid_bps and any(sector[o : o + len(m)] == m for o, m in _VBR_MARKS)


def _head(dev: BlockDevice, length: int) -> bytes:
    buf = bytearray(min(length, dev.size))
    dev.readinto(0, buf)
    return bytes(buf)


def read_table(dev: BlockDevice) -> PartitionTable:
    """The partition table of ``dev``: scheme ``gpt``, ``mbr`` or ``none``."""
    ss = dev.sector_size
    if dev.size < 2 * ss:
        return PartitionTable("none", None, ss, [])
    head = _head(dev, 2 * ss)
    sector0 = head[:ss]
    if not has_signature(sector0):
        if head[ss : ss + 8] == GPT_SIGNATURE:
            table = read_gpt(dev)
            table.warnings.append("sector 0 has no protective MBR")
            return table
        return PartitionTable("none", None, ss, [])
    if looks_like_vbr(sector0):
        return PartitionTable("none", None, ss, [])
    if any(r.type == PROTECTIVE_TYPE for r in records(dev, sector0, 0, "MBR")):
        return read_gpt(dev)
    return read_mbr(dev, sector0)


def open_partition(
    dev: BlockDevice, number: int, table: PartitionTable | None = None
) -> RangeDevice:
    """Partition ``number`` of ``dev`` as a device of its own."""
    table = table if table is not None else read_table(dev)
    part = table.get(number)
    if part is None:
        have = ", ".join(str(p.number) for p in table.partitions) or "none"
        raise NotFound(what=f"partition {number} on {dev_path(dev)} (partitions: {have})")
    return RangeDevice(dev, part.start, part.length)


def type_name(scheme: str, ptype: str) -> str | None:
    if scheme == "gpt":
        return GPT_TYPE_NAMES.get(ptype)
    return MBR_TYPE_NAMES.get(int(ptype, 16))


def describe(table: PartitionTable, dev: BlockDevice) -> dict[str, Any]:
    ss = table.sector_size
    return {
        "scheme": table.scheme,
        "disk_id": table.disk_id,
        "sector_size": ss,
        "size": dev.size,
        "usable_start": table.usable_start,
        "usable_end": table.usable_end,
        "partitions": [
            {
                "number": p.number,
                "start": p.start,
                "length": p.length,
                "start_sector": p.start // ss,
                "sectors": p.length // ss,
                "type": p.type,
                "type_name": type_name(table.scheme, p.type),
                "name": p.name,
                "guid": p.guid,
                "attributes": p.attributes,
                "bootable": table.scheme == "mbr" and bool(p.attributes & 0x80),
            }
            for p in table.partitions
        ],
        "warnings": list(table.warnings),
    }
