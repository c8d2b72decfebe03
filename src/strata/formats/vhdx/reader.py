"""VHDX container parsing and the layer device (read, random write, log replay).

References: [MS-VHDX] 2.2 Header Section, 2.3.3 Log Replay, 2.5 BAT, 2.6 Metadata Region.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from construct import ConstructError

from strata.blockdev.base import BaseDevice, BlockDevice, Extent, ExtentState, zero_fill
from strata.blockdev.chain import ChainDevice, ParentRef
from strata.blockdev.rawfile import file_size, open_file, pread_exact, pwrite_all
from strata.errors import (
    CorruptImage,
    IntegrityError,
    StateError,
    StrataError,
    TruncatedImage,
    Unsupported,
)
from strata.formats.vhdx import log as vlog
from strata.formats.vhdx import structs as S
from strata.formats.vhdx.layout import (
    Geometry,
    HeaderFields,
    Region,
    align,
    entry,
    new_guid,
    write_headers,
)
from strata.native import bitmap_runs

KIND_DATA, KIND_ZERO, KIND_UNALLOCATED, KIND_PARTIAL = 0, 1, 2, 3


class ImageFile:
    """The host file; for a read-only open, replayed log updates lie over it in memory."""

    def __init__(self, path: str, writable: bool) -> None:
        self.path = path
        self.fd = open_file(path, writable)
        self.size = file_size(self.fd)
        self.patches: list[vlog.LogWrite] = []

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def readinto(self, offset: int, view: memoryview) -> None:
        got = pread_exact(self.fd, offset, view)
        if got < len(view):
            zero_fill(view[got:])
        if self.patches:
            self._patch(offset, view)

    def _patch(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        for p in self.patches:
            lo, hi = max(offset, p.offset), min(end, p.offset + p.length)
            if lo >= hi:
                continue
            dst = view[lo - offset : hi - offset]
            if p.data is None:
                zero_fill(dst)
            else:
                dst[:] = p.data[lo - p.offset : hi - p.offset]

    def require(self, offset: int, length: int, structure: str, field: str) -> None:
        if offset + length > self.size:
            raise TruncatedImage(
                path=self.path,
                structure=structure,
                problem=f"the file ({self.size} bytes) ends before {offset + length:#x}",
                field=field,
                offset=offset,
            )

    def write(self, offset: int, data: bytes | memoryview) -> None:
        pwrite_all(self.fd, offset, memoryview(data))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _corrupt(path: str, structure: str, problem: str, field: str, offset: int) -> CorruptImage:
    return CorruptImage(path=path, structure=structure, problem=problem, field=field, offset=offset)


# --- 2.2.1 file identifier and 2.2.2 headers ---------------------------------------------------


def parse_file_identifier(f: ImageFile) -> str:
    f.require(0, 520, "file identifier", "Signature")
    raw = f.read(0, 520)
    if raw[:8] != b"vhdxfile":
        raise _corrupt(f.path, "file identifier", "signature is not 'vhdxfile'", "Signature", 0)
    return raw[8:].decode("utf-16-le", errors="replace").split("\0", 1)[0]


def parse_header(raw: bytes, path: str, offset: int) -> HeaderFields:
    structure = f"header at {offset // S.KiB} KiB"
    if raw[:4] != b"head":
        raise _corrupt(path, structure, "signature is not 'head'", "Signature", offset)
    stored, computed = int.from_bytes(raw[4:8], "little"), S.checksum(raw)
    if stored != computed:
        problem = f"CRC-32C mismatch (stored {stored:#010x}, computed {computed:#010x})"
        raise _corrupt(path, structure, problem, "Checksum", offset + 4)
    h = S.Header.parse(raw)
    return HeaderFields(
        h.sequence_number,
        h.file_write_guid,
        h.data_write_guid,
        h.log_guid,
        h.log_version,
        h.version,
        h.log_length,
        h.log_offset,
    )


def read_headers(f: ImageFile) -> list[HeaderFields | CorruptImage]:
    found: list[HeaderFields | CorruptImage] = []
    for offset in S.HEADER_OFFSETS:
        try:
            f.require(offset, S.HEADER_SIZE, f"header at {offset // S.KiB} KiB", "Signature")
            found.append(parse_header(f.read(offset, S.HEADER_SIZE), f.path, offset))
        except CorruptImage as e:
            found.append(e)
    return found


def select_header(f: ImageFile) -> tuple[int, HeaderFields]:
    """The valid header with the highest sequence number (2.2.2); the first on a tie."""
    found = read_headers(f)
    valid = [
        (h.sequence_number, -slot, slot, h)
        for slot, h in enumerate(found)
        if isinstance(h, HeaderFields)
    ]
    if not valid:
        errors = "; ".join(e.problem for e in found if isinstance(e, CorruptImage))
        raise _corrupt(
            f.path,
            "headers",
            f"neither header is valid ({errors})",
            "Checksum",
            S.HEADER_OFFSETS[0],
        )
    _, _, slot, header = max(valid, key=lambda t: (t[0], t[1]))
    validate_header(f.path, header, S.HEADER_OFFSETS[slot])
    return slot, header


def validate_header(path: str, h: HeaderFields, offset: int) -> None:
    structure = f"header at {offset // S.KiB} KiB"
    if h.version != 1:
        raise Unsupported(what=f"{path}: VHDX header version {h.version} (strata reads version 1)")
    if h.log_version != 0:
        raise Unsupported(what=f"{path}: VHDX log version {h.log_version} (strata reads 0)")
    if h.log_offset % S.ALIGNMENT or h.log_length % S.ALIGNMENT:
        raise _corrupt(
            path,
            structure,
            "log offset or length is not a multiple of 1 MiB",
            "LogOffset",
            offset + 64,
        )
    if h.log_length and h.log_offset < S.HEADER_SECTION_SIZE:
        raise _corrupt(path, structure, "log overlaps the header section", "LogOffset", offset + 64)


# --- 2.2.3 region tables ---------------------------------------------------------------------


def parse_region_table(raw: bytes, path: str, offset: int) -> list[Region]:
    structure = f"region table at {offset // S.KiB} KiB"
    if raw[:4] != b"regi":
        raise _corrupt(path, structure, "signature is not 'regi'", "Signature", offset)
    stored, computed = int.from_bytes(raw[4:8], "little"), S.checksum(raw)
    if stored != computed:
        problem = f"CRC-32C mismatch (stored {stored:#010x}, computed {computed:#010x})"
        raise _corrupt(path, structure, problem, "Checksum", offset + 4)
    head = S.RegionTableHeader.parse(raw)
    if head.entry_count > S.MAX_ENTRIES:
        raise _corrupt(
            path, structure, f"{head.entry_count} entries (at most 2047)", "EntryCount", offset + 8
        )
    regions: list[Region] = []
    for i in range(head.entry_count):
        at = S.REGION_HEADER_SIZE + i * S.REGION_ENTRY_SIZE
        e = S.RegionTableEntry.parse(raw[at : at + S.REGION_ENTRY_SIZE])
        regions.append(_region(e, path, structure, offset + at))
    _check_regions(regions, path, structure, offset)
    return regions


def _region(e: Any, path: str, structure: str, at: int) -> Region:
    known = e.guid in (S.BAT_REGION, S.METADATA_REGION)
    if not known and e.required & 1:
        raise Unsupported(
            what=f"{path}: region {S.guid_text(e.guid)} is marked required and strata "
            "does not know it"
        )
    if e.file_offset % S.ALIGNMENT or e.file_offset < S.HEADER_SECTION_SIZE:
        raise _corrupt(
            path,
            structure,
            f"region offset {e.file_offset:#x} is not a multiple of 1 MiB past the header section",
            "FileOffset",
            at + 16,
        )
    if e.length % S.ALIGNMENT or e.length == 0:
        raise _corrupt(
            path,
            structure,
            f"region length {e.length:#x} is not a positive multiple of 1 MiB",
            "Length",
            at + 24,
        )
    return Region(bytes(e.guid), e.file_offset, e.length, bool(e.required & 1))


def _check_regions(regions: list[Region], path: str, structure: str, offset: int) -> None:
    guids = [r.guid for r in regions]
    if len(set(guids)) != len(guids):
        raise _corrupt(path, structure, "a region GUID appears twice", "Guid", offset)
    for needed, name in ((S.BAT_REGION, "BAT"), (S.METADATA_REGION, "metadata")):
        if needed not in guids:
            raise _corrupt(path, structure, f"no {name} region", "Guid", offset)
    ordered = sorted(regions, key=lambda r: r.file_offset)
    for a, b in itertools.pairwise(ordered):
        if a.end > b.file_offset:
            raise _corrupt(path, structure, "regions overlap", "FileOffset", offset)


def read_region_tables(f: ImageFile) -> list[list[Region] | StrataError]:
    found: list[list[Region] | StrataError] = []
    for offset in S.REGION_TABLE_OFFSETS:
        try:
            f.require(
                offset, S.REGION_TABLE_SIZE, f"region table at {offset // S.KiB} KiB", "Signature"
            )
            found.append(parse_region_table(f.read(offset, S.REGION_TABLE_SIZE), f.path, offset))
        except CorruptImage as e:
            found.append(e)
    return found


def select_regions(f: ImageFile) -> list[Region]:
    """Both tables must agree when both are valid; a single damaged copy is tolerated."""
    found = read_region_tables(f)
    valid = [t for t in found if isinstance(t, list)]
    if not valid:
        first = found[0]
        assert isinstance(first, StrataError)
        raise first
    if len(valid) == 2 and sorted(valid[0], key=_rkey) != sorted(valid[1], key=_rkey):
        raise _corrupt(
            f.path, "region tables", "the two region tables differ", "-", S.REGION_TABLE_OFFSETS[1]
        )
    return valid[0]


def _rkey(r: Region) -> bytes:
    return r.guid


def region(regions: list[Region], guid: bytes) -> Region:
    return next(r for r in regions if r.guid == guid)


def check_layout(f: ImageFile, regions: list[Region], header: HeaderFields) -> None:
    """Regions inside the file and clear of the log."""
    log = (header.log_offset, header.log_offset + header.log_length)
    for r in regions:
        name = "BAT region" if r.guid == S.BAT_REGION else "metadata region"
        if r.guid in (S.BAT_REGION, S.METADATA_REGION):
            f.require(r.file_offset, r.length, name, "FileOffset")
        if header.log_length and r.file_offset < log[1] and r.end > log[0]:
            raise _corrupt(f.path, name, "the region overlaps the log", "FileOffset", r.file_offset)


# --- 2.6 metadata ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    block_size: int
    leave_blocks_allocated: bool
    has_parent: bool
    virtual_size: int
    disk_id: bytes
    logical_sector: int
    physical_sector: int
    parent_locator: dict[str, str] | None


def read_metadata_items(f: ImageFile, r: Region) -> dict[bytes, tuple[bytes, int, int]]:
    """item id -> (value, flags, file offset of the value)."""
    raw = f.read(r.file_offset, S.METADATA_TABLE_SIZE)
    at = r.file_offset
    if raw[:8] != b"metadata":
        raise _corrupt(f.path, "metadata table", "signature is not 'metadata'", "Signature", at)
    head = S.MetadataTableHeader.parse(raw)
    if head.entry_count > S.MAX_ENTRIES:
        raise _corrupt(
            f.path,
            "metadata table",
            f"{head.entry_count} entries (at most 2047)",
            "EntryCount",
            at + 10,
        )
    items: dict[bytes, tuple[bytes, int, int]] = {}
    for i in range(head.entry_count):
        pos = S.METADATA_HEADER_SIZE + i * S.METADATA_ENTRY_SIZE
        e = S.MetadataTableEntry.parse(raw[pos : pos + S.METADATA_ENTRY_SIZE])
        _metadata_entry(f, r, e, at + pos, items)
    return items


def _metadata_entry(
    f: ImageFile, r: Region, e: Any, at: int, items: dict[bytes, tuple[bytes, int, int]]
) -> None:
    item_id = bytes(e.item_id)
    name = S.KNOWN_METADATA.get(item_id, f"metadata item {S.guid_text(item_id)}")
    if item_id in items:
        raise _corrupt(f.path, "metadata table", f"{name} appears twice", "ItemId", at)
    if item_id not in S.KNOWN_METADATA and e.flags & S.META_IS_REQUIRED:
        raise Unsupported(
            what=f"{f.path}: metadata item {S.guid_text(item_id)} is marked required and "
            "strata does not know it"
        )
    if e.length and (e.offset < S.METADATA_TABLE_SIZE or e.offset + e.length > r.length):
        raise _corrupt(
            f.path, "metadata table", f"{name} lies outside the metadata region", "Offset", at + 16
        )
    if e.length > S.MiB:
        raise _corrupt(f.path, "metadata table", f"{name} is longer than 1 MiB", "Length", at + 20)
    value_at = r.file_offset + e.offset
    items[item_id] = (f.read(value_at, e.length), e.flags, value_at)


def parse_metadata(f: ImageFile, r: Region) -> Metadata:
    items = read_metadata_items(f, r)
    params = _item(f, items, S.FILE_PARAMETERS, 8, r)
    fp = S.FileParameters.parse(params[0])
    logical = int.from_bytes(_item(f, items, S.LOGICAL_SECTOR_SIZE, 4, r)[0][:4], "little")
    physical = int.from_bytes(_item(f, items, S.PHYSICAL_SECTOR_SIZE, 4, r)[0][:4], "little")
    size_item = _item(f, items, S.VIRTUAL_DISK_SIZE, 8, r)
    virtual = int.from_bytes(size_item[0][:8], "little")
    disk_id = _item(f, items, S.VIRTUAL_DISK_ID, 16, r)[0][:16]
    has_parent = bool(fp.flags & S.HAS_PARENT)
    _validate_sizes(f.path, fp.block_size, logical, physical, virtual, params[2], size_item[2])
    locator = None
    if has_parent:
        value, _, loc_at = _item(f, items, S.PARENT_LOCATOR, S.LOCATOR_HEADER_SIZE, r)
        locator = parse_parent_locator(value, f.path, loc_at)
    return Metadata(
        fp.block_size,
        bool(fp.flags & S.LEAVE_BLOCKS_ALLOCATED),
        has_parent,
        virtual,
        disk_id,
        logical,
        physical,
        locator,
    )


def _item(
    f: ImageFile, items: dict[bytes, tuple[bytes, int, int]], item_id: bytes, size: int, r: Region
) -> tuple[bytes, int, int]:
    name = S.KNOWN_METADATA[item_id]
    if item_id not in items:
        raise _corrupt(
            f.path,
            "metadata table",
            f"the required {name} item is missing",
            "ItemId",
            r.file_offset,
        )
    value = items[item_id]
    if len(value[0]) < size:
        raise _corrupt(
            f.path, name, f"item is {len(value[0])} bytes, needs {size}", "Length", value[2]
        )
    return value


def _validate_sizes(
    path: str, block: int, logical: int, physical: int, virtual: int, fp_at: int, vs_at: int
) -> None:
    if not S.MIN_BLOCK <= block <= S.MAX_BLOCK or block & (block - 1):
        raise _corrupt(
            path,
            "file parameters",
            f"block size {block} is not a power of two between 1 MiB and 256 MiB",
            "BlockSize",
            fp_at,
        )
    if logical not in S.LOGICAL_SECTOR_SIZES:
        raise _corrupt(
            path,
            "logical sector size",
            f"{logical} is neither 512 nor 4096",
            "LogicalSectorSize",
            fp_at,
        )
    if physical not in S.LOGICAL_SECTOR_SIZES:
        raise _corrupt(
            path,
            "physical sector size",
            f"{physical} is neither 512 nor 4096",
            "PhysicalSectorSize",
            fp_at,
        )
    if virtual == 0 or virtual > S.MAX_VIRTUAL_SIZE or virtual % logical:
        raise _corrupt(
            path,
            "virtual disk size",
            f"{virtual} is not a positive multiple of {logical} up to 64 TiB",
            "VirtualDiskSize",
            vs_at,
        )


def parse_parent_locator(value: bytes, path: str, at: int) -> dict[str, str]:
    head = S.ParentLocatorHeader.parse(value)
    if head.locator_type != S.VHDX_PARENT_LOCATOR_TYPE:
        raise Unsupported(
            what=f"{path}: parent locator type {S.guid_text(head.locator_type)} (strata knows "
            "only the VHDX parent locator)"
        )
    pairs: dict[str, str] = {}
    for i in range(head.key_value_count):
        pos = S.LOCATOR_HEADER_SIZE + i * S.LOCATOR_ENTRY_SIZE
        if pos + S.LOCATOR_ENTRY_SIZE > len(value):
            raise _corrupt(
                path, "parent locator", "entry table runs past the item", "KeyValueCount", at + 18
            )
        e = S.ParentLocatorEntry.parse(value[pos : pos + S.LOCATOR_ENTRY_SIZE])
        key = _utf16(value, e.key_offset, e.key_length, path, at + pos)
        pairs[key] = _utf16(value, e.value_offset, e.value_length, path, at + pos + 4)
    if "parent_linkage" not in pairs:
        raise _corrupt(path, "parent locator", "no parent_linkage entry", "parent_linkage", at)
    return pairs


def _utf16(value: bytes, offset: int, length: int, path: str, at: int) -> str:
    if offset + length > len(value) or length % 2:
        raise _corrupt(
            path, "parent locator", "a key or value lies outside the item", "KeyOffset", at
        )
    try:
        return value[offset : offset + length].decode("utf-16-le")
    except UnicodeDecodeError as e:
        raise _corrupt(
            path, "parent locator", "a key or value is not UTF-16", "KeyOffset", at
        ) from e


# --- 2.5 BAT -----------------------------------------------------------------------------------


def load_bat(f: ImageFile, r: Region, g: Geometry) -> np.ndarray:
    need = g.bat_entries * 8
    if r.length < need:
        raise _corrupt(
            f.path,
            "BAT region",
            f"{r.length} bytes cannot hold {g.bat_entries} entries",
            "Length",
            r.file_offset,
        )
    f.require(r.file_offset, need, "BAT", "FileOffset")
    return np.frombuffer(bytearray(f.read(r.file_offset, need)), dtype="<u8")


@dataclass(frozen=True)
class BatProblem:
    index: int
    message: str


def bat_problems(
    bat: np.ndarray,
    g: Geometry,
    file_size: int,
    reserved: list[tuple[int, int, str]],
    limit: int = 20,
) -> list[BatProblem]:
    """Every BAT entry with a bad state or a block outside the file or over a structure."""
    problems: list[BatProblem] = []
    states = (bat & np.uint64(S.BAT_STATE_MASK)).astype(np.int64)
    offsets = (bat >> np.uint64(S.BAT_OFFSET_SHIFT) << np.uint64(S.BAT_OFFSET_SHIFT)).astype(
        np.uint64
    )
    payload = g.payload_mask()
    allowed = [0, 1, 2, 3, 6, 7] if g.has_parent else [0, 1, 2, 3, 6]
    bad = payload & ~np.isin(states, allowed) | ~payload & ~np.isin(states, [0, 6])
    problems += _first(bad, limit, lambda i: f"invalid state {states[i]}")
    present = np.isin(states, [6, 7])
    sizes = np.where(payload, g.block_size, S.SECTOR_BITMAP_BLOCK).astype(np.uint64)
    ends = offsets + sizes
    low = present & (offsets < S.HEADER_SECTION_SIZE)
    problems += _first(low, limit, lambda i: f"block at {offsets[i]:#x} is inside the header")
    past = present & (ends > np.uint64(file_size))
    problems += _first(
        past,
        limit,
        lambda i: (
            f"block {offsets[i]:#x}+{sizes[i]:#x} lies past the end of the file ({file_size} bytes)"
        ),
    )
    for start, end, name in reserved:
        over = present & (offsets < np.uint64(end)) & (ends > np.uint64(start))
        problems += _first(
            over, limit, lambda i, n=name: f"block at {offsets[i]:#x} overlaps the {n}"
        )
    return problems


def _first(mask: np.ndarray, limit: int, describe: Any) -> list[BatProblem]:
    return [BatProblem(int(i), describe(int(i))) for i in np.flatnonzero(mask)[:limit]]


# --- the layer device --------------------------------------------------------------------------


def _locator_path(text: str) -> str:
    path = text.replace("\\", "/")
    return path[2:] if path.startswith("./") else path


def parent_candidates(locator: dict[str, str]) -> list[str]:
    """relative_path first, then POSIX-usable absolute paths, then the bare file name."""
    found: list[str] = []
    if locator.get("relative_path"):
        found.append(_locator_path(locator["relative_path"]))
    for key in ("absolute_win32_path", "volume_path"):
        value = locator.get(key, "")
        if value.startswith(("/", "\\")) and not value.startswith("\\\\"):
            found.append(_locator_path(value))
    for key in ("relative_path", "absolute_win32_path", "volume_path"):
        name = _locator_path(locator.get(key, "")).rsplit("/", 1)[-1]
        if name and name not in found:
            found.append(name)
    return list(dict.fromkeys(found))


def _norm_guid(text: str) -> str:
    return text.strip().strip("{}").upper()


class VhdxDevice(BaseDevice):
    """One VHDX layer; NOT_PRESENT blocks of a differencing disk read from the parent."""

    format_name = "vhdx"
    concurrent_reads = True  # preads; the replayed log's patches are only read after opening

    def __init__(self, path: str, writable: bool = False) -> None:
        self.path = path
        self.writable = writable
        self._file = ImageFile(path, writable)
        self._started = False
        self.log_replayed = 0
        try:
            self._load()
        except (
            ConstructError,
            UnicodeDecodeError,
            OverflowError,
            ValueError,
            IndexError,
            KeyError,
        ) as e:
            self._file.close()
            if isinstance(e, StrataError):
                raise
            raise _corrupt(path, "image", f"unparseable structure ({e})", "-", 0) from e
        except BaseException:
            self._file.close()
            raise

    def _load(self) -> None:
        f = self._file
        self.creator = parse_file_identifier(f)
        self._slot, self.header = select_header(f)
        if self.header.log_guid != S.ZERO_GUID:
            self._replay_log()
        self.regions = select_regions(f)
        check_layout(f, self.regions, self.header)
        self.metadata = m = parse_metadata(f, region(self.regions, S.METADATA_REGION))
        self.geometry = Geometry(m.virtual_size, m.block_size, m.logical_sector, m.has_parent)
        self._bat_region = region(self.regions, S.BAT_REGION)
        self._bat = load_bat(f, self._bat_region, self.geometry)
        self._validate_bat()
        self._size = m.virtual_size
        self._sector_size = m.logical_sector
        if m.has_parent and m.parent_locator is not None:
            self.parent_ref = ParentRef(
                candidates=parent_candidates(m.parent_locator),
                verify=self._verify_parent,
                description="VHDX parent",
                formats=("vhdx",),
            )

    def _replay_log(self) -> None:
        h, f = self.header, self._file
        replay = vlog.load_replay(f.read, f.path, h.log_offset, h.log_length, h.log_guid, f.size)
        self.log_replayed = len(replay.entries)
        if not replay.entries:
            if self.writable:
                self._update_header(log_guid=S.ZERO_GUID)
            return
        head = replay.head
        if not self.writable:
            f.patches = replay.writes
            f.size = max(f.size, head.last_file_offset)
            return
        for w in replay.writes:
            f.write(w.offset, w.data if w.data is not None else bytes(w.length))
        if file_size(f.fd) < head.last_file_offset:
            os.ftruncate(f.fd, head.last_file_offset)
        os.fsync(f.fd)
        f.size = file_size(f.fd)
        self._update_header(log_guid=S.ZERO_GUID)

    def _reserved(self) -> list[tuple[int, int, str]]:
        spans = [
            (
                r.file_offset,
                r.end,
                "BAT region"
                if r.guid == S.BAT_REGION
                else "metadata region"
                if r.guid == S.METADATA_REGION
                else "region",
            )
            for r in self.regions
        ]
        h = self.header
        if h.log_length:
            spans.append((h.log_offset, h.log_offset + h.log_length, "log"))
        return spans

    def _validate_bat(self) -> None:
        problems = bat_problems(self._bat, self.geometry, self._file.size, self._reserved(), 1)
        if problems:
            p = problems[0]
            raise _corrupt(
                self.path or "",
                "BAT",
                f"entry {p.index}: {p.message}",
                "FileOffsetMB",
                self._bat_region.file_offset + 8 * p.index,
            )

    # -- identity and parent --

    @property
    def data_write_guid(self) -> str:
        return S.guid_text(self.header.data_write_guid)

    @property
    def block_size(self) -> int:
        return self.geometry.block_size

    def _verify_parent(self, parent: BlockDevice) -> None:
        locator = self.metadata.parent_locator or {}
        got = getattr(parent, "data_write_guid", None)
        where = getattr(parent, "path", "?")
        if got is None:
            raise IntegrityError(what=f"{self.path}: parent {where} is not a VHDX image")
        wanted = {_norm_guid(locator.get(k, "")) for k in ("parent_linkage", "parent_linkage2")}
        if _norm_guid(got) not in wanted - {""}:
            raise IntegrityError(
                what=f"{self.path}: parent {where} has data-write GUID {{{got}}} but the child's "
                f"parent_linkage is {locator.get('parent_linkage')} (the parent changed after "
                "the child was made, or it is another disk)"
            )
        if parent.sector_size != self.sector_size:
            raise IntegrityError(
                what=f"{self.path}: parent {where} has {parent.sector_size}-byte sectors, "
                f"the child {self.sector_size}"
            )

    def info(self) -> dict[str, Any]:
        m = self.metadata
        sub = (
            "differencing" if m.has_parent else ("fixed" if m.leave_blocks_allocated else "dynamic")
        )
        facts: dict[str, Any] = {
            "subformat": sub,
            "block-size": m.block_size,
            "logical-sector-size": m.logical_sector,
            "physical-sector-size": m.physical_sector,
            "disk-id": S.guid_text(m.disk_id),
            "data-write-guid": self.data_write_guid,
            "creator": self.creator,
            "log-entries-replayed": self.log_replayed,
        }
        if m.parent_locator:
            facts["parent-locator"] = dict(m.parent_locator)
        return facts

    # -- reading --

    def _block_map(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        g = self.geometry
        blocks = np.arange(first, last + 1, dtype=np.int64)
        e = self._bat[g.payload_index(blocks)]
        states = (e & np.uint64(S.BAT_STATE_MASK)).astype(np.int8)
        offsets = (e >> np.uint64(S.BAT_OFFSET_SHIFT)).astype(np.int64) << S.BAT_OFFSET_SHIFT
        kinds = np.full(len(blocks), KIND_ZERO, np.int8)
        kinds[states == S.PAYLOAD_FULLY_PRESENT] = KIND_DATA
        kinds[states == S.PAYLOAD_PARTIALLY_PRESENT] = KIND_PARTIAL
        if g.has_parent:
            kinds[states == S.PAYLOAD_NOT_PRESENT] = KIND_UNALLOCATED
        return kinds, offsets

    def _extents(self, offset: int, length: int) -> Iterator[Extent]:
        bs = self.geometry.block_size
        end = offset + length
        first, last = offset // bs, (end - 1) // bs
        kinds, offsets = self._block_map(first, last)
        cut = np.ones(len(kinds), bool)
        cut[1:] = (
            (kinds[1:] != kinds[:-1])
            | (kinds[1:] == KIND_PARTIAL)
            | ((kinds[1:] == KIND_DATA) & (offsets[1:] != offsets[:-1] + bs))
        )
        starts = np.flatnonzero(cut)
        stops = np.append(starts[1:], len(kinds))
        for s, e in zip(starts.tolist(), stops.tolist(), strict=True):
            base = (first + s) * bs
            lo, hi = max(offset, base), min(end, (first + e) * bs)
            kind = int(kinds[s])
            if kind == KIND_PARTIAL:
                yield from self._partial(first + s, lo, hi, int(offsets[s]))
            elif kind == KIND_DATA:
                yield Extent(lo, hi - lo, ExtentState.DATA, 0, int(offsets[s]) + lo - base)
            else:
                state = ExtentState.UNALLOCATED if kind == KIND_UNALLOCATED else ExtentState.ZERO
                yield Extent(lo, hi - lo, state)

    def _bitmap_offset(self, block: int) -> int:
        g = self.geometry
        index = g.bitmap_index(block // g.chunk_ratio)
        e = int(self._bat[index])
        if e & S.BAT_STATE_MASK != S.BITMAP_PRESENT:
            raise _corrupt(
                self.path or "",
                "BAT",
                f"block {block} is partially present but its chunk has no sector bitmap",
                "State",
                self._bat_region.file_offset + 8 * index,
            )
        return e >> S.BAT_OFFSET_SHIFT << S.BAT_OFFSET_SHIFT

    def _partial(self, block: int, lo: int, hi: int, file_offset: int) -> Iterator[Extent]:
        g, ls = self.geometry, self.geometry.logical_sector
        base = block * g.block_size
        s0, s1 = (lo - base) // ls, -(-(hi - base) // ls)
        bit0 = (block % g.chunk_ratio) * g.sectors_per_block + s0
        shift = bit0 % 8
        raw = self._file.read(self._bitmap_offset(block) + bit0 // 8, -(-(shift + s1 - s0) // 8))
        pos = lo
        for start, count in bitmap_runs(raw, False, shift + s1 - s0):
            a = max(lo, base + (s0 + start - shift) * ls)
            b = min(hi, base + (s0 + start - shift + count) * ls)
            if a >= b:
                continue
            if pos < a:
                yield Extent(pos, a - pos, ExtentState.UNALLOCATED)
            yield Extent(a, b - a, ExtentState.DATA, 0, file_offset + a - base)
            pos = b
        if pos < hi:
            yield Extent(pos, hi - pos, ExtentState.UNALLOCATED)

    def _readinto(self, offset: int, view: memoryview) -> None:
        for ext in self._extents(offset, len(view)):
            part = view[ext.offset - offset : ext.end - offset]
            if ext.state == ExtentState.DATA and ext.file_offset is not None:
                self._file.readinto(ext.file_offset, part)
            else:
                zero_fill(part)

    # -- writing: data first, then the sector bitmap, then the BAT entry --

    def _update_header(self, **changes: Any) -> None:
        h = self.header
        new = replace(h, **changes, sequence_number=h.sequence_number + 1)
        write_headers(self._file.fd, new, first_slot=1 - self._slot)
        self.header = replace(new, sequence_number=h.sequence_number + 2)

    def _begin_write(self) -> None:
        if not self._started:
            self._update_header(file_write_guid=new_guid(), data_write_guid=new_guid())
            self._started = True

    def _write(self, offset: int, view: memoryview) -> None:
        ls = self._sector_size
        lo, hi = offset - offset % ls, align(offset + len(view), ls)
        if (lo, hi) != (offset, offset + len(view)):
            if self.metadata.has_parent and self.parent is None:
                raise StateError(
                    what=f"{self.path}: a write of part of a sector needs the parent's data; "
                    "open the image with its parent (registry.open_image)"
                )
            buf = bytearray(hi - lo)
            ChainDevice(self).readinto(lo, buf)
            buf[offset - lo : offset - lo + len(view)] = view
            view, offset = memoryview(buf), lo
        self._begin_write()
        bs = self.geometry.block_size
        pos = 0
        while pos < len(view):
            at = offset + pos
            n = min(len(view) - pos, bs - at % bs)
            self._write_block(at // bs, at % bs, view[pos : pos + n])
            pos += n

    def _write_block(self, block: int, within: int, data: memoryview) -> None:
        g = self.geometry
        index = int(g.payload_index(block))
        e = int(self._bat[index])
        state, foff = e & S.BAT_STATE_MASK, e >> S.BAT_OFFSET_SHIFT << S.BAT_OFFSET_SHIFT
        if state in (S.PAYLOAD_FULLY_PRESENT, S.PAYLOAD_PARTIALLY_PRESENT):
            self._file.write(foff + within, data)
            if state == S.PAYLOAD_PARTIALLY_PRESENT:
                self._mark_present(block, within, len(data), keep=True)
            return
        foff = self._allocate(g.block_size)
        self._file.write(foff + within, data)
        whole = within == 0 and len(data) == g.block_size
        if g.has_parent and state == S.PAYLOAD_NOT_PRESENT and not whole:
            self._mark_present(block, within, len(data), keep=False)
            self._set_entry(index, entry(S.PAYLOAD_PARTIALLY_PRESENT, foff))
        else:
            self._set_entry(index, entry(S.PAYLOAD_FULLY_PRESENT, foff))

    def _allocate(self, length: int) -> int:
        f = self._file
        at = align(max(f.size, file_size(f.fd)), S.ALIGNMENT)
        os.ftruncate(f.fd, at + length)
        f.size = at + length
        return at

    def _set_entry(self, index: int, value: int) -> None:
        self._bat[index] = value
        self._file.write(self._bat_region.file_offset + 8 * index, value.to_bytes(8, "little"))

    def _mark_present(self, block: int, within: int, length: int, keep: bool) -> None:
        """Set the sector bits of [within, within+length) (and clear the block's others)."""
        g = self.geometry
        index = g.bitmap_index(block // g.chunk_ratio)
        if int(self._bat[index]) & S.BAT_STATE_MASK != S.BITMAP_PRESENT:
            at = self._allocate(S.SECTOR_BITMAP_BLOCK)
            self._set_entry(index, entry(S.BITMAP_PRESENT, at))
        bits_at = (block % g.chunk_ratio) * g.sectors_per_block
        nbytes = g.sectors_per_block // 8
        where = self._bitmap_offset(block) + bits_at // 8
        current = np.frombuffer(self._file.read(where, nbytes), np.uint8)
        bits = np.unpackbits(current, bitorder="little") if keep else np.zeros(nbytes * 8, np.uint8)
        ls = g.logical_sector
        bits[within // ls : (within + length) // ls] = 1
        self._file.write(where, np.packbits(bits, bitorder="little").tobytes())

    def flush(self) -> None:
        if self.writable and self._file.fd >= 0:
            os.fsync(self._file.fd)

    def close(self) -> None:
        if self._file.fd >= 0:
            self.flush()
            self._file.close()
        super().close()


def open_vhdx(path: str, writable: bool = False) -> VhdxDevice:
    return VhdxDevice(path, writable)
