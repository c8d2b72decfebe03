"""On-disk layouts of the MBR, EBR and GPT, and the partition model.

References: UEFI Specification 2.10, section 5.2.1 (legacy MBR), 5.2.3 (protective MBR),
5.3.2 (GPT header), 5.3.3 (GPT partition entry array); the extended-partition (EBR) chain as
documented by util-linux fdisk (libfdisk/src/dos.c) and Microsoft's "Disk Concepts".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
from construct import Bytes, Const, Int8ul, Int32ul, Int64ul, Struct

MBR_SIGNATURE = b"\x55\xaa"
MBR_ENTRIES_OFFSET = 446
MBR_DISK_ID_OFFSET = 440
MBR_ENTRY_SIZE = 16

PROTECTIVE_TYPE = 0xEE
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
DEFAULT_EXTENDED_TYPE = 0x05

GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
GPT_HEADER_SIZE = 92
GPT_ENTRY_SIZE = 128
GPT_DEFAULT_ENTRIES = 128
# A header may declare any entry count; more than this is not a real disk and would make
# us read an unbounded array.
GPT_MAX_ARRAY_BYTES = 4 << 20

# UEFI 5.2.1, table 5-1: one MBR partition record.
MBR_ENTRY = Struct(
    "status" / Int8ul,
    "chs_first" / Bytes(3),
    "type" / Int8ul,
    "chs_last" / Bytes(3),
    "lba_first" / Int32ul,
    "sectors" / Int32ul,
)

# numpy view of the four records at offset 446, for validating them all at once.
MBR_ENTRY_DTYPE = np.dtype(
    [
        ("status", "u1"),
        ("chs_first", "V3"),
        ("type", "u1"),
        ("chs_last", "V3"),
        ("lba_first", "<u4"),
        ("sectors", "<u4"),
    ]
)
assert MBR_ENTRY_DTYPE.itemsize == MBR_ENTRY_SIZE

# UEFI 5.3.2, table 5-5: GPT header (the CRC covers header_size bytes with header_crc32 = 0).
GPT_HEADER = Struct(
    "signature" / Const(GPT_SIGNATURE),
    "revision" / Int32ul,
    "header_size" / Int32ul,
    "header_crc32" / Int32ul,
    "reserved" / Int32ul,
    "my_lba" / Int64ul,
    "alternate_lba" / Int64ul,
    "first_usable_lba" / Int64ul,
    "last_usable_lba" / Int64ul,
    "disk_guid" / Bytes(16),
    "partition_entry_lba" / Int64ul,
    "num_entries" / Int32ul,
    "entry_size" / Int32ul,
    "entries_crc32" / Int32ul,
)
GPT_HEADER_CRC_OFFSET = 16

# UEFI 5.3.3, table 5-6: GPT partition entry (GUIDs in the mixed-endian EFI_GUID layout).
GPT_ENTRY_DTYPE = np.dtype(
    [
        ("type_guid", "V16"),
        ("unique_guid", "V16"),
        ("first_lba", "<u8"),
        ("last_lba", "<u8"),
        ("attributes", "<u8"),
        ("name", "V72"),
    ]
)
assert GPT_ENTRY_DTYPE.itemsize == GPT_ENTRY_SIZE

UNUSED_GUID = uuid.UUID(int=0)

# Names for common type codes (those sgdisk/sfdisk print); unknown ones print raw.
GPT_TYPE_NAMES = {
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery environment",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
    "21686148-6449-6E6F-744E-656564454649": "BIOS boot",
}
MBR_TYPE_NAMES = {
    0x01: "FAT12",
    0x04: "FAT16 <32M",
    0x05: "Extended",
    0x06: "FAT16",
    0x07: "HPFS/NTFS/exFAT",
    0x0B: "W95 FAT32",
    0x0C: "W95 FAT32 (LBA)",
    0x0E: "W95 FAT16 (LBA)",
    0x0F: "W95 Ext'd (LBA)",
    0x27: "Hidden NTFS WinRE",
    0x82: "Linux swap",
    0x83: "Linux",
    0x85: "Linux extended",
    0xEE: "GPT",
    0xEF: "EFI (FAT-12/16/32)",
}


@dataclass(frozen=True)
class Partition:
    """One partition. ``start`` and ``length`` are bytes on the disk.

    ``type`` is the GPT type GUID in upper case (``EBD0A0A2-…``) or the MBR type byte as two
    hex digits (``0c``), as ``sfdisk --json`` prints them.  ``attributes`` is the GPT attribute
    word, or the MBR status byte (0x80 = bootable).  MBR numbers 1-4 are primary slots and 5
    onwards logical partitions in chain order, as Linux numbers them.
    """

    number: int
    start: int
    length: int
    type: str
    name: str = ""
    guid: str | None = None
    attributes: int = 0

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class PartitionTable:
    scheme: str  # "gpt", "mbr" or "none"
    disk_id: str | None
    sector_size: int
    partitions: list[Partition]
    warnings: list[str] = field(default_factory=list)
    usable_start: int | None = None  # GPT: byte offset of the first usable sector
    usable_end: int | None = None  # GPT: byte offset just past the last usable sector

    def get(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)


def guid_from_le(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(raw))).upper()


def guid_to_le(text: str) -> bytes:
    return uuid.UUID(text).bytes_le
