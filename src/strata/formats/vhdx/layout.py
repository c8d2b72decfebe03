"""VHDX geometry (BAT interleave) and encoders for the small structures.

References: [MS-VHDX] 2.2 Header Section, 2.5 BAT (chunk ratio, entry counts), 2.6 Metadata.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import numpy as np

from strata.blockdev.rawfile import pwrite_all
from strata.formats.vhdx import structs as S


@dataclass(frozen=True)
class Geometry:
    """Sizes that fix where each block's BAT entry lives (2.5: chunk ratio interleave)."""

    virtual_size: int
    block_size: int
    logical_sector: int
    has_parent: bool = False

    @property
    def chunk_ratio(self) -> int:
        return S.CHUNK_SECTORS * self.logical_sector // self.block_size

    @property
    def data_blocks(self) -> int:
        return -(-self.virtual_size // self.block_size)

    @property
    def bitmap_blocks(self) -> int:
        return -(-self.data_blocks // self.chunk_ratio)

    @property
    def bat_entries(self) -> int:
        if self.has_parent:
            return self.bitmap_blocks * (self.chunk_ratio + 1)
        return self.data_blocks + (self.data_blocks - 1) // self.chunk_ratio

    @property
    def bat_bytes(self) -> int:
        return align(self.bat_entries * 8, S.ALIGNMENT)

    @property
    def sectors_per_block(self) -> int:
        return self.block_size // self.logical_sector

    @property
    def chunk_bytes(self) -> int:
        """Guest bytes described by one sector bitmap block."""
        return self.chunk_ratio * self.block_size

    def payload_index(self, block: int | np.ndarray) -> int | np.ndarray:
        return block + block // self.chunk_ratio

    def bitmap_index(self, chunk: int) -> int:
        return chunk * (self.chunk_ratio + 1) + self.chunk_ratio

    def payload_mask(self) -> np.ndarray:
        """True for each BAT index that is a payload entry (not a sector bitmap entry)."""
        index = np.arange(self.bat_entries)
        return (index % (self.chunk_ratio + 1)) != self.chunk_ratio


def align(value: int, to: int) -> int:
    return -(-value // to) * to


def entry(state: int, file_offset: int) -> int:
    return (file_offset >> S.BAT_OFFSET_SHIFT << S.BAT_OFFSET_SHIFT) | state


def new_guid() -> bytes:
    return uuid.uuid4().bytes_le


@dataclass
class HeaderFields:
    sequence_number: int
    file_write_guid: bytes
    data_write_guid: bytes
    log_guid: bytes = S.ZERO_GUID
    log_version: int = 0
    version: int = 1
    log_length: int = S.MiB
    log_offset: int = S.MiB


def encode_header(h: HeaderFields) -> bytes:
    raw = bytearray(
        S.Header.build(
            dict(
                checksum=0,
                sequence_number=h.sequence_number,
                file_write_guid=h.file_write_guid,
                data_write_guid=h.data_write_guid,
                log_guid=h.log_guid,
                log_version=h.log_version,
                version=h.version,
                log_length=h.log_length,
                log_offset=h.log_offset,
            )
        )
    )
    return bytes(S.with_checksum(raw, S.HEADER_CHECKSUM_AT))


def encode_file_identifier(creator: str = "strata") -> bytes:
    name = creator.encode("utf-16-le")[:512].ljust(512, b"\0")
    return S.FileIdentifier.build(dict(creator=name))


@dataclass(frozen=True)
class Region:
    guid: bytes
    file_offset: int
    length: int
    required: bool = True

    @property
    def end(self) -> int:
        return self.file_offset + self.length


def encode_region_table(regions: list[Region]) -> bytes:
    raw = bytearray(S.REGION_TABLE_SIZE)
    raw[: S.REGION_HEADER_SIZE] = S.RegionTableHeader.build(
        dict(checksum=0, entry_count=len(regions), reserved=0)
    )
    for i, r in enumerate(regions):
        at = S.REGION_HEADER_SIZE + i * S.REGION_ENTRY_SIZE
        raw[at : at + S.REGION_ENTRY_SIZE] = S.RegionTableEntry.build(
            dict(guid=r.guid, file_offset=r.file_offset, length=r.length, required=int(r.required))
        )
    return bytes(S.with_checksum(raw))


@dataclass
class MetadataFields:
    block_size: int
    virtual_size: int
    logical_sector: int
    physical_sector: int
    disk_id: bytes
    leave_blocks_allocated: bool = False
    parent_locator: dict[str, str] | None = None
    extra: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # (id, value, flags)

    @property
    def has_parent(self) -> bool:
        return self.parent_locator is not None


def encode_parent_locator(pairs: dict[str, str]) -> bytes:
    keys = list(pairs)
    table = S.LOCATOR_HEADER_SIZE + len(keys) * S.LOCATOR_ENTRY_SIZE
    head = S.ParentLocatorHeader.build(
        dict(locator_type=S.VHDX_PARENT_LOCATOR_TYPE, reserved=0, key_value_count=len(keys))
    )
    entries, strings = bytearray(), bytearray()
    for key in keys:
        k, v = key.encode("utf-16-le"), pairs[key].encode("utf-16-le")
        key_at = table + len(strings)
        strings += k
        value_at = table + len(strings)
        strings += v
        entries += S.ParentLocatorEntry.build(
            dict(key_offset=key_at, value_offset=value_at, key_length=len(k), value_length=len(v))
        )
    return bytes(head + entries + strings)


def metadata_items(m: MetadataFields) -> list[tuple[bytes, bytes, int]]:
    """(item id, value, flags) for every item, in the order written."""
    virtual = S.META_IS_VIRTUAL_DISK | S.META_IS_REQUIRED
    flags = (S.LEAVE_BLOCKS_ALLOCATED if m.leave_blocks_allocated else 0) | (
        S.HAS_PARENT if m.has_parent else 0
    )
    items = [
        (
            S.FILE_PARAMETERS,
            S.FileParameters.build(dict(block_size=m.block_size, flags=flags)),
            S.META_IS_REQUIRED,
        ),
        (S.VIRTUAL_DISK_SIZE, m.virtual_size.to_bytes(8, "little"), virtual),
        (S.VIRTUAL_DISK_ID, m.disk_id, virtual),
        (S.LOGICAL_SECTOR_SIZE, m.logical_sector.to_bytes(4, "little"), virtual),
        (S.PHYSICAL_SECTOR_SIZE, m.physical_sector.to_bytes(4, "little"), virtual),
    ]
    if m.parent_locator is not None:
        items.append(
            (S.PARENT_LOCATOR, encode_parent_locator(m.parent_locator), S.META_IS_REQUIRED)
        )
    return items + list(m.extra)


def encode_metadata_region(m: MetadataFields, length: int = S.MiB) -> bytes:
    raw = bytearray(length)
    items = metadata_items(m)
    raw[: S.METADATA_HEADER_SIZE] = S.MetadataTableHeader.build(
        dict(reserved=0, entry_count=len(items))
    )
    at = S.METADATA_TABLE_SIZE
    for i, (item_id, value, flags) in enumerate(items):
        pos = S.METADATA_HEADER_SIZE + i * S.METADATA_ENTRY_SIZE
        raw[pos : pos + S.METADATA_ENTRY_SIZE] = S.MetadataTableEntry.build(
            dict(item_id=item_id, offset=at, length=len(value), flags=flags, reserved=0)
        )
        raw[at : at + len(value)] = value
        at = align(at + len(value), 8)
    return bytes(raw)


@dataclass(frozen=True)
class Plan:
    """Where everything goes in a new file (everything MiB-aligned, 2.1)."""

    geometry: Geometry
    log_offset: int
    log_length: int
    metadata_offset: int
    metadata_length: int
    bat_offset: int
    data_offset: int

    @property
    def regions(self) -> list[Region]:
        return [
            Region(S.BAT_REGION, self.bat_offset, self.geometry.bat_bytes),
            Region(S.METADATA_REGION, self.metadata_offset, self.metadata_length),
        ]


def plan(geometry: Geometry) -> Plan:
    log_offset = S.HEADER_SECTION_SIZE
    log_length = S.MiB
    metadata_offset = log_offset + log_length
    bat_offset = metadata_offset + S.MiB
    return Plan(
        geometry,
        log_offset,
        log_length,
        metadata_offset,
        S.MiB,
        bat_offset,
        bat_offset + geometry.bat_bytes,
    )


def write_headers(fd: int, fields: HeaderFields, first_slot: int = 0, durable: bool = True) -> None:
    """Write both headers so that one valid copy exists at every moment (2.2.2.1).

    The copy at ``first_slot`` (pass the slot that is not current) gets
    ``fields.sequence_number``, the other one the next number.
    """
    for i in range(2):
        slot = (first_slot + i) % 2
        h = HeaderFields(**{**fields.__dict__, "sequence_number": fields.sequence_number + i})
        pwrite_all(fd, S.HEADER_OFFSETS[slot], memoryview(encode_header(h)))
        if durable:
            os.fsync(fd)
