"""MBR partition tables with extended (EBR-chained) logical partitions: read and write.

References: UEFI Specification 2.10 section 5.2.1 (legacy MBR); the EBR chain as util-linux
libfdisk (dos.c) and Microsoft's "Disk Concepts" document it: in each EBR, entry 0 is the
logical partition (start relative to that EBR) and entry 1 links the next EBR (start relative
to the extended partition).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strata.blockdev.base import BlockDevice
from strata.errors import CorruptImage, InvalidInput
from strata.partition.structs import (
    DEFAULT_EXTENDED_TYPE,
    EXTENDED_TYPES,
    MBR_DISK_ID_OFFSET,
    MBR_ENTRIES_OFFSET,
    MBR_ENTRY_DTYPE,
    MBR_ENTRY_SIZE,
    MBR_SIGNATURE,
    Partition,
    PartitionTable,
)

# A real disk has a handful of logical partitions; past this a chain is hostile.
MAX_LOGICAL = 1024
MAX_LBA32 = 0xFFFFFFFF


def dev_path(dev: BlockDevice) -> str:
    return str(getattr(dev, "path", None) or "<device>")


def read_sector(dev: BlockDevice, lba: int, structure: str) -> bytes:
    ss = dev.sector_size
    if (lba + 1) * ss > dev.size:
        raise CorruptImage(
            path=dev_path(dev),
            structure=structure,
            problem=f"sector {lba} lies past the end of the disk ({dev.size} bytes)",
            offset=lba * ss,
        )
    buf = bytearray(ss)
    dev.readinto(lba * ss, buf)
    return bytes(buf)


def has_signature(sector: bytes) -> bool:
    return sector[510:512] == MBR_SIGNATURE


def mbr_entries(sector: bytes) -> np.ndarray:
    raw = sector[MBR_ENTRIES_OFFSET : MBR_ENTRIES_OFFSET + 4 * MBR_ENTRY_SIZE]
    return np.frombuffer(raw, MBR_ENTRY_DTYPE)


@dataclass(frozen=True)
class _Record:
    """One non-empty MBR/EBR record, absolute LBAs."""

    slot: int
    status: int
    type: int
    lba: int
    sectors: int
    offset: int  # byte offset of the record on the disk


def records(dev: BlockDevice, sector: bytes, sector_lba: int, structure: str) -> list[_Record]:
    """The used records of one MBR or EBR sector (start still relative to its base)."""
    base = sector_lba * dev.sector_size + MBR_ENTRIES_OFFSET
    found = []
    for slot, entry in enumerate(mbr_entries(sector)):
        offset = base + slot * MBR_ENTRY_SIZE
        if int(entry["status"]) not in (0x00, 0x80):
            raise CorruptImage(
                path=dev_path(dev),
                structure=structure,
                problem=f"record {slot + 1} has status {int(entry['status']):#04x} "
                "(only 0x00 and 0x80 are valid)",
                field="status",
                offset=offset,
            )
        if int(entry["type"]) == 0 or int(entry["sectors"]) == 0:
            continue
        found.append(
            _Record(
                slot,
                int(entry["status"]),
                int(entry["type"]),
                int(entry["lba_first"]),
                int(entry["sectors"]),
                offset,
            )
        )
    return found


def _check_inside(dev: BlockDevice, rec: _Record, lo: int, hi: int, structure: str) -> None:
    if rec.lba < lo or rec.lba + rec.sectors > hi:
        raise CorruptImage(
            path=dev_path(dev),
            structure=structure,
            problem=f"record {rec.slot + 1} spans sectors {rec.lba}-{rec.lba + rec.sectors - 1}, "
            f"outside {lo}-{hi - 1}",
            field="lba_first" if rec.lba < lo else "sectors",
            offset=rec.offset,
        )


def _check_overlaps(dev: BlockDevice, recs: Sequence[_Record], structure: str) -> None:
    ordered = sorted(recs, key=lambda r: r.lba)
    for a, b in itertools.pairwise(ordered):
        if b.lba < a.lba + a.sectors:
            raise CorruptImage(
                path=dev_path(dev),
                structure=structure,
                problem=f"records {a.slot + 1} and {b.slot + 1} overlap",
                field="lba_first",
                offset=b.offset,
            )


def read_mbr(dev: BlockDevice, sector: bytes) -> PartitionTable:
    total = dev.size // dev.sector_size
    primaries = records(dev, sector, 0, "MBR")
    for rec in primaries:
        _check_inside(dev, rec, 1, total, "MBR")
    _check_overlaps(dev, primaries, "MBR")
    extended = [r for r in primaries if r.type in EXTENDED_TYPES]
    if len(extended) > 1:
        raise CorruptImage(
            path=dev_path(dev),
            structure="MBR",
            problem="more than one extended partition",
            field="type",
            offset=extended[1].offset,
        )
    parts = [_partition(dev, r.slot + 1, r) for r in primaries]
    if extended:
        parts += read_logical(dev, extended[0])
    disk_id = int.from_bytes(sector[MBR_DISK_ID_OFFSET : MBR_DISK_ID_OFFSET + 4], "little")
    return PartitionTable("mbr", f"0x{disk_id:08x}", dev.sector_size, parts)


def _partition(dev: BlockDevice, number: int, rec: _Record) -> Partition:
    ss = dev.sector_size
    return Partition(
        number, rec.lba * ss, rec.sectors * ss, f"{rec.type:02x}", "", None, rec.status
    )


def read_logical(dev: BlockDevice, container: _Record) -> list[Partition]:
    """Follow the EBR chain inside ``container``; loops and escapes are corrupt."""
    lo, hi = container.lba, container.lba + container.sectors
    ebr, seen, found = container.lba, set(), []
    while ebr is not None:
        if ebr in seen or len(seen) >= MAX_LOGICAL:
            raise CorruptImage(
                path=dev_path(dev),
                structure="EBR chain",
                problem=f"the chain returns to sector {ebr}"
                if ebr in seen
                else f"more than {MAX_LOGICAL} logical partitions",
                field="next",
                offset=ebr * dev.sector_size,
            )
        seen.add(ebr)
        logical, ebr = _read_ebr(dev, ebr, lo, hi)
        if logical is not None:
            found.append(_partition(dev, 5 + len(found), logical))
    return found


def _read_ebr(dev: BlockDevice, ebr: int, lo: int, hi: int) -> tuple[_Record | None, int | None]:
    sector = read_sector(dev, ebr, "EBR")
    if not has_signature(sector):
        raise CorruptImage(
            path=dev_path(dev),
            structure="EBR",
            problem="missing 0x55AA signature",
            field="signature",
            offset=ebr * dev.sector_size + 510,
        )
    logical, link = None, None
    for rec in records(dev, sector, ebr, "EBR"):
        if rec.slot == 0 and rec.type not in EXTENDED_TYPES:
            logical = _Record(
                rec.slot, rec.status, rec.type, ebr + rec.lba, rec.sectors, rec.offset
            )
            _check_inside(dev, logical, ebr + 1, hi, "EBR")
        elif rec.slot == 1 and rec.type in EXTENDED_TYPES:
            link = _Record(rec.slot, rec.status, rec.type, lo + rec.lba, rec.sectors, rec.offset)
            _check_inside(dev, link, lo, hi, "EBR")
    return logical, (link.lba if link is not None else None)


# ---------------------------------------------------------------------------- writing


def chs(lba: int) -> bytes:
    """CHS address for 255 heads x 63 sectors; past 1023 cylinders the conventional maximum."""
    cyl, rest = divmod(lba, 255 * 63)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head, sec = divmod(rest, 63)
    return bytes([head, (sec + 1) | ((cyl >> 2) & 0xC0), cyl & 0xFF])


def encode_record(status: int, ptype: int, lba: int, sectors: int) -> bytes:
    if lba > MAX_LBA32 or sectors > MAX_LBA32:
        raise InvalidInput(f"MBR cannot address sector {lba} + {sectors}: use GPT")
    last = lba + sectors - 1
    return (
        bytes([status])
        + chs(lba)
        + bytes([ptype])
        + chs(last)
        + lba.to_bytes(4, "little")
        + sectors.to_bytes(4, "little")
    )


def build_sector(head: bytes, entries: Sequence[bytes], disk_id: int | None = None) -> bytes:
    """A 512-byte MBR/EBR: ``head`` keeps the boot code of an MBR (empty for an EBR)."""
    out = bytearray(512)
    code = head[:MBR_DISK_ID_OFFSET]
    out[: len(code)] = code
    if disk_id is not None:
        out[MBR_DISK_ID_OFFSET : MBR_DISK_ID_OFFSET + 4] = disk_id.to_bytes(4, "little")
    for slot, entry in enumerate(entries):
        at = MBR_ENTRIES_OFFSET + slot * MBR_ENTRY_SIZE
        out[at : at + MBR_ENTRY_SIZE] = entry
    out[510:512] = MBR_SIGNATURE
    return bytes(out)


def _sectors_of(dev: BlockDevice, part: Partition) -> tuple[int, int]:
    ss = dev.sector_size
    if part.start % ss or part.length % ss or part.length <= 0:
        raise InvalidInput(
            f"partition {part.number}: start {part.start} and length {part.length} "
            f"must be positive whole sectors of {ss} bytes"
        )
    if part.end > dev.size:
        raise InvalidInput(f"partition {part.number} ends past the disk ({dev.size} bytes)")
    return part.start // ss, part.length // ss


def _mbr_type(part: Partition) -> int:
    try:
        value = int(part.type, 16)
    except ValueError as e:
        raise InvalidInput(f"partition {part.number}: MBR type {part.type!r} is not hex") from e
    if not 0 < value < 256 or value == 0xEE or value in EXTENDED_TYPES:
        raise InvalidInput(f"partition {part.number}: MBR type {part.type!r} is not allowed here")
    return value


@dataclass(frozen=True)
class _Plan:
    primary: dict[int, bytes]  # slot -> record
    ebrs: list[tuple[int, bytes]]  # (lba, sector)


def _is_extended(part: Partition) -> bool:
    try:
        return int(part.type, 16) in EXTENDED_TYPES
    except ValueError:
        return False


def plan_mbr(dev: BlockDevice, partitions: Sequence[Partition], extended_type: int) -> _Plan:
    """Records for sector 0 and the EBR chain.

    An extended partition among 1-4 (as ``read_table`` reports it) is used as the container;
    otherwise one is made in the first free slot, just large enough for the logicals.
    """
    numbers = [p.number for p in partitions]
    if len(set(numbers)) != len(numbers) or min(numbers, default=1) < 1:
        raise InvalidInput("MBR partition numbers must be unique: 1-4 primary, 5+ logical")
    containers = [p for p in partitions if p.number <= 4 and _is_extended(p)]
    primaries = sorted(
        (p for p in partitions if p.number <= 4 and not _is_extended(p)), key=lambda p: p.number
    )
    logicals = sorted((p for p in partitions if p.number >= 5), key=lambda p: p.number)
    if len(containers) > 1:
        raise InvalidInput("an MBR holds at most one extended partition")
    _check_layout([(*_sectors_of(dev, p), p.number) for p in [*primaries, *logicals]])
    primary = {
        p.number - 1: encode_record(p.attributes & 0x80, _mbr_type(p), *_sectors_of(dev, p))
        for p in primaries
    }
    if not logicals and not containers:
        return _Plan(primary, [])
    given = containers[0] if containers else None
    container, ebrs = _plan_logicals(dev, primaries, logicals, given)
    if given is not None:
        slot, ext_type = given.number - 1, int(given.type, 16)
    else:
        free = [s for s in range(4) if s not in primary]
        if not free:
            raise InvalidInput("no primary slot left for the extended partition")
        slot, ext_type = free[0], extended_type
    primary[slot] = encode_record(0, ext_type, *container)
    return _Plan(primary, ebrs)


def _check_layout(spans: Sequence[tuple[int, int, int]]) -> None:
    ordered = sorted(spans)
    for lba, _, number in ordered[:1]:
        if lba < 1:
            raise InvalidInput(f"partition {number} overlaps the MBR at sector 0")
    for (a_lba, a_len, a_num), (b_lba, _, b_num) in itertools.pairwise(ordered):
        if b_lba < a_lba + a_len:
            raise InvalidInput(f"partitions {a_num} and {b_num} overlap")


def _ebr_positions(
    dev: BlockDevice,
    primaries: Sequence[Partition],
    logicals: Sequence[Partition],
    floor: int,
    pinned: bool,
) -> list[int]:
    """One EBR before each logical, at most 1 MiB before it (fdisk's alignment)."""
    align = max(1, (1 << 20) // dev.sector_size)
    lbas: list[int] = []
    for index, part in enumerate(logicals):
        lba, _ = _sectors_of(dev, part)
        if index and lba < _sectors_of(dev, logicals[index - 1])[0]:
            raise InvalidInput("logical partitions must be numbered in disk order")
        prev = max(floor, _previous_end(dev, primaries, logicals[:index], lba))
        if lba - prev < 1:
            raise InvalidInput(f"logical partition {part.number} needs a free sector before it")
        lbas.append(prev if index == 0 and pinned else max(prev, lba - align))
    return lbas


def _plan_logicals(
    dev: BlockDevice,
    primaries: Sequence[Partition],
    logicals: Sequence[Partition],
    given: Partition | None,
) -> tuple[tuple[int, int], list[tuple[int, bytes]]]:
    floor = _sectors_of(dev, given)[0] if given is not None else 1
    ebr_lbas = _ebr_positions(dev, primaries, logicals, floor, given is not None)
    if given is not None:
        container = _sectors_of(dev, given)
    elif logicals:
        last_lba, last_len = _sectors_of(dev, logicals[-1])
        container = (ebr_lbas[0], last_lba + last_len - ebr_lbas[0])
    _check_container(dev, container, primaries, logicals)
    if not logicals:
        return container, [(container[0], build_sector(b"", []))]
    first = container[0]
    sectors = []
    for index, part in enumerate(logicals):
        lba, n = _sectors_of(dev, part)
        ebr = ebr_lbas[index]
        entries = [encode_record(part.attributes & 0x80, _mbr_type(part), lba - ebr, n)]
        if index + 1 < len(logicals):
            nxt = ebr_lbas[index + 1]
            nlba, nlen = _sectors_of(dev, logicals[index + 1])
            entries.append(encode_record(0, DEFAULT_EXTENDED_TYPE, nxt - first, nlba + nlen - nxt))
        sectors.append((ebr, build_sector(b"", entries)))
    return container, sectors


def _check_container(
    dev: BlockDevice,
    container: tuple[int, int],
    primaries: Sequence[Partition],
    logicals: Sequence[Partition],
) -> None:
    lo, hi = container[0], container[0] + container[1]
    for p in primaries:
        lba, n = _sectors_of(dev, p)
        if lba < hi and lo < lba + n:
            raise InvalidInput(f"primary partition {p.number} overlaps the extended partition")
    for p in logicals:
        lba, n = _sectors_of(dev, p)
        if lba <= lo or lba + n > hi:
            raise InvalidInput(f"logical partition {p.number} lies outside the extended partition")


def _previous_end(
    dev: BlockDevice, primaries: Sequence[Partition], before: Sequence[Partition], lba: int
) -> int:
    ends = [1]
    for p in [*primaries, *before]:
        plba, n = _sectors_of(dev, p)
        if plba + n <= lba:
            ends.append(plba + n)
    return max(ends)


def write_mbr(
    dev: BlockDevice,
    partitions: Sequence[Partition],
    disk_id: int | None = None,
    extended_type: int = DEFAULT_EXTENDED_TYPE,
) -> PartitionTable:
    """Write an MBR (and EBR chain for partitions numbered 5+) to ``dev``; return it read back.

    The boot code (bytes 0-439) of an existing sector 0 is kept; stale GPT headers are wiped
    so no tool mistakes the disk for GPT.
    """
    if dev.sector_size != 512:
        raise InvalidInput(f"MBR needs 512-byte sectors, the disk has {dev.sector_size}")
    plan = plan_mbr(dev, partitions, extended_type)
    head = read_sector(dev, 0, "MBR")
    if disk_id is None:
        disk_id = int.from_bytes(head[MBR_DISK_ID_OFFSET : MBR_DISK_ID_OFFSET + 4], "little")
    entries = [plan.primary.get(slot, bytes(MBR_ENTRY_SIZE)) for slot in range(4)]
    write = dev.write  # type: ignore[attr-defined]
    write(0, build_sector(head, entries, disk_id))
    for lba, sector in plan.ebrs:
        write(lba * 512, sector)
    wipe_gpt_headers(dev, partitions)
    return read_mbr(dev, read_sector(dev, 0, "MBR"))


def wipe_gpt_headers(dev: BlockDevice, partitions: Sequence[Partition]) -> None:
    ss = dev.sector_size
    for lba in (1, dev.size // ss - 1):
        inside = any(p.start <= lba * ss < p.end for p in partitions)
        if lba > 0 and not inside and read_sector(dev, lba, "GPT header")[:8] == b"EFI PART":
            dev.write(lba * ss, bytes(ss))  # type: ignore[attr-defined]
