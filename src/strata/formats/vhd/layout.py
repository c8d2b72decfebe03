"""Parse and validate a VHD file's metadata: footers, dynamic header, BAT, parent locators.

References: Microsoft "Virtual Hard Disk Image Format Specification" v1.0; qemu 7.2
``block/vpc.c`` (which checks qemu makes on open); libvhdi's "VHD format" notes.

``inspect`` never raises for bad content: it returns what it could parse plus a list of
``Finding``s (structure, field, file offset).  The reader raises the first error; ``strata
disk check`` lists them all.  Only OS errors (EIO) escape as such.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from construct import Container

from strata.blockdev.rawfile import pread_exact
from strata.errors import CorruptImage, TruncatedImage, Unsupported
from strata.formats.vhd import structs as s


@dataclass(frozen=True)
class Finding:
    structure: str
    field: str
    offset: int | None
    problem: str
    kind: str = "corrupt"  # corrupt | truncated | unsupported | warning

    @property
    def is_error(self) -> bool:
        return self.kind != "warning"

    def exception(self, path: str) -> Exception:
        if self.kind == "unsupported":
            where = f" ({self.structure} field {self.field} at file offset {self.offset:#x})"
            return Unsupported(
                what=f"{path}: {self.problem}" + (where if self.offset is not None else "")
            )
        cls = TruncatedImage if self.kind == "truncated" else CorruptImage
        return cls(
            path=path,
            structure=self.structure,
            problem=self.problem,
            field=self.field,
            offset=self.offset,
        )


@dataclass(frozen=True)
class Locator:
    index: int
    platform: bytes
    data_offset: int
    data_length: int
    data_space: int
    path: str | None


@dataclass
class Layout:
    """Everything the metadata says, with the findings made while reading it."""

    path: str
    file_size: int
    footer: Container | None = None
    footer_raw: bytes = b""
    footer_offset: int = 0
    header: Container | None = None
    header_offset: int = 0
    bat: np.ndarray | None = None
    locators: list[Locator] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def disk_type(self) -> int:
        return int(self.footer.disk_type) if self.footer is not None else 0

    @property
    def size(self) -> int:
        return int(self.footer.current_size) if self.footer is not None else 0

    @property
    def block_size(self) -> int:
        return int(self.header.block_size) if self.header is not None else 0

    @property
    def bitmap_size(self) -> int:
        return s.bitmap_bytes(self.block_size)

    @property
    def bat_offset(self) -> int:
        return int(self.header.table_offset) if self.header is not None else 0

    def add(
        self, structure: str, fld: str, offset: int | None, problem: str, kind: str = "corrupt"
    ) -> None:
        self.findings.append(Finding(structure, fld, offset, problem, kind))

    def first_error(self) -> Finding | None:
        return next((f for f in self.findings if f.is_error), None)

    def facts(self) -> dict[str, Any]:
        return footer_facts(self.footer) if self.footer is not None else {}


def read_at(fd: int, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    got = pread_exact(fd, offset, memoryview(buf))
    return bytes(buf[:got])


def inspect(fd: int, path: str) -> Layout:
    """Read and validate the metadata, recording every finding."""
    lay = Layout(path, os.fstat(fd).st_size)
    if not _read_footer(fd, lay):
        return lay
    if lay.disk_type == s.DISK_FIXED:
        _check_fixed(lay)
        return lay
    _check_footer_copy(fd, lay)
    if not _read_header(fd, lay):
        return lay
    if not _read_bat(fd, lay):
        return lay
    _read_locators(fd, lay)
    _check_bat(lay)
    return lay


def _read_footer(fd: int, lay: Layout) -> bool:
    if lay.file_size < s.FOOTER_SIZE:
        lay.add(
            "file", "size", 0, f"{lay.file_size} bytes is too short for a VHD footer", "truncated"
        )
        return False
    lay.footer_offset = lay.file_size - s.FOOTER_SIZE
    raw = read_at(fd, lay.footer_offset, s.FOOTER_SIZE)
    if raw[:8] != s.FOOTER_COOKIE:
        _missing_footer(fd, lay)
        return False
    return _parse_footer(raw, lay, "footer", lay.footer_offset)


def _missing_footer(fd: int, lay: Layout) -> None:
    head = read_at(fd, 0, s.FOOTER_SIZE)
    if head[:8] == s.FOOTER_COOKIE:
        lay.add(
            "footer",
            "cookie",
            lay.footer_offset,
            "no footer at the end of the file (the copy at offset 0 exists: truncated?)",
            "truncated",
        )
    else:
        lay.add("footer", "cookie", lay.footer_offset, "no 'conectix' footer: not a VHD")


def _parse_footer(raw: bytes, lay: Layout, name: str, at: int) -> bool:
    footer = s.Footer.parse(raw)
    lay.footer, lay.footer_raw = footer, raw
    want = s.checksum(raw, s.FOOTER_CHECKSUM_AT)
    if footer.checksum != want:
        lay.add(
            name,
            "checksum",
            at + s.FOOTER_CHECKSUM_AT,
            f"checksum {footer.checksum:#010x}, computed {want:#010x}",
        )
    if footer.format_version >> 16 != 1:
        lay.add(
            name,
            "format_version",
            at + 12,
            f"format version {footer.format_version:#x} is not 1.x",
            "unsupported",
        )
    if not footer.features & s.FEATURES_RESERVED:
        lay.add(name, "features", at + 8, "reserved feature bit 0x2 is clear", "warning")
    if footer.disk_type not in s.DISK_TYPES:
        lay.add(
            name,
            "disk_type",
            at + 60,
            f"disk type {footer.disk_type} is not 2, 3 or 4",
            "unsupported",
        )
        return False
    size = footer.current_size
    if size == 0 or size % s.SECTOR:
        lay.add(name, "current_size", at + 48, f"current size {size} is not whole sectors")
        return False
    _check_size_agreement(lay, footer, name, at)
    if size > s.MAX_SIZE:
        lay.add(
            name,
            "current_size",
            at + 48,
            f"current size {size} exceeds the VHD maximum of 2040 GiB",
            "unsupported",
        )
        return False
    return True


def _check_size_agreement(lay: Layout, footer: Container, name: str, at: int) -> None:
    """Warn when qemu would size the disk by CHS geometry rather than the current size."""
    geometry = (int(footer.cylinders), int(footer.heads), int(footer.sectors_per_track))
    by_chs = s.chs_size(*geometry)
    trusted = bytes(footer.creator_app) in s.CURRENT_SIZE_CREATORS or geometry == s.MAX_GEOMETRY
    if not trusted and by_chs != footer.current_size:
        lay.add(
            name,
            "creator_app",
            at + 28,
            f"creator {bytes(footer.creator_app)!r} makes qemu read {by_chs} bytes (CHS "
            f"{'/'.join(map(str, geometry))}) where libvhdi, Hyper-V and strata read "
            f"{footer.current_size}",
            "warning",
        )


def _check_fixed(lay: Layout) -> None:
    need = lay.size + s.FOOTER_SIZE
    if lay.footer.data_offset != s.NO_DATA_OFFSET:
        lay.add(
            "footer",
            "data_offset",
            lay.footer_offset + 16,
            f"fixed disk with data offset {lay.footer.data_offset:#x} (expected all ones)",
            "warning",
        )
    if lay.file_size < need:
        lay.add(
            "file",
            "size",
            lay.file_size,
            f"fixed disk of {lay.size} bytes needs a file of {need} bytes, not {lay.file_size}",
            "truncated",
        )
    elif lay.file_size > need:
        lay.add(
            "file",
            "size",
            need,
            f"{lay.file_size - need} bytes before the footer lie past the virtual size",
            "warning",
        )


def _check_footer_copy(fd: int, lay: Layout) -> None:
    copy = read_at(fd, 0, s.FOOTER_SIZE)
    if copy == lay.footer_raw:
        return
    if copy[:8] != s.FOOTER_COOKIE:
        lay.add("footer copy", "cookie", 0, "no footer copy at offset 0")
        return
    want = s.checksum(copy, s.FOOTER_CHECKSUM_AT)
    got = int.from_bytes(copy[s.FOOTER_CHECKSUM_AT : s.FOOTER_CHECKSUM_AT + 4], "big")
    if got != want:
        lay.add(
            "footer copy",
            "checksum",
            s.FOOTER_CHECKSUM_AT,
            f"checksum {got:#010x}, computed {want:#010x}",
        )
        return
    first = next(i for i in range(s.FOOTER_SIZE) if copy[i] != lay.footer_raw[i])
    lay.add(
        "footer copy",
        _footer_field(first),
        first,
        f"footer copy at offset 0 differs from the footer at {lay.footer_offset:#x}",
    )


def _footer_field(at: int) -> str:
    for sub in s.Footer.subcons:
        size = sub.sizeof()
        if at < size:
            return sub.name
        at -= size
    return "-"


def _read_header(fd: int, lay: Layout) -> bool:
    at = int(lay.footer.data_offset)
    if at < s.FOOTER_SIZE or at + s.HEADER_SIZE > lay.footer_offset:
        lay.add(
            "footer",
            "data_offset",
            lay.footer_offset + 16,
            f"dynamic header offset {at:#x} lies outside the file "
            f"(header must fit between 0x200 and {lay.footer_offset:#x})",
            "truncated" if at + s.HEADER_SIZE > lay.footer_offset >= at else "corrupt",
        )
        return False
    raw = read_at(fd, at, s.HEADER_SIZE)
    lay.header_offset = at
    if raw[:8] != s.HEADER_COOKIE:
        lay.add("dynamic header", "cookie", at, "no 'cxsparse' cookie")
        return False
    header = s.DynamicHeader.parse(raw)
    lay.header = header
    want = s.checksum(raw, s.HEADER_CHECKSUM_AT)
    if header.checksum != want:
        lay.add(
            "dynamic header",
            "checksum",
            at + s.HEADER_CHECKSUM_AT,
            f"checksum {header.checksum:#010x}, computed {want:#010x}",
        )
    if header.header_version >> 16 != 1:
        lay.add(
            "dynamic header",
            "header_version",
            at + 24,
            f"header version {header.header_version:#x} is not 1.x",
            "unsupported",
        )
    if header.data_offset != s.NO_DATA_OFFSET:
        lay.add(
            "dynamic header",
            "data_offset",
            at + 8,
            f"data offset {header.data_offset:#x} (expected all ones)",
            "warning",
        )
    return _check_block_size(lay)


def _check_block_size(lay: Layout) -> bool:
    at = lay.header_offset
    bs, entries = lay.block_size, int(lay.header.max_table_entries)
    if bs < s.SECTOR or bs & (bs - 1):
        lay.add(
            "dynamic header",
            "block_size",
            at + 32,
            f"block size {bs} is not a power of two of at least 512",
        )
        return False
    if entries * bs < lay.size:
        lay.add(
            "dynamic header",
            "max_table_entries",
            at + 28,
            f"{entries} blocks of {bs} bytes cannot hold the virtual size {lay.size}",
        )
        return False
    return True


def _read_bat(fd: int, lay: Layout) -> bool:
    at, used = lay.bat_offset, -(-lay.size // lay.block_size)
    length = used * 4
    if at < s.FOOTER_SIZE or at % s.SECTOR:
        lay.add(
            "dynamic header",
            "table_offset",
            lay.header_offset + 16,
            f"BAT offset {at:#x} is not a sector past the footer copy",
        )
        return False
    if at + length > lay.footer_offset:
        lay.add(
            "BAT",
            "-",
            at,
            f"BAT of {used} entries ends at {at + length:#x}, past the data area "
            f"(footer at {lay.footer_offset:#x})",
            "truncated",
        )
        return False
    if at < lay.header_offset + s.HEADER_SIZE and at + length > lay.header_offset:
        lay.add("BAT", "-", at, "BAT overlaps the dynamic header")
        return False
    lay.bat = np.frombuffer(read_at(fd, at, length), s.BAT_DTYPE).astype(np.uint32)
    return True


def _read_locators(fd: int, lay: Layout) -> None:
    header, base = lay.header, lay.header_offset + s.HEADER_LOCATORS_AT
    for index, loc in enumerate(header.locators):
        code = bytes(loc.platform_code)
        if code == s.PLATFORM_NONE:
            continue
        entry_at = base + index * s.LOCATOR_SIZE
        path = _locator_path(fd, lay, index, loc, entry_at)
        lay.locators.append(
            Locator(
                index, code, int(loc.data_offset), int(loc.data_length), int(loc.data_space), path
            )
        )
    if lay.disk_type == s.DISK_DIFFERENCING and header.parent_unique_id == bytes(16):
        lay.add(
            "dynamic header",
            "parent_unique_id",
            lay.header_offset + 40,
            "differencing disk without a parent UUID",
        )


def _locator_path(fd: int, lay: Layout, index: int, loc: Container, entry_at: int) -> str | None:
    name = f"parent locator {index}"
    start, length = int(loc.data_offset), int(loc.data_length)
    if length == 0 or length > 65536:
        lay.add(name, "data_length", entry_at + 8, f"locator data length {length}")
        return None
    if start < s.FOOTER_SIZE or start + length > lay.footer_offset:
        lay.add(
            name,
            "data_offset",
            entry_at + 16,
            f"locator data {start:#x}+{length:#x} lies outside the file",
        )
        return None
    if _overlaps_metadata(lay, start, start + length):
        lay.add(
            name,
            "data_offset",
            entry_at + 16,
            f"locator data {start:#x}+{length:#x} overlaps the header or BAT",
        )
    raw = read_at(fd, start, length)
    code = bytes(loc.platform_code)
    if code in (s.PLATFORM_W2RU, s.PLATFORM_W2KU):
        return s.decode_name(raw, "utf-16-le")
    if code == s.PLATFORM_MACX:
        text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
        return text.removeprefix("file://")
    lay.add(
        name, "platform_code", entry_at, f"platform {code!r} is not W2ru, W2ku or MacX", "warning"
    )
    return None


def metadata_end(lay: Layout) -> int:
    """The end of the footer copy, header and BAT (locator data may follow)."""
    bat_end = lay.bat_offset + len(lay.bat) * 4 if lay.bat is not None else 0
    return max(s.FOOTER_SIZE, lay.header_offset + s.HEADER_SIZE, bat_end)


def _overlaps_metadata(lay: Layout, start: int, end: int) -> bool:
    regions = [(0, s.FOOTER_SIZE), (lay.header_offset, lay.header_offset + s.HEADER_SIZE)]
    if lay.bat is not None:
        regions.append((lay.bat_offset, lay.bat_offset + len(lay.bat) * 4))
    return any(start < hi and lo < end for lo, hi in regions)


def _check_bat(lay: Layout) -> None:
    """Every allocated block inside the data area, clear of metadata and of other blocks."""
    bat = lay.bat
    assert bat is not None
    index = np.flatnonzero(bat != s.UNALLOCATED)
    if not index.size:
        return
    starts = bat[index].astype(np.int64) * s.SECTOR
    ends = starts + lay.bitmap_size + lay.block_size
    past = f"runs past the data area (footer at {lay.footer_offset:#x}, EOF {lay.file_size:#x})"
    _report(lay, index, starts, ends, ends > lay.footer_offset, past)
    for lo, hi, what in _reserved_regions(lay):
        _report(lay, index, starts, ends, (starts < hi) & (ends > lo), f"overlaps the {what}")
    order = np.argsort(starts, kind="stable")
    clash = np.zeros(index.size, bool)
    clash[order[1:]] = starts[order[1:]] < ends[order[:-1]]
    _report(lay, index, starts, ends, clash, "overlaps another block")


def _reserved_regions(lay: Layout) -> list[tuple[int, int, str]]:
    assert lay.bat is not None
    regions = [
        (0, s.FOOTER_SIZE, "footer copy"),
        (lay.header_offset, lay.header_offset + s.HEADER_SIZE, "dynamic header"),
        (lay.bat_offset, lay.bat_offset + len(lay.bat) * 4, "BAT"),
    ]
    regions += [
        (loc.data_offset, loc.data_offset + loc.data_length, f"parent locator {loc.index} data")
        for loc in lay.locators
        if loc.data_length
    ]
    return regions


def _report(
    lay: Layout,
    index: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    bad: np.ndarray,
    problem: str,
) -> None:
    # Every bad entry is reported, but a wrecked BAT is summarised after 20 lines.
    hits = np.flatnonzero(bad)
    for k in hits[:20]:
        i = int(index[k])
        where = f"block at {int(starts[k]):#x}..{int(ends[k]):#x} "
        lay.add("BAT", f"entry[{i}]", lay.bat_offset + 4 * i, where + problem)
    if hits.size > 20:
        lay.add("BAT", "-", lay.bat_offset, f"... and {hits.size - 20} more entries that {problem}")


def footer_facts(footer: Container) -> dict[str, Any]:
    c, h, spt = int(footer.cylinders), int(footer.heads), int(footer.sectors_per_track)
    return {
        "subformat": s.DISK_TYPES.get(int(footer.disk_type), str(footer.disk_type)),
        "creator": bytes(footer.creator_app).decode("latin-1"),
        "creator-version": f"{footer.creator_version >> 16}.{footer.creator_version & 0xFFFF}",
        "geometry": f"{c}/{h}/{spt}",
        "geometry-size": s.chs_size(c, h, spt),
        "uuid": s.uuid_text(footer.unique_id),
        "timestamp": s.timestamp_text(int(footer.timestamp)),
    }
