"""VHDX writer: fixed, dynamic and differencing images; lay out, then stream.

References: [MS-VHDX] 2.1 Layout, 2.2 Header Section, 2.5 BAT, 2.6.2 Known Metadata Items.

Data blocks are appended in guest order after the BAT; structures that point at
data (BAT, then headers) are written after the data they point at.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from strata.blockdev.base import BlockDevice
from strata.blockdev.chain import ChainDevice
from strata.blockdev.copy import Progress, iter_blocks
from strata.blockdev.rawfile import create_file, pwrite_all, pwrite_new
from strata.errors import InvalidInput
from strata.formats.options import FormatOption, size_option
from strata.formats.registry import CreateRequest, WriteRequest
from strata.formats.sizes import check_disk_size
from strata.formats.vhdx import structs as S
from strata.formats.vhdx.layout import (
    Geometry,
    HeaderFields,
    MetadataFields,
    Plan,
    encode_file_identifier,
    encode_metadata_region,
    encode_region_table,
    entry,
    new_guid,
    plan,
    write_headers,
)
from strata.formats.vhdx.reader import VhdxDevice

GRANULE = 64 << 10  # zero detection and delta granularity inside a payload block

OPTIONS = (
    FormatOption(
        "subformat",
        "fixed (every block allocated) or dynamic; a child of --parent/-B is differencing",
        "dynamic",
        str,
        ("fixed", "dynamic"),
    ),
    size_option("block_size", "payload block size: a power of two from 1M to 256M", 32 << 20),
    FormatOption(
        "logical_sector_size",
        "logical sector size: 512 when not given; a child takes its parent's",
        None,  # not 512: a child must tell "not given" from a size other than its parent's
        int,
        ("512", "4096"),
    ),
    FormatOption("physical_sector_size", "physical sector size", 4096, int, ("512", "4096")),
)


@dataclass(frozen=True)
class Settings:
    subformat: str
    block_size: int
    logical_sector: int
    physical_sector: int


def settings(options: Mapping[str, Any], parent: BlockDevice | None) -> Settings:
    block = int(options.get("block_size") or 32 << 20)
    if not S.MIN_BLOCK <= block <= S.MAX_BLOCK or block & (block - 1):
        raise InvalidInput(f"vhdx block_size {block} must be a power of two from 1M to 256M")
    logical = int(options.get("logical_sector_size") or 512)
    if parent is not None:
        given, logical = options.get("logical_sector_size"), parent.sector_size
        if given is not None and int(given) != logical:
            raise InvalidInput(
                f"logical_sector_size={given}: a differencing child reads its parent's "
                f"sectors, so it takes the parent's sector size ({logical})"
            )
    return Settings(
        "differencing" if parent is not None else str(options.get("subformat") or "dynamic"),
        block,
        logical,
        int(options.get("physical_sector_size") or 4096),
    )


def check_options(options: Mapping[str, Any], size: int, child: bool) -> None:
    s = settings(options, None)
    if child:  # a child takes its parent's sector size, at least 512
        s = replace(s, subformat="differencing", logical_sector=512)
    geometry_for(size, s)


def geometry_for(size: int, s: Settings) -> Geometry:
    check_disk_size(size, "a VHDX", S.MAX_VIRTUAL_SIZE, "64 TiB", s.logical_sector)
    return Geometry(size, s.block_size, s.logical_sector, s.subformat == "differencing")


def vhdx_parent(dev: BlockDevice | None) -> VhdxDevice | None:
    if dev is None:
        return None
    if isinstance(dev, ChainDevice):
        dev = dev.top
    if not isinstance(dev, VhdxDevice):
        fmt = getattr(dev, "format_name", "unknown")
        raise InvalidInput(f"a VHDX differencing disk needs a VHDX parent, not {fmt}")
    return dev


def parent_locator(child: str, parent: VhdxDevice) -> dict[str, str]:
    parent_abs = os.path.abspath(parent.path or "")
    rel = os.path.relpath(parent_abs, os.path.dirname(os.path.abspath(child))).replace("/", "\\")
    return {
        "parent_linkage": "{" + parent.data_write_guid.lower() + "}",
        "relative_path": rel if rel.startswith("..") else ".\\" + rel,
        "absolute_win32_path": parent_abs.replace("/", "\\"),
    }


def metadata_for(s: Settings, g: Geometry, locator: dict[str, str] | None) -> MetadataFields:
    return MetadataFields(
        block_size=g.block_size,
        virtual_size=g.virtual_size,
        logical_sector=g.logical_sector,
        physical_sector=s.physical_sector,
        disk_id=new_guid(),
        leave_blocks_allocated=s.subformat == "fixed",
        parent_locator=locator,
    )


def write_structures(
    fd: int, p: Plan, meta: MetadataFields, bat: np.ndarray, durable: bool = True
) -> None:
    """Everything but the payload: BAT and metadata first, the headers last."""
    pwrite_all(fd, p.bat_offset, memoryview(bat.astype("<u8").tobytes()))
    pwrite_all(fd, p.metadata_offset, memoryview(encode_metadata_region(meta, p.metadata_length)))
    table = encode_region_table(p.regions)
    for offset in S.REGION_TABLE_OFFSETS:
        pwrite_all(fd, offset, memoryview(table))
    pwrite_all(fd, 0, memoryview(encode_file_identifier()))
    if durable:
        os.fsync(fd)
    header = HeaderFields(
        1, new_guid(), new_guid(), log_length=p.log_length, log_offset=p.log_offset
    )
    write_headers(fd, header, durable=False)
    if durable:
        os.fsync(fd)


def fixed_bat(g: Geometry, p: Plan) -> np.ndarray:
    bat = np.zeros(g.bat_entries, np.uint64)
    blocks = np.arange(g.data_blocks, dtype=np.uint64)
    offsets = np.uint64(p.data_offset) + blocks * np.uint64(g.block_size)
    bat[g.payload_index(blocks)] = offsets | np.uint64(S.PAYLOAD_FULLY_PRESENT)
    return bat


def zero_bitmaps(bat: np.ndarray, g: Geometry, end: int) -> int:
    """Point every absent sector bitmap entry at a new all-zero (hole) block; the new end.

    The spec allows a differencing disk to leave a chunk's bitmap absent, but libvhdi
    then reads the bitmap from file offset 0 and takes sectors from the child; a zero
    bitmap in a hole costs no disk space and reads as "every sector from the parent".
    """
    index = np.array([g.bitmap_index(c) for c in range(g.bitmap_blocks)], np.int64)
    missing = index[bat[index] == 0]
    offsets = end + np.arange(len(missing), dtype=np.uint64) * np.uint64(S.SECTOR_BITMAP_BLOCK)
    bat[missing] = offsets | np.uint64(S.BITMAP_PRESENT)
    return end + len(missing) * S.SECTOR_BITMAP_BLOCK


def create(req: CreateRequest) -> VhdxDevice:
    parent = vhdx_parent(req.parent)
    s = settings(req.options, parent)
    g = geometry_for(req.size, s)
    p = plan(g)
    locator = parent_locator(req.path, parent) if parent is not None else None
    fixed = s.subformat == "fixed"
    bat = fixed_bat(g, p) if fixed else np.zeros(g.bat_entries, np.uint64)
    end = p.data_offset + (g.data_blocks * g.block_size if fixed else 0)
    if g.has_parent:
        end = zero_bitmaps(bat, g, end)
    fd = create_file(req.path)
    try:
        os.ftruncate(fd, end)
        write_structures(fd, p, metadata_for(s, g, locator), bat)
    finally:
        os.close(fd)
    return VhdxDevice(req.path, writable=True)


class _Payload:
    """Appends payload and sector bitmap blocks in guest order and fills the BAT."""

    def __init__(self, fd: int, g: Geometry, p: Plan, fixed: bool) -> None:
        self.fd, self.g = fd, g
        self.bat = fixed_bat(g, p) if fixed else np.zeros(g.bat_entries, np.uint64)
        self.end = p.data_offset + (g.data_blocks * g.block_size if fixed else 0)

    def block_offset(self, block: int) -> int:
        index = int(self.g.payload_index(block))
        if not self.bat[index]:
            self.bat[index] = entry(S.PAYLOAD_FULLY_PRESENT, self.end)
            self.end += self.g.block_size
            # Extending the file before writing into it is measurably faster on ext4
            # than writes that each move EOF.
            os.ftruncate(self.fd, self.end)
        return int(self.bat[index]) >> S.BAT_OFFSET_SHIFT << S.BAT_OFFSET_SHIFT

    def write(self, offset: int, data: memoryview) -> None:
        bs = self.g.block_size
        pos = 0
        while pos < len(data):
            at = offset + pos
            n = min(len(data) - pos, bs - at % bs)
            pwrite_new(self.fd, self.block_offset(at // bs) + at % bs, data[pos : pos + n])
            pos += n

    def add_bitmap(self, chunk: int, bitmap: np.ndarray) -> None:
        """Store a chunk's sector bitmap; its blocks become PARTIALLY or FULLY present."""
        g = self.g
        at = self.end
        self.end += S.SECTOR_BITMAP_BLOCK
        pwrite_all(self.fd, at, memoryview(bitmap.tobytes()))
        self.bat[g.bitmap_index(chunk)] = entry(S.BITMAP_PRESENT, at)
        first = chunk * g.chunk_ratio
        count = min(g.chunk_ratio, g.data_blocks - first)
        rows = bitmap[: count * g.sectors_per_block // 8].reshape(count, -1)
        full = (rows == 0xFF).all(axis=1)
        index = g.payload_index(np.arange(first, first + count))
        allocated = self.bat[index] != 0
        offsets = self.bat[index] & ~np.uint64(S.BAT_STATE_MASK)
        state = np.where(full, S.PAYLOAD_FULLY_PRESENT, S.PAYLOAD_PARTIALLY_PRESENT)
        self.bat[index] = np.where(allocated, offsets | state.astype(np.uint64), 0)


def stream_plain(pay: _Payload, src: BlockDevice, progress: Progress | None) -> None:
    for blk in iter_blocks(src, GRANULE, progress=progress):
        pay.write(blk.offset, blk.data)


def stream_delta(
    pay: _Payload, src: BlockDevice, base: BlockDevice, progress: Progress | None
) -> None:
    """Each differing granule is stored; only its changed sectors are marked present."""
    g = pay.g
    bitmap = np.zeros(S.SECTOR_BITMAP_BLOCK, np.uint8)
    chunk = -1
    for blk in iter_blocks(src, GRANULE, base=base, progress=progress):
        here = blk.offset // g.chunk_bytes
        if here != chunk:
            if chunk >= 0:
                pay.add_bitmap(chunk, bitmap)
            chunk, bitmap[:] = here, 0
        pay.write(blk.offset, blk.data)
        changed = _per_sector(blk.changed or b"", len(blk.data), src.sector_size, g.logical_sector)
        at = (blk.offset - chunk * g.chunk_bytes) // g.logical_sector // 8
        bitmap[at : at + len(changed)] |= changed
    if chunk >= 0:
        pay.add_bitmap(chunk, bitmap)


def _per_sector(changed: bytes, length: int, src_sector: int, sector: int) -> np.ndarray:
    """The changed-sector bitmap re-expressed in the image's logical sectors."""
    raw = np.frombuffer(changed, np.uint8)
    if src_sector == sector:
        return raw
    bits = np.unpackbits(raw, bitorder="little")[: length // src_sector].astype(bool)
    if sector > src_sector:
        bits = bits.reshape(-1, sector // src_sector).any(axis=1)
    else:
        bits = np.repeat(bits, src_sector // sector)
    return np.packbits(bits, bitorder="little")


def write(req: WriteRequest) -> None:
    parent = vhdx_parent(req.backing_layer) if req.backing is not None else None
    s = settings(req.options, parent)
    g = geometry_for(req.source.size, s)
    p = plan(g)
    locator = parent_locator(req.path, parent) if parent is not None else None
    fd = create_file(req.path)
    try:
        pay = _Payload(fd, g, p, s.subformat == "fixed")
        if req.backing is not None:
            stream_delta(pay, req.source, req.backing, req.progress)
        else:
            stream_plain(pay, req.source, req.progress)
        if g.has_parent:
            pay.end = zero_bitmaps(pay.bat, g, pay.end)
        os.ftruncate(fd, pay.end)
        # Like qemu-img convert (cache=unsafe), a whole-image write is not synced: a
        # failed convert is removed, and the headers still go last.
        write_structures(fd, p, metadata_for(s, g, locator), pay.bat, durable=False)
    finally:
        os.close(fd)
