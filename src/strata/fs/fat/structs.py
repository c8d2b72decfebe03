"""On-disk layouts of FAT12/16/32: boot sector (BPB), FSInfo, directory and long-name entries.

References: Microsoft "FAT: General Overview of On-Disk Format" 1.03 (fatgen103): section 3.1
(BPB common to all FATs), 3.2 (FAT12/16 extension), 3.3 (FAT32 extension), 3.5 (FAT type by
cluster count), 4 (FAT entries), 5 (FSInfo), 6 (directory entry), 7 (long-name entries and
checksum).
"""

from __future__ import annotations

import numpy as np
from construct import Bytes, Int8ul, Int16ul, Int32ul, Struct

# fatgen103 3.1: BPB fields common to FAT12, FAT16 and FAT32 (offset 0, 36 bytes).
BPB = Struct(
    "jump" / Bytes(3),
    "oem_name" / Bytes(8),
    "bytes_per_sector" / Int16ul,
    "sectors_per_cluster" / Int8ul,
    "reserved_sectors" / Int16ul,
    "num_fats" / Int8ul,
    "root_entries" / Int16ul,
    "total_sectors_16" / Int16ul,
    "media" / Int8ul,
    "fat_size_16" / Int16ul,
    "sectors_per_track" / Int16ul,
    "num_heads" / Int16ul,
    "hidden_sectors" / Int32ul,
    "total_sectors_32" / Int32ul,
)
BPB_SIZE = 36

# fatgen103 3.3: FAT32 extension at offset 36.
FAT32_EBPB = Struct(
    "fat_size_32" / Int32ul,
    "ext_flags" / Int16ul,
    "fs_version" / Int16ul,
    "root_cluster" / Int32ul,
    "fsinfo_sector" / Int16ul,
    "backup_boot_sector" / Int16ul,
    "reserved" / Bytes(12),
    "drive_number" / Int8ul,
    "reserved1" / Int8ul,
    "boot_signature" / Int8ul,
    "volume_id" / Int32ul,
    "volume_label" / Bytes(11),
    "fs_type" / Bytes(8),
)
FAT32_EBPB_OFFSET = 36

BOOT_SIGNATURE_OFFSET = 510
BOOT_SIGNATURE = b"\x55\xaa"

# fatgen103 5: FSInfo sector (FAT32 only).
FSINFO_LEAD_SIG = 0x41615252
FSINFO_STRUC_SIG = 0x61417272
FSINFO_TRAIL_SIG = 0xAA550000
FSINFO_FREE_COUNT = 488
FSINFO_NEXT_FREE = 492
FSINFO_UNKNOWN = 0xFFFFFFFF

# fatgen103 3.5: the FAT type is decided by the cluster count alone.
FAT12_MAX_CLUSTERS = 4084
FAT16_MAX_CLUSTERS = 65524

# fatgen103 4: entry values (after masking FAT32's high four bits).
ENTRY_MASK = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}
BAD_CLUSTER = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}
END_OF_CHAIN_MIN = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}
END_OF_CHAIN = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}

# fatgen103 6: one 32-byte directory entry.
DIRENT_SIZE = 32
DIRENT_DTYPE = np.dtype(
    [
        ("name", "S11"),
        ("attr", "u1"),
        ("nt_res", "u1"),
        ("crt_time_tenth", "u1"),
        ("crt_time", "<u2"),
        ("crt_date", "<u2"),
        ("acc_date", "<u2"),
        ("cluster_hi", "<u2"),
        ("wrt_time", "<u2"),
        ("wrt_date", "<u2"),
        ("cluster_lo", "<u2"),
        ("size", "<u4"),
    ]
)
assert DIRENT_DTYPE.itemsize == DIRENT_SIZE

ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20
ATTR_LONG_NAME = 0x0F
ATTR_SETTABLE = ATTR_READ_ONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_ARCHIVE

FREE_MARK = 0xE5  # first name byte of a deleted entry
END_MARK = 0x00  # first name byte of the first never-used entry
KANJI_E5 = 0x05  # a real leading 0xE5 is stored as 0x05
NT_LOWER_BASE = 0x08  # Windows NT / Linux: the base name is lower case
NT_LOWER_EXT = 0x10

# fatgen103 7: a long-name entry carries 13 UTF-16 units at these byte offsets.
LFN_LAST = 0x40
LFN_ORDINAL_MASK = 0x3F
LFN_CHECKSUM_OFFSET = 13
LFN_CHARS = 13
LFN_CHAR_OFFSETS = np.array([1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30])
MAX_NAME_UNITS = 255
MAX_DIR_ENTRIES = 65536  # fatgen103 6: a directory holds at most 2^16 entries

# Characters allowed in a short name besides A-Z and 0-9 (fatgen103 6.1).
SHORT_EXTRA = set("$%'-_@~`!(){}^#&")
LONG_FORBIDDEN = set('\\/:*?"<>|')


def lfn_checksum(short_name: bytes) -> int:
    """fatgen103 7.2: rotate-right-and-add over the 11 bytes of the short name."""
    total = 0
    for byte in short_name:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total
