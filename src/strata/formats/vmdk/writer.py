"""Writing VMDK: every subformat, children of a VMDK parent, empty images to write into.

References: VMware Virtual Disk Format 5.0 §"Hosted Sparse Extents" (layout:
header, descriptor, redundant GD and GTs, GD and GTs, grains), §"The Descriptor
File"; qemu block/vmdk.c for the layout its reader and ``check`` expect (20
descriptor sectors, 2 GiB split extents, ``-s001``/``-f001``/``-flat`` names).

Writers lay out first (every table position is fixed by the capacity), then
stream grains in disk order; the tables, both copies, are written last.
Like ``qemu-img convert`` (cache=unsafe), writers leave the data in the page
cache without fsync; a caller that needs durability syncs the files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from strata.blockdev.base import BlockDevice
from strata.blockdev.copy import Block, iter_blocks
from strata.blockdev.rawfile import create_file, pwrite_all, pwrite_new
from strata.errors import InvalidInput
from strata.formats.options import FormatOption, bool_option
from strata.formats.registry import CreateRequest, WriteRequest
from strata.formats.sizes import check_disk_size
from strata.formats.vmdk import structs as s
from strata.formats.vmdk.descriptor import (
    ADAPTER_TYPES,
    CREATE_TYPES,
    NO_PARENT,
    Descriptor,
    ExtentLine,
    standard_ddb,
)
from strata.formats.vmdk.image import VmdkDevice
from strata.formats.vmdk.stream import StreamPlan, StreamWriter
from strata.native import is_zero

SPLIT_SECTORS = 4 << 20  # 2 GiB, as qemu splits twoGbMaxExtent* disks

OPTIONS = (
    FormatOption("subformat", "VMDK layout", "monolithicSparse", choices=CREATE_TYPES),
    FormatOption("adapter_type", "ddb.adapterType", "ide", choices=ADAPTER_TYPES),
    FormatOption("hwversion", "ddb.virtualHWVersion", 4, int),
    FormatOption("compression_level", "deflate level for streamOptimized (0-9)", 1, int),
    # Off by default: libvmdk (20260714) reads a zeroed-grain entry as sector 1.
    bool_option("zeroed_grain", "mark zero grains of a child with zeroed-grain entries", False),
)


@dataclass(frozen=True)
class SparseLayout:
    """Where each structure of a hosted sparse extent lives (in sectors)."""

    capacity: int
    descriptor_sectors: int
    grain_size: int = s.GRAIN_SECTORS

    @property
    def num_grains(self) -> int:
        return -(-self.capacity // self.grain_size)

    @property
    def num_gts(self) -> int:
        return -(-self.num_grains // s.GTES_PER_GT)

    @property
    def gd_sectors(self) -> int:
        return -(-self.num_gts * 4 // s.SECTOR)

    @property
    def gts_sectors(self) -> int:
        return self.num_gts * s.GTES_PER_GT * 4 // s.SECTOR

    @property
    def rgd_offset(self) -> int:
        return 1 + self.descriptor_sectors

    @property
    def gd_offset(self) -> int:
        return self.rgd_offset + self.gd_sectors + self.gts_sectors

    @property
    def overhead(self) -> int:
        end = self.gd_offset + self.gd_sectors + self.gts_sectors
        return -(-end // self.grain_size) * self.grain_size

    def header(self, zeroed: bool) -> bytes:
        flags = s.FLAG_NEWLINE_TEST | s.FLAG_REDUNDANT_GT | (s.FLAG_ZEROED_GRAIN if zeroed else 0)
        return s.build_header(
            version=2 if zeroed else 1,
            flags=flags,
            capacity=self.capacity,
            grain_size=self.grain_size,
            descriptor_offset=1 if self.descriptor_sectors else 0,
            descriptor_size=self.descriptor_sectors,
            num_gtes_per_gt=s.GTES_PER_GT,
            rgd_offset=self.rgd_offset,
            gd_offset=self.gd_offset,
            overhead=self.overhead,
            compress_algorithm=s.COMPRESSION_NONE,
        )

    def tables(self, gte: np.ndarray, table_start: int) -> tuple[bytes, bytes]:
        """A grain directory pointing at tables from ``table_start``, and those tables."""
        gd = table_start + self.gd_sectors + np.arange(self.num_gts, dtype=np.int64) * 4
        gd_bytes = gd.astype(s.GTE_DTYPE).tobytes().ljust(self.gd_sectors * s.SECTOR, b"\0")
        padded = np.zeros(self.num_gts * s.GTES_PER_GT, s.GTE_DTYPE)
        padded[: len(gte)] = gte
        return gd_bytes, padded.tobytes()


# A sparse extent's header, descriptor, both table copies and every grain must lie below
# sector 2**32 of its file (s.MAX_EXTENT_SECTORS; qemu's VMDK_EXTENT_MAX_SECTORS: it allocates
# no grain past it; here an entry would wrap).  Tables grow with the capacity, so those of a
# 2**32-sector extent bound them: a disk held in one sparse extent (monolithicSparse,
# streamOptimized) is at most 2 TiB less some 257 MiB.  A streamOptimized file can still
# outgrow that when its data does not compress (markers and padding): StreamWriter refuses.
ONE_EXTENT_MAX = (
    s.MAX_EXTENT_SECTORS - SparseLayout(s.MAX_EXTENT_SECTORS, s.DESCRIPTOR_SECTORS).overhead
) * s.SECTOR
# The split and flat layouts have no such table, and take the 2 TB qemu's vmdk.c gives as the
# most VMDK4 supports (VMware's hosted limit).  Both stay under the 64 TiB strata's reader
# takes (sparse.MAX_CAPACITY), past which even the tables alone took minutes to write.
MAX_SIZE = 2 << 40


def check_size(size: int, subformat: str) -> None:
    if subformat in ("monolithicSparse", "streamOptimized"):
        limit = "2 TiB less its grain tables"
        check_disk_size(size, f"a {subformat} VMDK", ONE_EXTENT_MAX, limit, s.SECTOR)
    else:
        check_disk_size(size, f"a {subformat} VMDK", MAX_SIZE, "2 TiB", s.SECTOR)


class ExtentSink(Protocol):
    size: int

    def put(self, offset: int, data: memoryview) -> None: ...

    def zero(self, offset: int, length: int) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class _FileSink:
    """An extent file being written; ``abort`` closes it (the caller removes the file)."""

    fd: int

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SparseSink(_FileSink):
    """One hosted sparse extent file, written grain after grain."""

    def __init__(self, path: str, capacity: int, descriptor: bytes | None, zeroed: bool) -> None:
        desc_sectors = s.DESCRIPTOR_SECTORS if descriptor is not None else 0
        if descriptor is not None and len(descriptor) > desc_sectors * s.SECTOR:
            raise InvalidInput(f"descriptor of {len(descriptor)} bytes does not fit")
        self.layout = SparseLayout(capacity, desc_sectors)
        self.size = capacity * s.SECTOR
        self.zeroed = zeroed
        self.fd = create_file(path)
        self.gte = np.zeros(self.layout.num_grains, s.GTE_DTYPE)
        head = self.layout.header(zeroed) + (descriptor or b"").ljust(
            desc_sectors * s.SECTOR, b"\0"
        )
        pwrite_all(self.fd, 0, memoryview(head))
        self.cursor = self.layout.overhead * s.SECTOR

    def put(self, offset: int, data: memoryview) -> None:
        gb = self.layout.grain_size * s.SECTOR
        count = -(-len(data) // gb)
        pwrite_new(self.fd, self.cursor, data)
        if len(data) % gb:
            pwrite_all(self.fd, self.cursor + len(data), memoryview(bytes(gb - len(data) % gb)))
        first = offset // gb
        sector = self.cursor // s.SECTOR
        self.gte[first : first + count] = sector + np.arange(count) * self.layout.grain_size
        self.cursor += count * gb

    def zero(self, offset: int, length: int) -> None:
        gb = self.layout.grain_size * s.SECTOR
        if self.zeroed:
            self.gte[offset // gb : -(-(offset + length) // gb)] = s.GTE_ZEROED
        else:
            self.put(offset, memoryview(bytes(length)))

    def finish(self) -> None:
        lay = self.layout
        for gd_sector in (lay.rgd_offset, lay.gd_offset):
            gd, gts = lay.tables(self.gte, gd_sector)
            pwrite_all(self.fd, gd_sector * s.SECTOR, memoryview(gd + gts))
        os.ftruncate(self.fd, max(self.cursor, lay.overhead * s.SECTOR))
        os.close(self.fd)
        self.fd = -1


class FlatSink(_FileSink):
    """A flat extent file: the disk's bytes, holes where it is zero."""

    def __init__(self, path: str, size: int) -> None:
        self.size = size
        self.fd = create_file(path)
        os.ftruncate(self.fd, size)

    def put(self, offset: int, data: memoryview) -> None:
        pwrite_new(self.fd, offset, data)

    def zero(self, offset: int, length: int) -> None:
        raise AssertionError("flat extents have no parent, so nothing is written as zero")

    def finish(self) -> None:
        os.close(self.fd)
        self.fd = -1


# -- naming and descriptors -------------------------------------------------------------
def extent_names(path: str, subformat: str, sectors: int) -> list[tuple[str, int]]:
    """(file path, sectors) of each extent file, named as qemu and VMware name them."""
    stem = path[:-5] if path.lower().endswith(".vmdk") else path
    if subformat in ("monolithicSparse", "streamOptimized"):
        return [(path, sectors)]
    if subformat == "monolithicFlat":
        return [(f"{stem}-flat.vmdk", sectors)]
    letter = "s" if subformat == "twoGbMaxExtentSparse" else "f"
    pieces = range(0, sectors, SPLIT_SECTORS)
    return [
        (f"{stem}-{letter}{n:03d}.vmdk", min(SPLIT_SECTORS, sectors - lo))
        for n, lo in enumerate(pieces, start=1)
    ]


def make_descriptor(
    path: str,
    subformat: str,
    files: list[tuple[str, int]],
    options: dict[str, Any],
    parent: BlockDevice | None,
) -> Descriptor:
    kind = "FLAT" if subformat.endswith("Flat") else "SPARSE"
    lines = [ExtentLine("RW", n, kind, os.path.basename(p), 0) for p, n in files]
    sectors = sum(n for _, n in files)
    desc = Descriptor(
        subformat,
        lines,
        ddb=standard_ddb(sectors, options["adapter_type"], options["hwversion"]),
    )
    if parent is not None:
        desc.parent_cid, desc.parent_hint = parent_identity(path, parent)
    return desc


def parent_identity(child: str, parent: BlockDevice) -> tuple[int, str]:
    cid = getattr(parent, "cid", None)
    ppath = getattr(parent, "path", None)
    if getattr(parent, "format_name", None) != "vmdk" or cid is None or ppath is None:
        raise InvalidInput("the parent of a VMDK child must be a VMDK image")
    if cid == NO_PARENT:
        raise InvalidInput(
            f"{ppath} is a bare extent file without a descriptor; use its descriptor"
        )
    here = os.path.dirname(os.path.abspath(child))
    return cid, os.path.relpath(os.path.abspath(ppath), here)


# -- the writer ---------------------------------------------------------------------------------
class Output:
    """The files of one VMDK being written; removes the ones it created if it fails."""

    def __init__(
        self, path: str, options: dict[str, Any], size: int, parent: BlockDevice | None
    ) -> None:
        self.path = path
        self.subformat = options["subformat"]
        self.sectors = -(-size // s.SECTOR)
        self.files = extent_names(path, self.subformat, self.sectors)
        self.descriptor = make_descriptor(path, self.subformat, self.files, options, parent)
        # Only a child needs zeroed-grain entries; plain disks keep the version-1 header.
        self.zeroed = bool(options["zeroed_grain"]) and parent is not None
        self.created: list[str] = []
        self.sinks: list[ExtentSink] = []
        self.starts = np.cumsum([0] + [n * s.SECTOR for _, n in self.files], dtype=np.int64)

    def _create(self, path: str) -> None:
        if not os.path.exists(path):
            self.created.append(path)

    def open_sinks(self) -> None:
        embedded = self.subformat == "monolithicSparse"
        for file_path, sectors in self.files:
            self._create(file_path)
            if self.subformat.endswith("Flat"):
                self.sinks.append(FlatSink(file_path, sectors * s.SECTOR))
            else:
                desc = self.descriptor.encode() if embedded else None
                self.sinks.append(SparseSink(file_path, sectors, desc, self.zeroed))
        if self.files[0][0] != self.path:
            self._create(self.path)
            with os.fdopen(create_file(self.path), "wb") as f:
                f.write(self.descriptor.encode())

    def pieces(self, offset: int, length: int) -> Iterator[tuple[ExtentSink, int, int, int]]:
        index = int(np.searchsorted(self.starts, offset, side="right")) - 1
        pos, end = offset, offset + length
        while pos < end:
            stop = int(self.starts[index + 1])
            take = min(end, stop) - pos
            yield self.sinks[index], pos - int(self.starts[index]), pos - offset, take
            pos += take
            index += 1

    def put(self, blk: Block, is_zero: bool) -> None:
        for sink, rel, at, take in self.pieces(blk.offset, len(blk.data)):
            if is_zero:
                sink.zero(rel, take)
            else:
                sink.put(rel, blk.data[at : at + take])

    def finish(self) -> None:
        for sink in self.sinks:
            sink.finish()

    def fail(self) -> None:
        for sink in self.sinks:
            with contextlib.suppress(OSError):
                sink.abort()
        for path in self.created:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _level(options: Mapping[str, Any]) -> int:
    level = int(options["compression_level"])
    if not 0 <= level <= 9:
        raise InvalidInput(f"compression_level must be 0-9, not {level}")
    return level


def check_options(options: Mapping[str, Any], size: int, child: bool) -> None:
    _level(options)
    check_size(size, options["subformat"])
    if child and options["subformat"] not in ("monolithicSparse", "twoGbMaxExtentSparse"):
        raise InvalidInput(
            "a VMDK child must be monolithicSparse or twoGbMaxExtentSparse, "
            f"not {options['subformat']}"
        )


def write(req: WriteRequest) -> None:
    options = dict(req.options)
    check_options(options, req.source.size, req.backing is not None)
    if options["subformat"] == "streamOptimized":
        write_stream(req, options)
        return
    out = Output(req.path, options, req.source.size, req.backing_layer)
    try:
        out.open_sinks()
        gb = s.GRAIN_SECTORS * s.SECTOR
        blocks = iter_blocks(req.source, gb, base=req.backing, progress=req.progress)
        for blk in blocks:
            out.put(blk, req.backing is not None and is_zero(blk.data))
        out.finish()
    except BaseException:
        out.fail()
        raise


def write_stream(req: WriteRequest, options: dict[str, Any]) -> None:
    sectors = -(-req.source.size // s.SECTOR)
    desc = make_descriptor(req.path, "streamOptimized", [(req.path, sectors)], options, None)
    plan = StreamPlan(sectors, desc.encode(), level=_level(options))
    existed = os.path.exists(req.path)
    try:
        with os.fdopen(create_file(req.path), "wb", buffering=1 << 20) as f:
            writer = StreamWriter(f, plan)
            gb = plan.grain_bytes
            writer.write_blocks(iter_blocks(req.source, gb, progress=req.progress))
            writer.finish()
            f.flush()
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                os.unlink(req.path)
        raise


def create(req: CreateRequest) -> BlockDevice:
    options = dict(req.options)
    check_options(options, req.size, req.parent is not None)
    out = Output(req.path, options, req.size, req.parent)
    try:
        if out.subformat == "streamOptimized":
            with os.fdopen(create_file(req.path), "wb") as f:
                out.created.append(req.path)
                StreamWriter(f, StreamPlan(out.sectors, out.descriptor.encode())).finish()
            return VmdkDevice(req.path, writable=False)
        out.open_sinks()
        out.finish()
        return VmdkDevice(req.path, writable=True)
    except BaseException:
        out.fail()
        raise
