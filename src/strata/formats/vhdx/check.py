"""``strata disk check`` for VHDX: every structure, both copies, every BAT entry.

References: [MS-VHDX] 2.2 (headers, region tables), 2.3.3 (log replay), 2.5 (BAT), 2.6 (metadata).
Unlike opening, which tolerates one damaged header or region table copy, check reports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strata.errors import CorruptImage, StrataError
from strata.formats.registry import Problem
from strata.formats.vhdx import log as vlog
from strata.formats.vhdx import structs as S
from strata.formats.vhdx.layout import Geometry, Region
from strata.formats.vhdx.reader import (
    ImageFile,
    bat_problems,
    check_layout,
    load_bat,
    parse_file_identifier,
    parse_metadata,
    read_headers,
    read_region_tables,
    region,
    select_header,
    select_regions,
)

LIMIT = 100


def problem_of(e: StrataError) -> Problem:
    if isinstance(e, CorruptImage):
        return Problem(e.structure, e.problem, e.field, e.offset)
    return Problem("image", e.message)


def check(path: str, allowed_dirs: Sequence[str] = ()) -> list[Problem]:
    """Every structure of the file; the parent is not opened (``allowed_dirs`` unused)."""
    problems: list[Problem] = []
    f = ImageFile(path, False)
    try:
        _check(f, problems)
    except StrataError as e:
        problems.append(problem_of(e))
    finally:
        f.close()
    return problems


def _check(f: ImageFile, problems: list[Problem]) -> None:
    try:
        parse_file_identifier(f)
    except CorruptImage as e:
        problems.append(problem_of(e))
    problems += [problem_of(h) for h in read_headers(f) if isinstance(h, CorruptImage)]
    _, header = select_header(f)
    if header.log_guid != S.ZERO_GUID:
        replay = vlog.load_replay(
            f.read, f.path, header.log_offset, header.log_length, header.log_guid, f.size
        )
        f.patches = replay.writes
        if replay.entries:
            f.size = max(f.size, replay.head.last_file_offset)
        problems.append(
            Problem(
                "log",
                f"{len(replay.entries)} live log entries must be replayed "
                "(strata replays them on open)"
                if replay.entries
                else "LogGuid is set but no complete entry carries it (a writer stopped "
                "before or while logging); nothing to replay",
                "LogGuid",
                header.log_offset,
                severity="warning",
            )
        )
    tables = read_region_tables(f)
    problems += [problem_of(t) for t in tables if isinstance(t, StrataError)]
    regions = select_regions(f)
    check_layout(f, regions, header)
    meta_region = region(regions, S.METADATA_REGION)
    m = parse_metadata(f, meta_region)
    g = Geometry(m.virtual_size, m.block_size, m.logical_sector, m.has_parent)
    bat_region = region(regions, S.BAT_REGION)
    bat = load_bat(f, bat_region, g)
    reserved = [(r.file_offset, r.end, _name(r)) for r in regions]
    if header.log_length:
        reserved.append((header.log_offset, header.log_offset + header.log_length, "log"))
    for p in bat_problems(bat, g, f.size, reserved, LIMIT):
        problems.append(_bat(bat_region, p.index, p.message))
    problems += _overlaps(bat, g, bat_region)
    problems += _bitmaps(bat, g, bat_region)
    if not g.has_parent:
        bitmaps = ~g.payload_mask() & ((bat & np.uint64(S.BAT_STATE_MASK)) == S.BITMAP_PRESENT)
        problems += [
            _bat(
                bat_region,
                int(i),
                "a sector bitmap is allocated in a disk without a parent",
                "warning",
            )
            for i in np.flatnonzero(bitmaps)[:LIMIT]
        ]
    reserved_bits = np.flatnonzero(bat & np.uint64(0xFFFF8))[:LIMIT]
    problems += [
        _bat(bat_region, int(i), "reserved bits 3-19 are set", "warning") for i in reserved_bits
    ]


def _name(r: Region) -> str:
    return {S.BAT_REGION: "BAT region", S.METADATA_REGION: "metadata region"}.get(r.guid, "region")


def _bat(r: Region, index: int, message: str, severity: str = "error") -> Problem:
    return Problem(
        "BAT", f"entry {index}: {message}", "FileOffsetMB", r.file_offset + 8 * index, severity
    )


def _present(bat: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    states = bat & np.uint64(S.BAT_STATE_MASK)
    payload = g.payload_mask()
    present = (payload & np.isin(states, [6, 7])) | (~payload & (states == 6))
    index = np.flatnonzero(present)
    offsets = (bat[index] >> np.uint64(20)).astype(np.int64) << 20
    sizes = np.where(payload[index], g.block_size, S.SECTOR_BITMAP_BLOCK)
    return index, offsets, sizes


def _overlaps(bat: np.ndarray, g: Geometry, r: Region) -> list[Problem]:
    """Two BAT entries must never share file space."""
    index, offsets, sizes = _present(bat, g)
    order = np.argsort(offsets, kind="stable")
    offsets, sizes, index = offsets[order], sizes[order], index[order]
    clash = np.flatnonzero(offsets[1:] < offsets[:-1] + sizes[:-1])[:LIMIT]
    return [
        _bat(
            r,
            int(index[i + 1]),
            f"block at {int(offsets[i + 1]):#x} overlaps the block of entry {int(index[i])}",
        )
        for i in clash
    ]


def _bitmaps(bat: np.ndarray, g: Geometry, r: Region) -> list[Problem]:
    """Partially present blocks need their chunk's sector bitmap."""
    blocks = np.arange(g.data_blocks)
    states = bat[g.payload_index(blocks)] & np.uint64(S.BAT_STATE_MASK)
    partial = blocks[states == S.PAYLOAD_PARTIALLY_PRESENT]
    chunks = np.unique(partial // g.chunk_ratio)
    found: list[Problem] = []
    for chunk in chunks[:LIMIT].tolist():
        index = g.bitmap_index(chunk)
        if int(bat[index]) & S.BAT_STATE_MASK != S.BITMAP_PRESENT:
            found.append(
                _bat(r, index, f"chunk {chunk} has partially present blocks but no sector bitmap")
            )
    return found
