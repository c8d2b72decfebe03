"""VHD on-disk structures: footer, dynamic header, parent locators; checksum and geometry.

References: Microsoft "Virtual Hard Disk Image Format Specification" v1.0 (2006):
"Hard Disk Footer Format", "Dynamic Disk Header Format", "Block Allocation Table and Data
Blocks", "Splitting Hard Disk Images" / "Implementing a Differencing Hard Disk", and
Appendix "CHS Calculation".  All fields are big-endian.
"""

from __future__ import annotations

import datetime as dt
import uuid

from construct import Array, Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

SECTOR = 512
FOOTER_SIZE = 512
HEADER_SIZE = 1024
FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
FEATURES_RESERVED = 0x00000002
FORMAT_VERSION = 0x00010000
HEADER_VERSION = 0x00010000
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
UNALLOCATED = 0xFFFFFFFF
DEFAULT_BLOCK_SIZE = 2 << 20
MAX_SECTORS = 0xFF000000  # 2040 GiB, the limit Hyper-V and qemu accept
MAX_SIZE = MAX_SECTORS * SECTOR
MAX_GEOMETRY = (65535, 16, 255)
LOCATOR_COUNT = 8
# Creators whose current size qemu (2.5+) trusts over the CHS geometry (block/vpc.c).
CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4
DISK_TYPES = {DISK_FIXED: "fixed", DISK_DYNAMIC: "dynamic", DISK_DIFFERENCING: "differencing"}

# Platform codes ("Parent Locator Entry"): W2ru relative, W2ku absolute Windows paths
# (UTF-16LE); Mac/MacX are Mac OS aliases and file:// URLs (UTF-8).
PLATFORM_W2RU = b"W2ru"
PLATFORM_W2KU = b"W2ku"
PLATFORM_MACX = b"MacX"
PLATFORM_NONE = b"\0\0\0\0"

# The spec's epoch for every VHD timestamp.
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

# "Hard Disk Footer Format" (512 bytes, spec table 1).
Footer = Struct(
    "cookie" / Bytes(8),
    "features" / Int32ub,
    "format_version" / Int32ub,
    "data_offset" / Int64ub,
    "timestamp" / Int32ub,
    "creator_app" / Bytes(4),
    "creator_version" / Int32ub,
    "creator_os" / Bytes(4),
    "original_size" / Int64ub,
    "current_size" / Int64ub,
    "cylinders" / Int16ub,
    "heads" / Int8ub,
    "sectors_per_track" / Int8ub,
    "disk_type" / Int32ub,
    "checksum" / Int32ub,
    "unique_id" / Bytes(16),
    "saved_state" / Int8ub,
    "reserved" / Bytes(427),
)
FOOTER_CHECKSUM_AT = 64

# "Parent Locator Entry" (24 bytes, eight of them in the dynamic header).
ParentLocator = Struct(
    "platform_code" / Bytes(4),
    "data_space" / Int32ub,
    "data_length" / Int32ub,
    "reserved" / Int32ub,
    "data_offset" / Int64ub,
)
LOCATOR_SIZE = 24

# "Dynamic Disk Header Format" (1024 bytes, spec table 2).
DynamicHeader = Struct(
    "cookie" / Bytes(8),
    "data_offset" / Int64ub,
    "table_offset" / Int64ub,
    "header_version" / Int32ub,
    "max_table_entries" / Int32ub,
    "block_size" / Int32ub,
    "checksum" / Int32ub,
    "parent_unique_id" / Bytes(16),
    "parent_timestamp" / Int32ub,
    "reserved1" / Int32ub,
    "parent_name" / Bytes(512),
    "locators" / Array(LOCATOR_COUNT, ParentLocator),
    "reserved2" / Bytes(256),
)
HEADER_CHECKSUM_AT = 36
HEADER_LOCATORS_AT = 576

# "Block Allocation Table": u32 sector numbers; bitmaps are MSB-first (bit 7 = first sector).
# A dtype string, not np.dtype: the fixed and dynamic writers run without numpy (start-up).
BAT_DTYPE = ">u4"
BAT_ENTRY = 4
# Where strata puts a new block's data (after its bitmap): 4 KiB, a page and an NTFS cluster.
DATA_ALIGN = 4096


def checksum(data: bytes | bytearray | memoryview, field_at: int) -> int:
    """Ones' complement of the byte sum, the 4-byte checksum field counted as zero."""
    raw = bytes(data)
    total = sum(raw) - sum(raw[field_at : field_at + 4])
    return ~total & 0xFFFFFFFF


def with_checksum(raw: bytes, field_at: int) -> bytes:
    value = checksum(raw, field_at)
    return raw[:field_at] + value.to_bytes(4, "big") + raw[field_at + 4 :]


def chs_geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for ``size`` bytes: spec Appendix "CHS Calculation"."""
    total = min(size // SECTOR, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max(4, (cyl_heads + 1023) // 1024)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


def chs_size(cylinders: int, heads: int, spt: int) -> int:
    return cylinders * heads * spt * SECTOR


def align_bitmap(free: int, bitmap_size: int) -> int:
    """Where a new block's bitmap goes so that its data starts ``DATA_ALIGN`` aligned."""
    data = -(-(free + bitmap_size) // DATA_ALIGN) * DATA_ALIGN
    return data - bitmap_size


def bitmap_bytes(block_size: int) -> int:
    """Size of a block's sector bitmap: one bit per sector, padded to a whole sector."""
    return -(-(block_size // SECTOR // 8) // SECTOR) * SECTOR


def vhd_timestamp(when: dt.datetime | None = None) -> int:
    moment = when or dt.datetime.now(dt.UTC)
    return max(0, int((moment - EPOCH).total_seconds())) & 0xFFFFFFFF


def timestamp_text(value: int) -> str:
    return (EPOCH + dt.timedelta(seconds=value)).isoformat()


def new_uuid() -> bytes:
    return uuid.uuid4().bytes


def uuid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=bytes(raw)))


def decode_name(raw: bytes, encoding: str) -> str:
    """A NUL-terminated UTF-16 string; undecodable bytes become U+FFFD, never an exception."""
    data = bytes(raw)
    for index in range(0, len(data) - 1, 2):
        if data[index : index + 2] == b"\0\0":
            data = data[:index]
            break
    return data.decode(encoding, errors="replace")
