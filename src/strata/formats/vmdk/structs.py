"""VMDK on-disk structures.

References: VMware Virtual Disk Format 5.0 — §"Hosted Sparse Extent Header"
(SparseExtentHeader), §"Stream-Optimized Compressed Sparse Extents" (grain and
metadata markers, footer, end-of-stream), §"Grain Directory and Grain Tables".
"""

from __future__ import annotations

import struct

from construct import Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct

SECTOR = 512
MAGIC = b"KDMV"
DESCRIPTOR_MAGIC = b"# Disk DescriptorFile"

# SparseExtentHeader.flags
FLAG_NEWLINE_TEST = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_ZEROED_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
KNOWN_FLAGS = (
    FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT | FLAG_ZEROED_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS
)

COMPRESSION_NONE = 0
COMPRESSION_DEFLATE = 1

GD_AT_END = 0xFFFF_FFFF_FFFF_FFFF
GRAIN_SECTORS = 128
GTES_PER_GT = 512
DESCRIPTOR_SECTORS = 20  # what qemu and VMware Workstation reserve for an embedded descriptor

# Grain-table entry values with a meaning of their own (zeroed-grain flag set).
GTE_UNALLOCATED = 0
GTE_ZEROED = 1

# Marker types (stream-optimized), Virtual Disk Format 5.0 §"Metadata markers".
MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

# §"Hosted Sparse Extent Header": 512 bytes, little-endian.
SparseExtentHeader = Struct(
    "magic" / Const(MAGIC),
    "version" / Int32ul,
    "flags" / Int32ul,
    "capacity" / Int64ul,
    "grain_size" / Int64ul,
    "descriptor_offset" / Int64ul,
    "descriptor_size" / Int64ul,
    "num_gtes_per_gt" / Int32ul,
    "rgd_offset" / Int64ul,
    "gd_offset" / Int64ul,
    "overhead" / Int64ul,
    "unclean_shutdown" / Int8ul,
    "single_end_line_char" / Int8ul,
    "non_end_line_char" / Int8ul,
    "double_end_line_char1" / Int8ul,
    "double_end_line_char2" / Int8ul,
    "compress_algorithm" / Int16ul,
    "pad" / Bytes(433),
)
HEADER_SIZE = 512
assert SparseExtentHeader.sizeof() == HEADER_SIZE

# The newline-detection bytes: "\n", " ", "\r", "\n" (flag bit 0).
CHECK_BYTES = (0x0A, 0x20, 0x0D, 0x0A)

# §"Grain Marker": lba u64, size u32, then ``size`` bytes of deflate (zlib) data,
# the whole padded to a sector.
GrainMarker = Struct("lba" / Int64ul, "size" / Int32ul)
GRAIN_MARKER_SIZE = 12
# The same layout as a precompiled struct for the per-grain hot paths
# (construct costs ~30 us per build, more than framing a grain should).
GRAIN_MARKER = struct.Struct("<QI")
assert GRAIN_MARKER.size == GrainMarker.sizeof() == GRAIN_MARKER_SIZE

# §"Metadata markers": numSectors u64, size u32 (= 0), type u32, padded to a sector.
MetadataMarker = Struct("num_sectors" / Int64ul, "size" / Int32ul, "type" / Int32ul)
METADATA_MARKER_SIZE = 16

# A dtype string, not np.dtype: probing every format (each command) then needs no numpy.
GTE_DTYPE = "<u4"
# Grain directory and grain table entries are 32-bit sector numbers: every grain and table of
# a sparse extent must start below this sector of its file.
MAX_EXTENT_SECTORS = 1 << 32


def header_defaults() -> dict[str, int | bytes]:
    """Fields every header strata writes shares."""
    return {
        "unclean_shutdown": 0,
        "single_end_line_char": CHECK_BYTES[0],
        "non_end_line_char": CHECK_BYTES[1],
        "double_end_line_char1": CHECK_BYTES[2],
        "double_end_line_char2": CHECK_BYTES[3],
        "pad": bytes(433),
    }


def build_header(**fields: int) -> bytes:
    values: dict[str, int | bytes] = header_defaults()
    values.update(fields)
    return SparseExtentHeader.build(values)


def metadata_marker(kind: int, num_sectors: int) -> bytes:
    """A metadata marker sector (GT, GD, footer, end-of-stream)."""
    head = MetadataMarker.build({"num_sectors": num_sectors, "size": 0, "type": kind})
    return head + bytes(SECTOR - len(head))
