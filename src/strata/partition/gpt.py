"""GUID partition tables: read (primary, falling back to the backup) and write.

References: UEFI Specification 2.10 sections 5.2.3 (protective MBR), 5.3.1 (GPT layout),
5.3.2 (header, CRC-32 over header_size bytes with the CRC field zeroed), 5.3.3 (entry array,
its CRC-32 stored in the header).  CRC-32 is zlib's (IEEE 802.3).
"""

from __future__ import annotations

import itertools
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from construct import ConstructError

from strata.blockdev.base import BlockDevice
from strata.errors import CorruptImage, InvalidInput
from strata.partition.mbr import build_sector, dev_path, encode_record, read_sector
from strata.partition.structs import (
    GPT_DEFAULT_ENTRIES,
    GPT_ENTRY_DTYPE,
    GPT_ENTRY_SIZE,
    GPT_HEADER,
    GPT_HEADER_CRC_OFFSET,
    GPT_HEADER_SIZE,
    GPT_MAX_ARRAY_BYTES,
    GPT_REVISION,
    GPT_SIGNATURE,
    MBR_DISK_ID_OFFSET,
    PROTECTIVE_TYPE,
    Partition,
    PartitionTable,
    guid_from_le,
    guid_to_le,
)


@dataclass(frozen=True)
class GptCopy:
    """One validated header with its entry array."""

    header: Any
    entries: np.ndarray
    lba: int


def _corrupt(dev: BlockDevice, structure: str, problem: str, field: str, offset: int) -> None:
    raise CorruptImage(
        path=dev_path(dev), structure=structure, problem=problem, field=field, offset=offset
    )


def header_crc(raw: bytes, size: int) -> int:
    data = bytearray(raw[:size])
    data[GPT_HEADER_CRC_OFFSET : GPT_HEADER_CRC_OFFSET + 4] = bytes(4)
    return zlib.crc32(data)


def parse_header(dev: BlockDevice, lba: int, label: str) -> Any:
    ss = dev.sector_size
    base = lba * ss
    raw = read_sector(dev, lba, label)
    if raw[:8] != GPT_SIGNATURE:
        _corrupt(dev, label, "no 'EFI PART' signature", "signature", base)
    try:
        hdr = GPT_HEADER.parse(raw)
    except ConstructError as e:
        raise CorruptImage(path=dev_path(dev), structure=label, problem=str(e), offset=base) from e
    if not GPT_HEADER_SIZE <= hdr.header_size <= ss:
        _corrupt(dev, label, f"header size {hdr.header_size}", "header_size", base + 12)
    if header_crc(raw, hdr.header_size) != hdr.header_crc32:
        _corrupt(dev, label, "header CRC-32 mismatch", "header_crc32", base + 16)
    if hdr.revision >> 16 != 1:
        _corrupt(dev, label, f"revision {hdr.revision:#x}", "revision", base + 8)
    if hdr.my_lba != lba:
        _corrupt(dev, label, f"my_lba {hdr.my_lba} but found at {lba}", "my_lba", base + 24)
    check_header_ranges(dev, hdr, label, base)
    return hdr


def check_header_ranges(dev: BlockDevice, hdr: Any, label: str, base: int) -> None:
    total = dev.size // dev.sector_size
    if not 0 < hdr.first_usable_lba <= hdr.last_usable_lba + 1 or hdr.last_usable_lba >= total:
        _corrupt(
            dev,
            label,
            f"usable range {hdr.first_usable_lba}-{hdr.last_usable_lba} "
            f"does not fit {total} sectors",
            "last_usable_lba",
            base + 48,
        )
    if hdr.entry_size < GPT_ENTRY_SIZE or hdr.entry_size % 8:
        _corrupt(dev, label, f"entry size {hdr.entry_size}", "entry_size", base + 84)
    nbytes = hdr.num_entries * hdr.entry_size
    if nbytes > GPT_MAX_ARRAY_BYTES:
        _corrupt(dev, label, f"entry array of {nbytes} bytes", "num_entries", base + 80)
    array_end = hdr.partition_entry_lba * dev.sector_size + nbytes
    if hdr.partition_entry_lba < 1 or array_end > dev.size:
        _corrupt(
            dev,
            label,
            f"entry array at sector {hdr.partition_entry_lba} runs past the disk",
            "partition_entry_lba",
            base + 72,
        )


def entry_dtype(entry_size: int) -> np.dtype:
    return np.dtype(
        {
            "names": GPT_ENTRY_DTYPE.names,
            "formats": [GPT_ENTRY_DTYPE.fields[n][0] for n in GPT_ENTRY_DTYPE.names],
            "offsets": [GPT_ENTRY_DTYPE.fields[n][1] for n in GPT_ENTRY_DTYPE.names],
            "itemsize": entry_size,
        }
    )


def read_copy(dev: BlockDevice, lba: int, label: str) -> GptCopy:
    hdr = parse_header(dev, lba, label)
    nbytes = hdr.num_entries * hdr.entry_size
    at = hdr.partition_entry_lba * dev.sector_size
    raw = bytearray(nbytes)
    dev.readinto(at, raw)
    if zlib.crc32(raw) != hdr.entries_crc32:
        _corrupt(
            dev, label, "entry array CRC-32 mismatch", "entries_crc32", lba * dev.sector_size + 88
        )
    entries = np.frombuffer(bytes(raw), entry_dtype(hdr.entry_size))
    check_entries(dev, hdr, entries, at, label)
    return GptCopy(hdr, entries, lba)


def used_mask(entries: np.ndarray) -> np.ndarray:
    types = np.frombuffer(entries["type_guid"].tobytes(), np.uint8).reshape(len(entries), 16)
    return types.any(axis=1)


def check_entries(dev: BlockDevice, hdr: Any, entries: np.ndarray, at: int, label: str) -> None:
    used = np.flatnonzero(used_mask(entries))
    first = entries["first_lba"][used]
    last = entries["last_lba"][used]
    bad = (first > last) | (first < hdr.first_usable_lba) | (last > hdr.last_usable_lba)
    if bad.any():
        index = int(used[np.argmax(bad)])
        _corrupt(
            dev,
            f"{label} entry {index + 1}",
            f"sectors {int(entries['first_lba'][index])}-{int(entries['last_lba'][index])} "
            f"outside the usable range {hdr.first_usable_lba}-{hdr.last_usable_lba}",
            "first_lba",
            at + index * hdr.entry_size + 32,
        )
    order = np.argsort(first, kind="stable")
    overlap = first[order][1:] <= last[order][:-1]
    if overlap.any():
        index = int(used[order][1:][np.argmax(overlap)])
        _corrupt(
            dev,
            f"{label} entry {index + 1}",
            "overlaps another partition",
            "first_lba",
            at + index * hdr.entry_size + 32,
        )


def decode_name(raw: bytes) -> str:
    text = raw.decode("utf-16-le", errors="replace")
    return text.split("\0", 1)[0]


def partitions_of(copy: GptCopy, sector_size: int) -> list[Partition]:
    parts = []
    for index in np.flatnonzero(used_mask(copy.entries)):
        e = copy.entries[int(index)]
        first, last = int(e["first_lba"]), int(e["last_lba"])
        parts.append(
            Partition(
                number=int(index) + 1,
                start=first * sector_size,
                length=(last - first + 1) * sector_size,
                type=guid_from_le(e["type_guid"].tobytes()),
                name=decode_name(e["name"].tobytes()),
                guid=guid_from_le(e["unique_guid"].tobytes()),
                attributes=int(e["attributes"]),
            )
        )
    return parts


def read_gpt(dev: BlockDevice) -> PartitionTable:
    """Primary table, or the backup with a warning when the primary is damaged."""
    last = dev.size // dev.sector_size - 1
    warnings: list[str] = []
    try:
        copy = read_copy(dev, 1, "GPT primary header")
    except CorruptImage as primary_error:
        try:
            copy = read_copy(dev, last, "GPT backup header")
        except CorruptImage:
            raise primary_error from None
        warnings.append(f"{primary_error.message}; using the backup GPT at sector {last}")
    else:
        warnings += backup_problems(dev, copy, last)
    hdr = copy.header
    return PartitionTable(
        "gpt",
        guid_from_le(hdr.disk_guid),
        dev.sector_size,
        partitions_of(copy, dev.sector_size),
        warnings,
        hdr.first_usable_lba * dev.sector_size,
        (hdr.last_usable_lba + 1) * dev.sector_size,
    )


def backup_problems(dev: BlockDevice, primary: GptCopy, last: int) -> list[str]:
    where = primary.header.alternate_lba
    if where != last:
        return [f"backup GPT header is at sector {where}, not the last sector {last}"]
    try:
        backup = read_copy(dev, where, "GPT backup header")
    except CorruptImage as e:
        return [e.message]
    if backup.entries.tobytes() != primary.entries.tobytes():
        return ["the backup GPT entry array differs from the primary"]
    return []


# ---------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class GptLayout:
    sector_size: int
    total: int
    array_sectors: int
    num_entries: int

    @property
    def first_usable(self) -> int:
        return 2 + self.array_sectors

    @property
    def last_usable(self) -> int:
        return self.total - 2 - self.array_sectors

    @property
    def backup_array(self) -> int:
        return self.last_usable + 1


def layout_for(dev: BlockDevice, num_entries: int) -> GptLayout:
    ss = dev.sector_size
    array_sectors = -(-num_entries * GPT_ENTRY_SIZE // ss)
    total = dev.size // ss
    layout = GptLayout(ss, total, array_sectors, num_entries)
    if layout.last_usable < layout.first_usable:
        raise InvalidInput(f"a disk of {dev.size} bytes is too small for a GPT")
    return layout


def build_entries(layout: GptLayout, partitions: Sequence[Partition]) -> np.ndarray:
    entries = np.zeros(layout.num_entries, GPT_ENTRY_DTYPE)
    next_free = 0
    spans: list[tuple[int, int, int]] = []
    for part in partitions:
        index = part.number - 1 if part.number > 0 else next_free
        if not 0 <= index < layout.num_entries or entries["first_lba"][index]:
            raise InvalidInput(f"partition number {index + 1} is out of range or repeated")
        first, last = _span(layout, part, index + 1)
        spans.append((first, last, index + 1))
        entries[index] = (
            _guid_bytes(part.type, index + 1, "type"),
            _guid_bytes(part.guid or str(uuid.uuid4()), index + 1, "guid"),
            first,
            last,
            part.attributes,
            _encode_name(part.name, index + 1),
        )
        next_free = max(next_free, index + 1)
    _check_spans(spans)
    return entries


def _span(layout: GptLayout, part: Partition, number: int) -> tuple[int, int]:
    ss = layout.sector_size
    if part.start % ss or part.length % ss or part.length <= 0:
        raise InvalidInput(f"partition {number}: start and length must be whole {ss}-byte sectors")
    first, last = part.start // ss, (part.end // ss) - 1
    if first < layout.first_usable or last > layout.last_usable:
        raise InvalidInput(
            f"partition {number} (sectors {first}-{last}) lies outside the usable range "
            f"{layout.first_usable}-{layout.last_usable}"
        )
    return first, last


def _check_spans(spans: list[tuple[int, int, int]]) -> None:
    ordered = sorted(spans)
    for a, b in itertools.pairwise(ordered):
        if b[0] <= a[1]:
            raise InvalidInput(f"partitions {a[2]} and {b[2]} overlap")


def _guid_bytes(text: str, number: int, what: str) -> bytes:
    try:
        return guid_to_le(text)
    except ValueError as e:
        raise InvalidInput(f"partition {number}: {what} {text!r} is not a GUID") from e


def _encode_name(name: str, number: int) -> bytes:
    raw = name.encode("utf-16-le")
    if len(raw) > 72:
        raise InvalidInput(f"partition {number}: name {name!r} is longer than 36 UTF-16 units")
    return raw.ljust(72, b"\0")


def build_header(layout: GptLayout, disk_guid: bytes, entries_crc: int, backup: bool) -> bytes:
    my, alt = (layout.total - 1, 1) if backup else (1, layout.total - 1)
    fields = dict(
        revision=GPT_REVISION,
        header_size=GPT_HEADER_SIZE,
        header_crc32=0,
        reserved=0,
        my_lba=my,
        alternate_lba=alt,
        first_usable_lba=layout.first_usable,
        last_usable_lba=layout.last_usable,
        disk_guid=disk_guid,
        partition_entry_lba=layout.backup_array if backup else 2,
        num_entries=layout.num_entries,
        entry_size=GPT_ENTRY_SIZE,
        entries_crc32=entries_crc,
    )
    raw = GPT_HEADER.build(fields)
    fields["header_crc32"] = zlib.crc32(raw)
    return GPT_HEADER.build(fields).ljust(layout.sector_size, b"\0")


def protective_mbr(dev: BlockDevice, layout: GptLayout) -> bytes:
    """UEFI 5.2.3: one 0xEE record from sector 1 to the end (capped at 2^32-1)."""
    head = read_sector(dev, 0, "MBR")
    sectors = min(layout.total - 1, 0xFFFFFFFF)
    record = bytearray(encode_record(0, PROTECTIVE_TYPE, 1, sectors))
    record[1:4] = b"\x00\x02\x00"
    if layout.total - 1 > 0xFFFFFFFF:
        record[5:8] = b"\xff\xff\xff"
    disk_id = int.from_bytes(head[MBR_DISK_ID_OFFSET : MBR_DISK_ID_OFFSET + 4], "little")
    return build_sector(head, [bytes(record)], disk_id).ljust(layout.sector_size, b"\0")


def write_gpt(
    dev: BlockDevice,
    partitions: Sequence[Partition],
    disk_guid: str | None = None,
    num_entries: int = GPT_DEFAULT_ENTRIES,
) -> PartitionTable:
    """Write protective MBR, primary header and array, backup array and header; return it."""
    layout = layout_for(dev, num_entries)
    entries = build_entries(layout, partitions)
    array = entries.tobytes().ljust(layout.array_sectors * layout.sector_size, b"\0")
    crc = zlib.crc32(entries.tobytes())
    guid = _guid_bytes(disk_guid or str(uuid.uuid4()), 0, "disk guid")
    ss = layout.sector_size
    write = dev.write  # type: ignore[attr-defined]
    write(0, protective_mbr(dev, layout))
    write(ss, build_header(layout, guid, crc, backup=False))
    write(2 * ss, array)
    write(layout.backup_array * ss, array)
    write((layout.total - 1) * ss, build_header(layout, guid, crc, backup=True))
    return read_gpt(dev)
