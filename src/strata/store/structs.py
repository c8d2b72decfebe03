"""On-disk layouts of the chunk store, declared apart from the code that uses them.

References: strata store format 1 (docs/architecture.md, "Store"); the frame idea follows
borg's repository objects (a version byte and the id on every object) and zstd's frame
header (RFC 8878 section 3.1.1, Frame_Content_Size).

Fixed-size headers on the hot path are ``struct.Struct``s rather than construct ``Struct``s:
one is parsed per 64 KiB chunk, and construct costs ~30 us per parse.
"""

from __future__ import annotations

import struct

import numpy as np

FORMAT_VERSION = 1

# Frame header, 32 bytes, little-endian, in front of every stored object:
#   0  4  magic          b"SCHK" chunk, b"SMFT" manifest
#   4  1  version        FORMAT_VERSION
#   5  1  codec          CODEC_STORED / CODEC_ZSTD
#   6  2  flags          0 (reserved)
#   8  4  raw_length     uncompressed length, <= the store's max chunk size
#  12  4  stored_length  payload bytes after this header
#  16 16  id             xxh3-128 digest of the uncompressed bytes
FRAME = struct.Struct("<4sBBHII16s")
CHUNK_MAGIC = b"SCHK"
MANIFEST_MAGIC = b"SMFT"
CODEC_STORED = 0
CODEC_ZSTD = 1
CODECS = {CODEC_STORED: "stored", CODEC_ZSTD: "zstd"}

# Pack file header, 16 bytes, then frames back to back (append-only):
#   0  8  magic    b"STRATAPK"
#   8  4  version  FORMAT_VERSION
#  12  4  reserved 0
PACK_HEADER = struct.Struct("<8sII")
PACK_MAGIC = b"STRATAPK"

# Manifest canonical bytes: this header, canonical JSON, then each table's rows in order.
#   0  8  magic          b"STRATAMF"
#   8  2  schema         MANIFEST_SCHEMA
#  10  2  reserved       0
#  12  4  json_length
MANIFEST_HEADER = struct.Struct("<8sHHI")
MANIFEST_MAGIC_BYTES = b"STRATAMF"
MANIFEST_SCHEMA = 1

# Chunk table rows: where a chunk sits in the logical stream and which chunk it is.
# ``id`` all zero = a run of zeros that was never stored.
CHUNK_ROW = np.dtype([("offset", "<u8"), ("length", "<u4"), ("id", "V16")])
