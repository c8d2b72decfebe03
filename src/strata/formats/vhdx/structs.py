"""VHDX on-disk structures, declared apart from the logic that reads and writes them.

References: [MS-VHDX] Virtual Hard Disk v2 (VHDX) File Format, sections 2.1-2.6.
All integers are little-endian; GUIDs are stored in Microsoft's mixed-endian layout
(``uuid.UUID.bytes_le``).
"""

from __future__ import annotations

import uuid

from construct import Bytes, Const, Int16ul, Int32ul, Int64ul, Padding, Struct

from strata.native import crc32c

KiB = 1 << 10
MiB = 1 << 20

# 2.1 Layout: the header section is the first 1 MiB.
FILE_ID_OFFSET = 0
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
HEADER_SIZE = 4 * KiB
REGION_TABLE_SIZE = 64 * KiB
METADATA_TABLE_SIZE = 64 * KiB
HEADER_SECTION_SIZE = 1 * MiB
LOG_SECTOR = 4 * KiB
ALIGNMENT = 1 * MiB
SECTOR_BITMAP_BLOCK = 1 * MiB
MAX_ENTRIES = 2047
MAX_VIRTUAL_SIZE = 64 << 40  # 2.6.2.2: at most 64 TB
MIN_BLOCK, MAX_BLOCK = 1 * MiB, 256 * MiB
LOGICAL_SECTOR_SIZES = (512, 4096)
CHUNK_SECTORS = 1 << 23  # sectors described by one 1 MiB sector bitmap block


def guid(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def guid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(raw))).upper()


ZERO_GUID = bytes(16)

# 2.2.3.2 Known regions
BAT_REGION = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")

# 2.6.2 Known metadata items
FILE_PARAMETERS = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VIRTUAL_DISK_ID = guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
# 2.6.2.6.1 the only defined parent locator type: a VHDX parent
VHDX_PARENT_LOCATOR_TYPE = guid("B04AEFB7-D19E-4A81-B789-25B8E9445913")

KNOWN_METADATA = {
    FILE_PARAMETERS: "file parameters",
    VIRTUAL_DISK_SIZE: "virtual disk size",
    VIRTUAL_DISK_ID: "virtual disk id",
    LOGICAL_SECTOR_SIZE: "logical sector size",
    PHYSICAL_SECTOR_SIZE: "physical sector size",
    PARENT_LOCATOR: "parent locator",
}

# 2.5.1.1 Payload BAT entry states, 2.5.1.2 sector bitmap states
PAYLOAD_NOT_PRESENT = 0
PAYLOAD_UNDEFINED = 1
PAYLOAD_ZERO = 2
PAYLOAD_UNMAPPED = 3
PAYLOAD_FULLY_PRESENT = 6
PAYLOAD_PARTIALLY_PRESENT = 7
PAYLOAD_STATES = (0, 1, 2, 3, 6, 7)
BITMAP_NOT_PRESENT = 0
BITMAP_PRESENT = 6
BAT_STATE_MASK = 0x7
BAT_OFFSET_SHIFT = 20

# 2.2.1 File type identifier (64 KiB block; only the first 520 bytes are defined)
FileIdentifier = Struct(
    "signature" / Const(b"vhdxfile"),
    "creator" / Bytes(512),  # UTF-16LE, NUL padded
)

# 2.2.2 Header (4 KiB; CRC-32C over all of it with the checksum zeroed)
Header = Struct(
    "signature" / Const(b"head"),
    "checksum" / Int32ul,
    "sequence_number" / Int64ul,
    "file_write_guid" / Bytes(16),
    "data_write_guid" / Bytes(16),
    "log_guid" / Bytes(16),
    "log_version" / Int16ul,
    "version" / Int16ul,
    "log_length" / Int32ul,
    "log_offset" / Int64ul,
    Padding(4016),
)
HEADER_CHECKSUM_AT = 4

# 2.2.3.1 Region table header and 2.2.3.2 entries (64 KiB table, CRC-32C over all of it)
RegionTableHeader = Struct(
    "signature" / Const(b"regi"),
    "checksum" / Int32ul,
    "entry_count" / Int32ul,
    "reserved" / Int32ul,
)
RegionTableEntry = Struct(
    "guid" / Bytes(16),
    "file_offset" / Int64ul,
    "length" / Int32ul,
    "required" / Int32ul,  # bit 0
)
REGION_HEADER_SIZE = 16
REGION_ENTRY_SIZE = 32

# 2.6.1.1 Metadata table header and 2.6.1.2 entries (64 KiB table)
MetadataTableHeader = Struct(
    "signature" / Const(b"metadata"),
    "reserved" / Int16ul,
    "entry_count" / Int16ul,
    Padding(20),
)
MetadataTableEntry = Struct(
    "item_id" / Bytes(16),
    "offset" / Int32ul,  # from the start of the metadata region, >= 64 KiB
    "length" / Int32ul,
    "flags" / Int32ul,  # bit 0 IsUser, bit 1 IsVirtualDisk, bit 2 IsRequired
    "reserved" / Int32ul,
)
METADATA_HEADER_SIZE = 32
METADATA_ENTRY_SIZE = 32
META_IS_USER = 1
META_IS_VIRTUAL_DISK = 2
META_IS_REQUIRED = 4

# 2.6.2.1 File parameters
FileParameters = Struct(
    "block_size" / Int32ul,
    "flags" / Int32ul,  # bit 0 LeaveBlocksAllocated, bit 1 HasParent
)
LEAVE_BLOCKS_ALLOCATED = 1
HAS_PARENT = 2

# 2.6.2.6 Parent locator header and key-value entries (offsets from the item start)
ParentLocatorHeader = Struct(
    "locator_type" / Bytes(16),
    "reserved" / Int16ul,
    "key_value_count" / Int16ul,
)
ParentLocatorEntry = Struct(
    "key_offset" / Int32ul,
    "value_offset" / Int32ul,
    "key_length" / Int16ul,
    "value_length" / Int16ul,
)
LOCATOR_HEADER_SIZE = 20
LOCATOR_ENTRY_SIZE = 12
LOCATOR_KEYS = (
    "parent_linkage",
    "parent_linkage2",
    "relative_path",
    "volume_path",
    "absolute_win32_path",
)

# 2.3.1.1 Log entry header; 2.3.1.2 zero descriptor; 2.3.1.3 data descriptor; 2.3.1.4 data sector
LogEntryHeader = Struct(
    "signature" / Const(b"loge"),
    "checksum" / Int32ul,
    "entry_length" / Int32ul,
    "tail" / Int32ul,
    "sequence_number" / Int64ul,
    "descriptor_count" / Int32ul,
    "reserved" / Int32ul,
    "log_guid" / Bytes(16),
    "flushed_file_offset" / Int64ul,
    "last_file_offset" / Int64ul,
)
LOG_HEADER_SIZE = 64
LOG_DESCRIPTOR_SIZE = 32
LogZeroDescriptor = Struct(
    "signature" / Const(b"zero"),
    "reserved" / Int32ul,
    "zero_length" / Int64ul,
    "file_offset" / Int64ul,
    "sequence_number" / Int64ul,
)
LogDataDescriptor = Struct(
    "signature" / Const(b"desc"),
    "trailing_bytes" / Bytes(4),
    "leading_bytes" / Bytes(8),
    "file_offset" / Int64ul,
    "sequence_number" / Int64ul,
)
LogDataSector = Struct(
    "signature" / Const(b"data"),
    "sequence_high" / Int32ul,
    "data" / Bytes(4084),
    "sequence_low" / Int32ul,
)


def checksum(buf: bytes | bytearray | memoryview, at: int = 4) -> int:
    """CRC-32C of ``buf`` with the 4-byte checksum field at ``at`` taken as zero."""
    view = memoryview(buf)
    crc = crc32c(view[:at])
    crc = crc32c(b"\0\0\0\0", crc)
    return crc32c(view[at + 4 :], crc)


def with_checksum(buf: bytearray, at: int = 4) -> bytearray:
    """Fill the checksum field of ``buf`` in place."""
    buf[at : at + 4] = checksum(buf, at).to_bytes(4, "little")
    return buf
