"""On-disk layouts of NTFS 3.x: boot sector, MFT (FILE) record header, attribute headers and the
attribute values strata reads, as construct Structs (one-off parses) and numpy dtypes (the bulk
MFT scan reads the same fields for every record at once).

References: Microsoft [MS-FSCC] 2.1.2 (reparse data), 2.4 (file attributes); "NTFS Documentation"
(Russon & Fledel, linux-ntfs project): boot sector (3.2 $Boot), FILE record (4.1), attribute
header (4.2), $STANDARD_INFORMATION (5.1), $ATTRIBUTE_LIST (5.2), $FILE_NAME (5.3), $DATA (5.7),
$REPARSE_POINT (5.12), $Secure $SDS (3.12), runlists (7.6), LZNT1 compression (7.4);
libfsntfs "New Technologies File System (NTFS)" format documentation (same facts).
"""

from __future__ import annotations

import numpy as np
from construct import (
    Bytes,
    Const,
    Int8sl,
    Int8ul,
    Int16sl,
    Int16ul,
    Int32ul,
    Int64ul,
    Padding,
    Struct,
)

# $Boot (Russon 3.2): the BIOS parameter block of an NTFS volume, sector 0.
BOOT_SECTOR = Struct(
    "jump" / Bytes(3),
    "oem_id" / Const(b"NTFS    "),
    "bytes_per_sector" / Int16ul,
    "sectors_per_cluster" / Int8ul,
    "reserved_sectors" / Int16ul,
    Padding(5),
    "media" / Int8ul,
    Padding(2),
    "sectors_per_track" / Int16ul,
    "heads" / Int16ul,
    "hidden_sectors" / Int32ul,
    Padding(8),
    "total_sectors" / Int64ul,
    "mft_lcn" / Int64ul,
    "mftmirr_lcn" / Int64ul,
    "clusters_per_mft_record" / Int8sl,
    Padding(3),
    "clusters_per_index_record" / Int8sl,
    Padding(3),
    "serial" / Int64ul,
)
BOOT_SIGNATURE_OFFSET = 510

FILE_MAGIC = int.from_bytes(b"FILE", "little")
BAAD_MAGIC = int.from_bytes(b"BAAD", "little")

# FILE record header (Russon 4.1), NTFS 3.1 layout; ``itemsize`` is set per volume so a
# (records, record_size) byte array views as one header per record.
RECORD_FIELDS = (
    ("magic", "<u4", 0),
    ("usa_offset", "<u2", 4),
    ("usa_count", "<u2", 6),
    ("lsn", "<u8", 8),
    ("sequence", "<u2", 16),
    ("link_count", "<u2", 18),
    ("attrs_offset", "<u2", 20),
    ("flags", "<u2", 22),
    ("bytes_in_use", "<u4", 24),
    ("bytes_allocated", "<u4", 28),
    ("base_record", "<u8", 32),
    ("next_attr_id", "<u2", 40),
    ("record_number", "<u4", 44),
)
RECORD_HEADER_SIZE = 48
RECORD_IN_USE = 0x0001
RECORD_IS_DIRECTORY = 0x0002


def record_dtype(record_size: int) -> np.dtype:
    names, formats, offsets = zip(*RECORD_FIELDS, strict=True)
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": record_size}
    )


# Attribute header (Russon 4.2): common part, then resident or non-resident form.
ATTR_COMMON = Struct(
    "type" / Int32ul,
    "length" / Int32ul,
    "non_resident" / Int8ul,
    "name_length" / Int8ul,
    "name_offset" / Int16ul,
    "flags" / Int16ul,
    "attr_id" / Int16ul,
)
ATTR_RESIDENT = Struct(
    "value_length" / Int32ul,
    "value_offset" / Int16ul,
    "indexed" / Int8ul,
    Padding(1),
)
ATTR_NONRESIDENT = Struct(
    "start_vcn" / Int64ul,
    "last_vcn" / Int64ul,
    "runlist_offset" / Int16ul,
    "compression_unit" / Int16ul,
    Padding(4),
    "allocated_size" / Int64ul,
    "data_size" / Int64ul,
    "initialized_size" / Int64ul,
)
ATTR_COMMON_SIZE = 16
ATTR_RESIDENT_SIZE = 24
ATTR_NONRESIDENT_SIZE = 64
# The same three headers for struct.unpack_from (the per-record parser runs for every changed
# file with streams or an attribute list; construct cost ~35 us an attribute).
ATTR_COMMON_FORMAT = "<IIBBHHH"
ATTR_RESIDENT_FORMAT = "<IHBx"
ATTR_NONRESIDENT_FORMAT = "<QQHH4xQQQ"
ATTR_END = 0xFFFFFFFF
ATTR_FLAG_COMPRESSED = 0x0001
ATTR_FLAG_ENCRYPTED = 0x4000
ATTR_FLAG_SPARSE = 0x8000

# Attribute type codes (Russon 5, $AttrDef).
STANDARD_INFORMATION = 0x10
ATTRIBUTE_LIST = 0x20
FILE_NAME = 0x30
OBJECT_ID = 0x40
SECURITY_DESCRIPTOR = 0x50
VOLUME_NAME = 0x60
VOLUME_INFORMATION = 0x70
DATA = 0x80
INDEX_ROOT = 0x90
INDEX_ALLOCATION = 0xA0
BITMAP = 0xB0
REPARSE_POINT = 0xC0

# $STANDARD_INFORMATION (Russon 5.1); the security id exists from NTFS 3.0 (72-byte value).
STANDARD_INFO = Struct(
    "created" / Int64ul,
    "modified" / Int64ul,
    "mft_modified" / Int64ul,
    "accessed" / Int64ul,
    "file_attributes" / Int32ul,
    "max_versions" / Int32ul,
    "version" / Int32ul,
    "class_id" / Int32ul,
    "owner_id" / Int32ul,
    "security_id" / Int32ul,
)
STANDARD_INFO_V1_SIZE = 48
STANDARD_INFO_V3_SIZE = 72

# $FILE_NAME (Russon 5.3): the name follows at offset 66 (UTF-16LE, ``name_length`` units).
FILE_NAME_VALUE = Struct(
    "parent_ref" / Int64ul,
    "created" / Int64ul,
    "modified" / Int64ul,
    "mft_modified" / Int64ul,
    "accessed" / Int64ul,
    "allocated_size" / Int64ul,
    "data_size" / Int64ul,
    "flags" / Int32ul,
    "reparse" / Int32ul,
    "name_length" / Int8ul,
    "namespace" / Int8ul,
)
FILE_NAME_SIZE = 66
NAMESPACE_POSIX, NAMESPACE_WIN32, NAMESPACE_DOS, NAMESPACE_WIN32_DOS = 0, 1, 2, 3

# $ATTRIBUTE_LIST entry (Russon 5.2).
ATTR_LIST_ENTRY = Struct(
    "type" / Int32ul,
    "length" / Int16ul,
    "name_length" / Int8ul,
    "name_offset" / Int8ul,
    "start_vcn" / Int64ul,
    "base_ref" / Int64ul,
    "attr_id" / Int16ul,
)
ATTR_LIST_ENTRY_SIZE = 26
ATTR_LIST_ENTRY_FORMAT = "<IHBBQQH"  # the same entry for struct.unpack_from

# Reparse data buffer header and the two link kinds ([MS-FSCC] 2.1.2.1, 2.1.2.4, 2.1.2.5).
REPARSE_HEADER = Struct("tag" / Int32ul, "data_length" / Int16ul, Padding(2))
REPARSE_LINK = Struct(
    "subst_offset" / Int16ul,
    "subst_length" / Int16ul,
    "print_offset" / Int16ul,
    "print_length" / Int16ul,
)
REPARSE_HEADER_SIZE = 8
TAG_MOUNT_POINT = 0xA0000003
TAG_SYMLINK = 0xA000000C
SYMLINK_RELATIVE = 0x1

# $Secure:$SDS entry header (Russon 3.12): entries are 16-byte aligned; every 256 KiB block is
# followed by a 256 KiB mirror copy.
SDS_ENTRY = Struct(
    "hash" / Int32ul,
    "security_id" / Int32ul,
    "offset" / Int64ul,
    "length" / Int32ul,
)
SDS_ENTRY_SIZE = 20
SDS_ENTRY_FORMAT = "<IIQI"  # the same header for struct.unpack_from: hash, id, offset, length
SDS_BLOCK = 256 * 1024

# $VOLUME_INFORMATION value (Russon 5.6): 8 reserved bytes, the NTFS version, the flags.
VOLUME_INFO = Struct(Padding(8), "major" / Int8ul, "minor" / Int8ul, "flags" / Int16ul)
VOLUME_INFO_SIZE = 12
VOLUME_IS_DIRTY = 0x0001  # chkdsk runs at the next boot (``fsutil dirty set``, or damage seen)

# $LogFile restart page (linux-ntfs logfile.h): the first two pages of the journal each hold
# one, the current one being the one with the higher LSN.  Its header is multi-sector
# protected like a FILE record; every field read here lies in the first 510 bytes.
RESTART_PAGE_HEADER = Struct(
    "magic" / Bytes(4),  # RSTR, or CHKD once chkdsk rewrote it
    "usa_offset" / Int16ul,
    "usa_count" / Int16ul,
    "chkdsk_lsn" / Int64ul,
    "system_page_size" / Int32ul,
    "log_page_size" / Int32ul,
    "restart_area_offset" / Int16ul,
    "minor_version" / Int16sl,
    "major_version" / Int16sl,
)
RESTART_PAGE_HEADER_SIZE = 30
RESTART_AREA = Struct(
    "current_lsn" / Int64ul,
    "log_clients" / Int16ul,
    "client_free_list" / Int16ul,
    "client_in_use_list" / Int16ul,
    "flags" / Int16ul,
    "seq_number_bits" / Int32ul,
    "restart_area_length" / Int16ul,
    "client_array_offset" / Int16ul,
    "file_size" / Int64ul,
    "last_lsn_data_length" / Int32ul,
    "log_record_header_length" / Int16ul,
    "log_page_data_offset" / Int16ul,
)
RESTART_AREA_FILE_SIZE_OFFSET = 0x18  # fields before it must precede the first fixup word
RESTART_AREA_SIZE = 0x28
LOG_CLIENT_RECORD_SIZE = 0xA0
LOGFILE_NO_CLIENT = 0xFFFF
RESTART_VOLUME_IS_CLEAN = 0x0002
LOGFILE_RECORD = 2
VOLUME_RECORD = 3

# Well-known MFT record numbers (Russon 3).
MFT_RECORD, ROOT_RECORD, SECURE_RECORD = 0, 5, 9
FIRST_USER_RECORD = 16
REF_RECORD_MASK = (1 << 48) - 1

# File attribute flags ([MS-FSCC] 2.6).
FILE_ATTRIBUTES = {
    0x0001: "readonly",
    0x0002: "hidden",
    0x0004: "system",
    0x0010: "directory",
    0x0020: "archive",
    0x0080: "normal",
    0x0100: "temporary",
    0x0200: "sparse",
    0x0400: "reparse",
    0x0800: "compressed",
    0x1000: "offline",
    0x2000: "not-indexed",
    0x4000: "encrypted",
}
DUP_DIRECTORY = 0x10000000  # $FILE_NAME flags: the file is a directory (index present)

# FILETIME epoch: 100 ns intervals since 1601-01-01 UTC.
FILETIME_UNIX_OFFSET = 116444736000000000

# Directory indexes ($I30: keys are $FILE_NAME values), Russon 5.9 ($INDEX_ROOT),
# 5.10 ($INDEX_ALLOCATION), 4.3 (INDX record); libfsntfs "Index" (same facts).
INDEX_ROOT_HEADER = Struct(
    "attr_type" / Int32ul,  # 0x30: an index of file names
    "collation" / Int32ul,
    "block_size" / Int32ul,  # bytes of one INDX block
    "clusters_per_block" / Int8ul,
    Padding(3),
)
INDEX_ROOT_HEADER_SIZE = 16
INDEX_NODE_HEADER = Struct(  # offsets are from the start of this header
    "entries_offset" / Int32ul,
    "entries_end" / Int32ul,
    "allocated" / Int32ul,
    "flags" / Int8ul,  # 1: entries have sub-nodes (INDX blocks)
    Padding(3),
)
INDEX_NODE_HEADER_SIZE = 16
INDX_MAGIC = b"INDX"
INDX_NODE_OFFSET = 0x18  # an INDX block: magic, update sequence, LSN, VCN, then the node
INDX_VCN_OFFSET = 0x10
# one index entry: file reference u64, entry length u16, key length u16, flags u32, then the
# key; an entry with a sub-node ends with that node's VCN (u64)
INDEX_ENTRY_FORMAT = "<QHHI"
INDEX_ENTRY_SIZE = 16
INDEX_ENTRY_SUBNODE = 0x1
INDEX_ENTRY_LAST = 0x2
INDEX_NAME = "$I30"
