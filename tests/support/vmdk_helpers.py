"""VMDK test helpers: reference content, pyvmdk reads, and an independent stream walker.

The walker uses plain ``struct`` and nothing from strata, so it checks strata's
streamOptimized layout independently of strata's own reader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from support.images import GiB, MiB, write_sparse_raw

KiB = 1 << 10
SUBFORMATS = (
    "monolithicSparse",
    "streamOptimized",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
)


def runs_for(size: int) -> list[tuple[int, int]]:
    """Data runs that hit the awkward places: unaligned, across 2 GiB splits, at the end."""
    runs = [(0, 1 * MiB), (3 * MiB + 512 * 7, 100 * KiB), (40 * MiB, 64 * KiB)]
    if size > 2 * GiB:
        runs += [(2 * GiB - 32 * KiB, 64 * KiB), (2 * GiB + 5 * MiB, 3 * MiB)]
    if size > 5 * GiB:
        runs.append((5 * GiB + 12345 * 512, 300 * KiB))
    runs.append((size - 64 * KiB, 64 * KiB))
    return sorted(runs)


def reference(path: Path, size: int, seed: int = 1) -> Path:
    return write_sparse_raw(path, size, runs_for(size), seed=seed)


def pyvmdk_handle(path: Path):  # type: ignore[no-untyped-def]
    import pyvmdk

    handle = pyvmdk.handle()
    handle.open(str(path))
    handle.open_extent_data_files()
    return handle


def pyvmdk_windows(size: int) -> list[tuple[int, int]]:
    """Windows around every data run (and its edges) to compare through pyvmdk."""
    out = []
    for offset, length in runs_for(size):
        lo = max(0, offset - 128 * KiB)
        hi = min(size, offset + length + 128 * KiB)
        out.append((lo, hi - lo))
    out.append((size // 2 - 64 * KiB, 128 * KiB))
    return out


@dataclass
class StreamWalk:
    header: dict[str, int]
    footer: dict[str, int] = field(default_factory=dict)
    grains: dict[int, int] = field(default_factory=dict)  # sector of marker -> lba
    tables: list[int] = field(default_factory=list)  # sector of each GT
    gd_sector: int = -1
    markers: list[str] = field(default_factory=list)
    eos_at: int = -1
    size: int = 0


HEADER = struct.Struct("<4sIIQQQQIQQQB4sH433x")
FIELDS = [
    "magic",
    "version",
    "flags",
    "capacity",
    "grain_size",
    "descriptor_offset",
    "descriptor_size",
    "num_gtes_per_gt",
    "rgd_offset",
    "gd_offset",
    "overhead",
    "unclean",
    "check",
    "compress",
]


def parse_header(raw: bytes) -> dict[str, int]:
    return dict(zip(FIELDS, HEADER.unpack(raw), strict=True))


def walk_stream(path: Path) -> StreamWalk:
    """Walk every marker of a streamOptimized file from the first grain to the end."""
    data = path.read_bytes()
    walk = StreamWalk(parse_header(data[:512]), size=len(data))
    pos = walk.header["overhead"] * 512
    while pos + 512 <= len(data):
        value, size = struct.unpack_from("<QI", data, pos)
        if size:
            assert value % walk.header["grain_size"] == 0, f"grain LBA {value} at {pos}"
            walk.grains[pos // 512] = value
            walk.markers.append("grain")
            pos += -(-(12 + size) // 512) * 512
            continue
        (kind,) = struct.unpack_from("<I", data, pos + 12)
        assert data[pos + 16 : pos + 512] == bytes(496), f"marker padding at {pos}"
        if kind == 0:
            walk.markers.append("eos")
            walk.eos_at = pos
            break
        name = {1: "gt", 2: "gd", 3: "footer"}[kind]
        walk.markers.append(name)
        body = pos + 512
        if kind == 1:
            walk.tables.append(body // 512)
        elif kind == 2:
            walk.gd_sector = body // 512
        else:
            walk.footer = parse_header(data[body : body + 512])
        pos = body + value * 512
    return walk


def grain_table_entries(path: Path, walk: StreamWalk) -> list[int]:
    """Every grain-table entry, through the GD the footer names."""
    data = path.read_bytes()
    h = walk.footer
    grains = -(-h["capacity"] // h["grain_size"])
    gts = -(-grains // 512)
    gd = struct.unpack_from(f"<{gts}I", data, h["gd_offset"] * 512)
    entries: list[int] = []
    for sector in gd:
        if sector == 0:
            entries += [0] * 512
        else:
            entries += list(struct.unpack_from("<512I", data, sector * 512))
    return entries[:grains]
