"""The regf base block, as far as strata checks it before handing a hive to hivex.

References: hivex(3) and its lib/hivex-internal.h (``struct ntreg_header``); Joachim Metz,
"Windows NT Registry File (REGF) format specification" (libregf docs), section 2 "File header".
"""

from __future__ import annotations

from construct import Bytes, Const, Int32ul, Int64ul, Struct

BASE_BLOCK_SIZE = 4096
CHECKSUMMED = 508  # the checksum is the XOR of the first 127 little-endian dwords
CHECKSUM_OFFSET = 0x1FC
BINS_SIZE_OFFSET = 0x28

# REGF spec 2.1 "File header" (the first 512 bytes of the 4 KiB base block).
BaseBlock = Struct(
    "signature" / Const(b"regf"),
    "sequence1" / Int32ul,  # differs from sequence2 while a write is unfinished ("dirty")
    "sequence2" / Int32ul,
    "timestamp" / Int64ul,
    "major" / Int32ul,
    "minor" / Int32ul,
    "file_type" / Int32ul,
    "file_format" / Int32ul,
    "root_cell" / Int32ul,
    "hive_bins_data_size" / Int32ul,
    "clustering_factor" / Int32ul,
    "file_name" / Bytes(64),
    "reserved" / Bytes(CHECKSUM_OFFSET - 0x70),
    "checksum" / Int32ul,
)
