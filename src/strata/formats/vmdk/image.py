"""A VMDK layer: descriptor plus extents, as one BlockDevice.

References: VMware Virtual Disk Format 5.0 §"The Descriptor File",
§"Hosted Sparse Extents"; qemu block/vmdk.c for what readers accept (a
renamed monolithic file still opens; parentCID must equal the parent's CID).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from strata.blockdev.base import BaseDevice, BlockDevice, Extent
from strata.blockdev.chain import ChainDevice, ParentRef, check_allowed
from strata.blockdev.copy import read_base_padded
from strata.blockdev.rawfile import file_size, open_file, pread_exact, pwrite_all
from strata.errors import CorruptImage, IntegrityError, StrataError, SystemIOError, Unsupported
from strata.formats.vmdk import structs as s
from strata.formats.vmdk.descriptor import (
    MAX_DESCRIPTOR,
    NO_PARENT,
    Descriptor,
    ExtentLine,
    new_cid,
    parse,
)
from strata.formats.vmdk.flat import FlatExtent, ZeroExtent
from strata.formats.vmdk.sparse import SparseExtent

FD_SLACK = 64  # open files left for the rest of the process: parents, outputs, the store


class ExtentReader(Protocol):
    size: int

    def extents(self, offset: int, length: int) -> Iterator[Extent]: ...

    def readinto(self, offset: int, view: memoryview) -> None: ...


class VmdkDevice(BaseDevice):
    format_name = "vmdk"
    concurrent_reads = True  # preads of descriptors opened once; caches filled idempotently

    def __init__(self, path: str, writable: bool = False) -> None:
        self.path = path
        self.writable = writable
        self._fds: dict[str, int] = {}
        self._cid_fresh = False
        self.parent_ref: ParentRef | None = None
        self._chain: ChainDevice | None = None
        try:
            self._open()
        except BaseException:
            self._close_fds()
            raise

    # -- opening -----------------------------------------------------------------
    def _open(self) -> None:
        fd = self._fd(self.path)
        head = bytearray(s.HEADER_SIZE)
        got = pread_exact(fd, 0, memoryview(head))
        self.embedded: SparseExtent | None = None
        if bytes(head[:4]) == s.MAGIC:
            self._open_monolithic(fd)
        else:
            self._open_descriptor_file(fd, bytes(head[:got]))
        self._layout()
        if self.descriptor.parent_hint is not None:
            self.parent_ref = ParentRef(
                candidates=[self.descriptor.parent_hint],
                verify=self._verify_parent,
                description=f"VMDK parent {self.descriptor.parent_hint!r}",
                formats=("vmdk",),
            )

    def _fd(self, path: str) -> int:
        key = os.path.realpath(path)
        if key not in self._fds:
            self._fds[key] = open_file(path, self.writable)
        return self._fds[key]

    def _open_monolithic(self, fd: int) -> None:
        extent = SparseExtent(self.path, fd, self.writable)
        self.embedded = extent
        h = extent.first
        if h.descriptor_offset == 0:
            # A bare extent file (e.g. one "-s001" piece of a split disk).
            line = ExtentLine("RW", extent.header.capacity, "SPARSE", os.path.basename(self.path))
            self.descriptor = Descriptor("monolithicSparse", [line], cid=NO_PARENT)
            self._readers: list[ExtentReader] = [extent]
            return
        self.descriptor = self._read_embedded(fd, h.descriptor_offset, h.descriptor_size)
        lines = self.descriptor.extents
        if len(lines) != 1 or lines[0].kind != "SPARSE":
            raise Unsupported(
                what=f"{self.path}: embedded descriptor with {len(lines)} extents "
                f"({', '.join(e.kind for e in lines)})"
            )
        if lines[0].sectors > extent.header.capacity:
            raise CorruptImage(
                path=self.path,
                structure="descriptor",
                field="extent sectors",
                problem=f"{lines[0].sectors} sectors, header capacity {extent.header.capacity}",
                offset=h.descriptor_offset * s.SECTOR,
            )
        # qemu and VMware open a renamed monolithic file: the extent is this file.
        self._readers = [extent]

    def _read_embedded(self, fd: int, sector: int, sectors: int) -> Descriptor:
        start, length = sector * s.SECTOR, min(sectors * s.SECTOR, MAX_DESCRIPTOR)
        if length == 0 or start + length > file_size(fd):
            raise CorruptImage(
                path=self.path,
                structure="sparse header",
                field="descriptorOffset",
                problem=f"descriptor of {sectors} sectors at sector {sector} lies outside the file",
                offset=0x1C,
            )
        buf = bytearray(length)
        pread_exact(fd, start, memoryview(buf))
        self._desc_where = (start, length)
        return parse(bytes(buf), self.path, start)

    def _open_descriptor_file(self, fd: int, head: bytes) -> None:
        size = file_size(fd)
        if size > MAX_DESCRIPTOR or not head.lstrip().startswith(b"#"):
            raise CorruptImage(
                path=self.path,
                structure="sparse header",
                field="magic",
                problem=f"bad magic {head[:4]!r}, and not a descriptor file",
                offset=0,
            )
        buf = bytearray(size)
        pread_exact(fd, 0, memoryview(buf))
        self._desc_where = (0, size)
        self.descriptor = parse(bytes(buf), self.path, 0)
        self._make_room_for(sum(line.kind != "ZERO" for line in self.descriptor.extents))
        self._readers = [self._open_extent(line) for line in self.descriptor.extents]

    def _make_room_for(self, files: int) -> None:
        """Raise the soft limit on open files so that ``files`` more fit (a 2 TiB
        twoGbMaxExtent disk has 1 024 extent files, the usual soft limit), or refuse before
        opening any when the hard limit cannot take them."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if files + FD_SLACK <= soft or soft == resource.RLIM_INFINITY:
            return
        want = soft + files if hard == resource.RLIM_INFINITY else min(hard, soft + files)
        if want < files + FD_SLACK:
            raise SystemIOError(
                what=f"{self.path}: its {files} extent files need more open files than the "
                f"limit allows ({hard}, ulimit -Hn)"
            )
        with contextlib.suppress(OSError, ValueError):  # kept as it was: opening then says why
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    def _open_extent(self, line: ExtentLine) -> ExtentReader:
        if line.access == "NOACCESS":
            raise Unsupported(what=f"{self.path}: NOACCESS extent {line.filename!r}")
        if line.kind == "ZERO":
            return ZeroExtent(line.sectors * s.SECTOR)
        if line.kind in ("VMFSSPARSE", "VMFSRDM", "VMFSRAW"):
            raise Unsupported(what=f"{self.path}: {line.kind} extents")
        path = self._extent_path(line.filename or "")
        fd = self._fd(path)
        if line.kind == "SPARSE":
            extent = SparseExtent(path, fd, self.writable)
            if line.sectors > extent.header.capacity:
                raise CorruptImage(
                    path=self.path,
                    structure="descriptor",
                    field=f"extent {line.filename}",
                    problem=f"{line.sectors} sectors, extent capacity {extent.header.capacity}",
                )
            return extent
        return FlatExtent(path, fd, line.offset * s.SECTOR, line.sectors * s.SECTOR, file_size(fd))

    def _extent_path(self, name: str) -> str:
        here = os.path.dirname(os.path.abspath(self.path))
        path = name if os.path.isabs(name) else os.path.join(here, name)
        # Not PathOutsideAllowed's own message: --allow-dir allows parents, not extents.
        refusal = f"{path}: a VMDK extent must lie in its descriptor's directory {here}"
        return check_allowed(path, [here], refusal)

    def _layout(self) -> None:
        sizes = [line.sectors * s.SECTOR for line in self.descriptor.extents]
        self._starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
        self._size = int(self._starts[-1])
        if self._size == 0:
            raise CorruptImage(
                path=self.path, structure="descriptor", field="extents", problem="size is zero"
            )

    # -- identity -----------------------------------------------------------------
    @property
    def cid(self) -> int:
        return self.descriptor.cid

    def _verify_parent(self, parent: BlockDevice) -> None:
        cid = getattr(parent, "cid", None)
        if getattr(parent, "format_name", None) != "vmdk" or cid is None:
            raise IntegrityError(
                what=f"{self.path}: parent {getattr(parent, 'path', parent)} is not a VMDK"
            )
        if cid != self.descriptor.parent_cid:
            raise IntegrityError(
                what=f"{self.path}: parentCID {self.descriptor.parent_cid:08x} does not match "
                f"CID {cid:08x} of parent {getattr(parent, 'path', '?')} "
                "(the parent changed after this child was made)"
            )

    # -- I/O -----------------------------------------------------------------------
    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(reader index, extent-relative offset, length) covering the range."""
        index = int(np.searchsorted(self._starts, offset, side="right")) - 1
        pos, end = offset, offset + length
        while pos < end:
            start, stop = int(self._starts[index]), int(self._starts[index + 1])
            take = min(end, stop) - pos
            if take > 0:
                yield index, pos - start, take
            pos += max(take, 0)
            index += 1

    def _readinto(self, offset: int, view: memoryview) -> None:
        pos = 0
        for index, rel, take in self._pieces(offset, len(view)):
            self._readers[index].readinto(rel, view[pos : pos + take])
            pos += take

    def _extents(self, offset: int, length: int) -> Iterator[Extent]:
        for index, rel, take in self._pieces(offset, length):
            start = int(self._starts[index])
            for ext in self._readers[index].extents(rel, take):
                yield Extent(ext.offset + start, ext.length, ext.state, 0, ext.file_offset)

    def _write(self, offset: int, view: memoryview) -> None:
        if not self._cid_fresh:
            self._new_cid()
        pos = 0
        for index, rel, take in self._pieces(offset, len(view)):
            reader = self._readers[index]
            write = getattr(reader, "write", None)
            if write is None:
                raise Unsupported(what=f"{self.path}: writing into a ZERO extent")
            write(rel, view[pos : pos + take], self._parent_reader(int(self._starts[index])))
            pos += take

    def _parent_reader(self, start: int) -> Any:
        if self.parent is None:
            return None
        if self._chain is None or self._chain.top is not self.parent:
            self._chain = ChainDevice(self.parent)
        chain = self._chain

        def read(offset: int, view: memoryview) -> None:
            read_base_padded(chain, start + offset, view)

        return read

    def _new_cid(self) -> None:
        """Like VMware and qemu: the first write gives the content a new CID."""
        self.descriptor.cid = new_cid()
        text = self.descriptor.encode()
        start, length = self._desc_where
        fd = self._fds[os.path.realpath(self.path)]
        if self.embedded is not None:
            if len(text) > length:
                raise Unsupported(what=f"{self.path}: descriptor outgrew its {length} bytes")
            text = text.ljust(length, b"\0")
        pwrite_all(fd, start, memoryview(text))
        if self.embedded is None:
            os.ftruncate(fd, len(text))
        self._cid_fresh = True

    # -- misc -----------------------------------------------------------------------
    def flush(self) -> None:
        if self.writable:
            for fd in self._fds.values():
                os.fsync(fd)

    @property
    def files(self) -> list[str]:
        paths = [self.path]
        for reader in self._readers:
            p = getattr(reader, "path", None)
            if p and os.path.realpath(p) not in {os.path.realpath(x) for x in paths}:
                paths.append(p)
        return paths

    def info(self) -> dict[str, Any]:
        d = self.descriptor
        facts: dict[str, Any] = {
            "subformat": d.create_type,
            "cid": f"{d.cid:08x}",
            "parent-cid": f"{d.parent_cid:08x}",
            "adapter-type": d.ddb.get("ddb.adapterType"),
            "extents": [e.render() for e in d.extents],
        }
        if d.parent_hint is not None:
            facts["parent-file-name-hint"] = d.parent_hint
        sparse = next((r for r in self._readers if isinstance(r, SparseExtent)), None)
        if sparse is not None:
            facts.update(sparse.info())
        return facts

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def close(self) -> None:
        self._close_fds()
        super().close()


def open_vmdk(path: str, writable: bool = False) -> VmdkDevice:
    try:
        return VmdkDevice(path, writable)
    except StrataError:
        raise
    except (ValueError, OverflowError, MemoryError) as e:
        raise CorruptImage(path=path, structure="image", problem=str(e)) from e
