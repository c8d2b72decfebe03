"""An NTFS volume over any BlockDevice: boot sector, MFT access, file content through runlists
(sparse, LZNT1-compressed, resident), alternate data streams, reparse points, $Secure
descriptors, and the directory tree from the bulk MFT scan.

References: Russon & Fledel "NTFS Documentation" (see ``structs``); [MS-DTYP] 2.4.6
(self-relative security descriptor) and 2.4.2 (SID) for the owner shown beside a file.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
from construct import ConstructError

from strata.blockdev.base import BlockDevice
from strata.errors import CorruptImage, InvalidInput, NotFound, TruncatedImage, Unsupported
from strata.fs.ntfs import structs as s
from strata.fs.ntfs.attributes import (
    Attribute,
    Reparse,
    parse_attribute_list,
    parse_attributes,
    parse_reparse,
    parse_standard_info,
)
from strata.fs.ntfs.index import children as index_children
from strata.fs.ntfs.index import names as index_names
from strata.fs.ntfs.lznt1 import decompress
from strata.fs.ntfs.records import (
    FIELDS,
    Columns,
    RecordProblem,
    SparseColumns,
    distinct,
    fixup_one,
    scan_window,
)
from strata.fs.ntfs.runlist import Run, decode_runlist
from strata.fs.pathorder import PADDING, SLASH, Prefixes, path_order
from strata.native import join_spans

# Bytes of MFT read, fixed up and walked per pass: a window that stays in the caches between
# its read and its scan.  The 200 000-record scan in process, medians of three runs of 11-21
# alternating rounds: 2 and 4 MiB windows 67-86 ms, 8 MiB 86-100 ms, 16 MiB 106 ms (once);
# again, 7 rounds: 1 MiB 83 ms, 2 MiB 76 ms, 4 MiB 79 ms.  The smaller of the fast two: the
# window is most of the scan's memory besides what it keeps.
WINDOW = 2 << 20
LOOKUPS_KEPT = 64  # directory indexes, and resolved paths, ``stat`` keeps
READ_CHUNK = 1 << 20
MAX_EXTENSIONS = 4096  # extension records one file may name in its attribute list


@dataclass(frozen=True)
class Geometry:
    sector_size: int
    cluster_size: int
    record_size: int
    total_clusters: int
    mft_lcn: int
    serial: int


@dataclass(frozen=True)
class NtfsEntry:
    """One name of a file (a hard-linked file has one entry per name)."""

    path: str
    name: str
    record: int
    parent: int
    is_dir: bool
    size: int
    created: int  # FILETIME (100 ns since 1601), from $STANDARD_INFORMATION
    modified: int
    mft_modified: int
    accessed: int
    attributes: int
    security_id: int
    links: int
    reparse_tag: int
    streams: tuple[tuple[str, int], ...] = ()

    @property
    def is_reparse(self) -> bool:
        return self.reparse_tag != 0

    @property
    def is_system(self) -> bool:
        return self.record < s.FIRST_USER_RECORD or self.path.startswith("/$Extend/")


_SDS_HEADER = struct.Struct(s.SDS_ENTRY_FORMAT)


def sds_entries(data: bytes) -> dict[int, tuple[int, int]]:
    """Where each security id's descriptor lies in the $SDS stream ``data`` (start, end; the
    first entry of an id wins): 16-byte aligned entries whose header names its own offset; an
    entry that does not ends its 256 KiB block, and the block after it, the mirror, is skipped.
    Headers are unpacked with ``struct`` (a system volume holds thousands of descriptors:
    a construct parse each cost ~14 us)."""
    out: dict[int, tuple[int, int]] = {}
    unpack, size, pos = _SDS_HEADER.unpack_from, len(data), 0
    while pos + s.SDS_ENTRY_SIZE <= size:
        _hash, sid, offset, length = unpack(data, pos)
        if length < s.SDS_ENTRY_SIZE or offset != pos or pos + length > size:
            pos = (pos // s.SDS_BLOCK + 2) * s.SDS_BLOCK  # the rest of this block and its mirror
            continue
        out.setdefault(sid, (pos + s.SDS_ENTRY_SIZE, pos + length))
        pos += -(-length // 16) * 16
    return out


def read_pieces(dev: BlockDevice, pieces: list[tuple[int, memoryview]]) -> None:
    """Fill each view from its device offset: in one call when the device offers a vectored
    ``readv(pieces)`` (scattered MFT records are many small reads, and a chain of layers
    costs several microseconds a call), else one ``readinto`` each."""
    readv = getattr(dev, "readv", None)
    if readv is not None:
        readv(pieces)
        return
    readinto = dev.readinto
    for offset, view in pieces:
        readinto(offset, view)


def filetime(value: int) -> dt.datetime | None:
    if value <= 0:
        return None
    try:
        micros = (value - s.FILETIME_UNIX_OFFSET) // 10
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    except OverflowError:
        return None


def attribute_names(flags: int) -> list[str]:
    return [name for bit, name in s.FILE_ATTRIBUTES.items() if flags & bit]


class Listing:
    """Every name on the volume, as columns: tables by record number (numpy), and a row per
    name: its record, its parent directory, the prefix of that directory's path and the
    name itself (UTF-8, in one buffer).  A path is made from its row's prefix and name when
    asked for, a batch of rows at a time: ``paths`` makes them all, ``order`` sorts rows by
    path without making any (200 000 paths held as strings were 15 MB of a listing)."""

    def __init__(self, cols: Columns, nrec: int) -> None:
        """The listing of a full scan's ``cols``, which it takes apart: their tables become
        its own, their rows are let go as they are read."""
        self.problems: list[RecordProblem] = list(cols.problems)
        self.links, self.size, self.reparse_tag = cols.links, cols.size, cols.reparse
        self.times, self.attributes, self.security = cols.times, cols.attributes, cols.security
        self.in_use = (cols.flags & s.RECORD_IN_USE != 0) & ~cols.base
        self.is_dir = self.in_use & (cols.flags & s.RECORD_IS_DIRECTORY != 0)
        self.size[self.is_dir] = 0  # as a directory's entry shows it
        self.streams = streams_by_owner(cols)
        self._tree(cols, nrec)

    def _tree(self, cols: Columns, nrec: int) -> None:
        fn, self._names, lengths = cols.take_names()
        self._names += bytes(PADDING)
        self._slashed = SLASH in self._names  # see strata.fs.pathorder
        self.plain = _plain(self._names, len(fn) + PADDING)
        owner, parent, starts, lengths = self._named(fn, lengths, nrec, cols.sequence)
        del fn
        dirs = self.is_dir[owner]
        up, dir_paths = self._dir_paths(
            owner[dirs].tolist(), parent[dirs].tolist(), self._decoded(starts[dirs], lengths[dirs])
        )
        slot_of = self._prefixes(up, dir_paths, nrec)
        slot = slot_of[parent]
        del slot_of
        if (slot < 0).any():  # orphans (the problems say why): not listed
            ok = slot >= 0
            owner, parent, slot, starts, lengths = (
                c[ok] for c in (owner, parent, slot, starts, lengths)
            )
        self.owner, self.parent, self.slot = owner, parent, slot
        self._starts, self._lengths = starts, lengths

    def _named(
        self, fn: np.ndarray, lengths: np.ndarray, nrec: int, sequence: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(owner, parent record, name start, name length) of each name of a record in use
        under a directory that is (DOS aliases and the root's own name aside), a slice of
        ``fn`` rows at a time; the others are problems."""
        numbers = np.int32 if nrec < 1 << 31 else np.int64
        # Filled slice by slice: the pages past the last name kept are never touched.
        out = (
            np.empty(len(fn), numbers),
            np.empty(len(fn), numbers),
            np.empty(len(fn), np.int32 if len(self._names) < 1 << 31 else np.int64),
            np.empty(len(fn), np.uint16),
        )
        kept = first = 0
        for lo in range(0, len(fn), NAMES_READ):
            rows, sizes = fn[lo : lo + NAMES_READ], lengths[lo : lo + NAMES_READ]
            ends = np.cumsum(sizes + 1, dtype=np.int64) + first
            first = int(ends[-1])
            idx = self._good_names(rows, nrec, sequence)
            values = (
                rows[idx, 0],
                rows[idx, 1] & s.REF_RECORD_MASK,
                ends[idx] - sizes[idx] - 1,
                sizes[idx],
            )
            for column, value in zip(out, values, strict=True):
                column[kept : kept + idx.size] = value
            kept += idx.size
        return tuple(column[:kept] for column in out)  # type: ignore[return-value]

    def _good_names(self, fn: np.ndarray, nrec: int, sequence: np.ndarray) -> np.ndarray:
        """The rows of ``fn`` (owner, parent reference, namespace) to list: records in use
        (DOS aliases and the root's own name aside) whose parent is a directory that is;
        a bad parent is a problem."""
        owner, pref, ns = fn[:, 0], fn[:, 1], fn[:, 2]
        keep = (owner < nrec) & self.in_use[np.clip(owner, 0, nrec - 1)]
        keep &= (ns != s.NAMESPACE_DOS) & (owner != s.ROOT_RECORD)
        parent = pref & s.REF_RECORD_MASK
        safe = np.clip(parent, 0, nrec - 1)
        good = (parent < nrec) & self.is_dir[safe] & (sequence[safe] == (pref >> 48) & 0xFFFF)
        for i in np.flatnonzero(keep & ~good).tolist():
            problem = f"parent reference {int(parent[i])} is gone"
            self.problems.append(RecordProblem(int(owner[i]), None, problem))
        return np.flatnonzero(keep & good)

    def _decoded(self, starts: np.ndarray, lengths: np.ndarray) -> list[str]:
        names = self._names
        return [
            names[a : a + n].decode("utf-8", "surrogatepass")
            for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)
        ]

    @property
    def names(self) -> list[str]:
        return [path.rpartition("/")[2] for path in self.paths]

    @property
    def paths(self) -> list[str]:
        """Every row's path, made now (not kept).  Rows that follow each other in the names
        under one prefix are a run of their text: a long run's paths are made by one
        replace of its NUL separators and one split (no Python work per name)."""
        if not len(self):
            return []
        starts = self._starts.astype(np.int64)
        ends = starts + self._lengths
        cut = (starts[1:] != ends[:-1] + 1) | (self.slot[1:] != self.slot[:-1])
        firsts = np.flatnonzero(np.concatenate(([True], cut)))
        lasts = np.append(firsts[1:], len(self))
        long = lasts - firsts >= LONG_RUN
        out: list[str] = []
        done = 0
        for lo, hi in zip(firsts[long].tolist(), lasts[long].tolist(), strict=True):
            out += self._paths_between(done, lo)
            out += self._run(lo, hi, int(starts[lo]), int(ends[hi - 1]))
            done = hi
        return out + self._paths_between(done, len(self))

    def _run(self, lo: int, hi: int, a: int, b: int) -> list[str]:
        """The paths of rows ``lo:hi``, whose names are ``_names[a:b]`` under one prefix."""
        prefix = self.prefixes[self.slot[lo]]
        text = self._names[a:b].decode("utf-8", "surrogatepass")
        paths = (prefix + text.replace("\0", "\0" + prefix)).split("\0")
        return paths if len(paths) == hi - lo else self._paths_between(lo, hi)  # a NUL in a name

    def _paths_between(self, lo: int, hi: int) -> list[str]:
        out: list[str] = []
        for at in range(lo, hi, PATH_BATCH):
            out += self.path_texts(np.arange(at, min(hi, at + PATH_BATCH)))
        return out

    def path_lines(self, rows: np.ndarray) -> bytes:
        """The paths of ``rows`` as UTF-8 (unpaired surrogates as surrogatepass writes
        them), each followed by a newline."""
        rows = np.asarray(rows, np.int64)
        return join_spans(self.path_columns(rows)) if rows.size else b""

    def path_columns(self, rows: np.ndarray) -> list[tuple[bytes | bytearray, np.ndarray]]:
        """``path_lines`` as ``join_spans`` columns: each row's prefix, name and newline."""
        rows = np.asarray(rows, np.int64)
        names = np.stack((self._starts[rows], self._lengths[rows]), axis=1).astype(np.int64)
        return [
            (self._prefix_data, self._prefix_spans[self.slot[rows]]),
            (self._names, names),
            (b"\n", np.tile(_NEWLINE_SPAN, (rows.size, 1))),
        ]

    def path_texts(self, rows: np.ndarray) -> list[str]:
        """The paths of ``rows``, decoded from ``path_lines`` in one call."""
        paths = self.path_lines(rows).decode("utf-8", "surrogatepass").split("\n")
        if len(paths) == len(rows) + 1:
            return paths[:-1]
        return [self.path(int(r)) for r in np.asarray(rows).tolist()]  # a name holds \n

    def path(self, row: int) -> str:
        a, n = int(self._starts[row]), int(self._lengths[row])
        return self.prefixes[self.slot[row]] + self._decoded(np.array([a]), np.array([n]))[0]

    def order(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` sorted by path, rows of equal paths in the order given."""
        rows = np.asarray(rows).astype(np.int32 if len(self) < 1 << 31 else np.int64)
        if self._slashed:  # a damaged name: sort the paths themselves
            paths = self.paths
            return np.array(sorted(rows.tolist(), key=paths.__getitem__), rows.dtype)
        columns = (self.slot, self._starts, self._lengths)
        return rows[path_order(self._tree_of, self._names, *columns, rows)]

    def below(self, path: str) -> np.ndarray:
        """Whether each row's path is below ``path``."""
        prefix = f"{path}/"
        if self._slashed:  # a damaged name: look at the paths themselves
            return np.array([p.startswith(prefix) for p in self.paths], bool)
        return np.array([p.startswith(prefix) for p in self.prefixes], bool)[self.slot]

    def named(self, path: str) -> np.ndarray:
        """Whether each row's path is ``path``."""
        if self._slashed:
            return np.array([p == path for p in self.paths], bool)
        out = np.zeros(len(self), bool)
        head, _, name = path.rpartition("/")
        if f"{head}/" not in self.prefixes:
            return out
        beside = np.flatnonzero(self.slot == self.prefixes.index(f"{head}/"))
        names = self._decoded(self._starts[beside], self._lengths[beside])
        out[beside[np.array([n == name for n in names], bool)]] = True
        return out

    def _prefixes(
        self, up: dict[int, tuple[int, str]], dir_paths: dict[int, str | None], nrec: int
    ) -> np.ndarray:
        """Each distinct directory path's prefix (``prefixes``, and their tree), and the
        prefix of each directory record (-1: none)."""
        slot_of = np.full(nrec, -1, np.int32)
        index = {"/": 0}
        parent, depth, names = [0], [0], [""]
        for d, path in dir_paths.items():  # parents before children
            if path is None:
                continue
            at = index.setdefault(f"{path}/", len(index))
            if at == len(parent):
                above, name = up[d]
                parent.append(int(slot_of[above]))
                depth.append(depth[parent[-1]] + 1)
                names.append(name)
            slot_of[d] = at
        self.prefixes = list(index)
        self._tree_of = Prefixes(np.array(parent, np.int32), np.array(depth, np.int32), names)
        encoded = [p.encode("utf-8", "surrogatepass") for p in self.prefixes]
        self._prefix_data = b"".join(encoded)
        self._prefix_spans = _spans([len(e) for e in encoded])
        return slot_of

    def _dir_paths(
        self, owners: list[int], parents: list[int], names: list[str]
    ) -> tuple[dict[int, tuple[int, str]], dict[int, str | None]]:
        up: dict[int, tuple[int, str]] = {}
        for o, p, n in zip(owners, parents, names, strict=True):
            up.setdefault(o, (p, n))
        paths: dict[int, str | None] = {s.ROOT_RECORD: ""}
        for start in up:
            chain: list[int] = []
            seen: set[int] = set()
            d = start
            while d not in paths:
                if d in seen or d not in up:
                    problem = "parent reference cycle" if d in seen else "parent directory gone"
                    self.problems.append(RecordProblem(d, None, problem))
                    for c in chain:
                        paths[c] = None
                    break
                seen.add(d)
                chain.append(d)
                d = up[d][0]
            else:
                for c in reversed(chain):
                    prefix = paths[up[c][0]]
                    paths[c] = None if prefix is None else f"{prefix}/{up[c][1]}"
        return up, paths

    def __len__(self) -> int:
        return len(self.owner)

    def entry(self, i: int, path: str | None = None) -> NtfsEntry:
        o = int(self.owner[i])
        return _entry(
            self.path(i) if path is None else path,
            o,
            int(self.parent[i]),
            is_dir=bool(self.is_dir[o]),
            size=int(self.size[o]),
            si=[*self.times[o].tolist(), int(self.attributes[o]), int(self.security[o])],
            links=int(self.links[o]),
            reparse_tag=int(self.reparse_tag[o]),
            streams=self.streams.get(o, ()),
        )

    def entries(self) -> Iterator[NtfsEntry]:
        for lo in range(0, len(self), PATH_BATCH):
            rows = np.arange(lo, min(len(self), lo + PATH_BATCH))
            for i, path in zip(rows.tolist(), self.path_texts(rows), strict=True):
                yield self.entry(i, path)


def _plain(names: bytes | bytearray, nuls: int) -> bool:
    """Whether UTF-8 ``names`` (each followed by NUL, ``nuls`` NULs in all) are ASCII and
    hold no control character: their paths are shown as they are."""
    codes = np.frombuffer(names, np.uint8)
    controls = np.count_nonzero(codes < 0x20) - nuls
    return names.isascii() and controls == 0 and not (codes == 0x7F).any()


PATH_BATCH = 1 << 16  # rows whose paths are made at once
# Names of one directory, one after another, made into paths as one text: a run costs
# ~1.2 us and 0.04 us a name, a name in a batch of rows ~0.17 us (200 000-file volume).
LONG_RUN = 16
NAMES_READ = 1 << 14  # scanned names checked at once (their temporaries stay under 1 MB)
_NEWLINE_SPAN = np.array([0, 1], np.int64)


def _spans(lengths: list[int]) -> np.ndarray:
    """(start, length) rows of pieces of ``lengths`` bytes laid one after another."""
    size = np.array(lengths, np.int64)
    return np.stack((np.cumsum(size) - size, size), axis=1)


class NtfsVolume:
    """An NTFS file system on ``dev`` (typically a partition's RangeDevice), read-only."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        self.path = str(getattr(dev, "path", None) or "<device>")
        self.base = int(getattr(dev, "start", 0))  # report disk offsets for partitions
        self.geometry = self._parse_boot()
        self._dtype = s.record_dtype(self.geometry.record_size)
        self.record_dtype = self._dtype  # the FILE record header as a numpy dtype
        self.mft_runs, self.mft_size = self._load_mft()
        self.record_count = self.mft_size // self.geometry.record_size
        self._listing: Listing | None = None
        # What ``stat`` found, least recent first (see ``_kept``)
        self._directories: dict[int, _Directory] = {}
        self._resolved: dict[str, _Found] = {}
        self._sds: tuple[bytes, dict[int, tuple[int, int]]] | None = None  # bytes, id: span
        self._sds_values: dict[int, bytes] = {}
        self._kept: dict[int, bytes] = {}  # fixed-up records handed over by ``keep_records``

    # ------------------------------------------------------------------ basics

    def corrupt(
        self, structure: str, problem: str, field: str = "-", offset: int | None = None
    ) -> CorruptImage:
        at = None if offset is None else self.base + offset
        return CorruptImage(
            path=self.path, structure=structure, problem=problem, field=field, offset=at
        )

    def _read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.dev.size:
            raise TruncatedImage(
                path=self.path,
                structure="NTFS volume",
                problem=f"read of {length} bytes at {offset:#x} ends past the device",
                offset=self.base + offset,
            )
        buf = bytearray(length)
        self.dev.readinto(offset, buf)
        return bytes(buf)

    def read_view(self, offset: int, length: int) -> memoryview:
        """``length`` bytes of the volume at ``offset`` (TruncatedImage past the device),
        in a fresh buffer (not zeroed first: the read fills it)."""
        if offset < 0 or offset + length > self.dev.size:
            self._read(offset, length)  # raises the error naming the range
        buf = np.empty(length, np.uint8)
        self.dev.readinto(offset, buf)
        return memoryview(buf)

    def _parse_boot(self) -> Geometry:
        sector = self._read(0, min(512, self.dev.size))
        try:
            b = s.BOOT_SECTOR.parse(sector)
        except ConstructError as e:
            raise self.corrupt("NTFS boot sector", "not an NTFS boot sector", "oem_id", 3) from e
        bps, spc = b.bytes_per_sector, b.sectors_per_cluster
        if bps not in (512, 1024, 2048, 4096):
            raise self.corrupt(
                "NTFS boot sector", f"bytes per sector {bps}", "bytes_per_sector", 11
            )
        spc = 1 << (256 - spc) if spc > 0x80 else spc
        if spc == 0 or spc & (spc - 1) or bps * spc > 2 << 20:
            raise self.corrupt("NTFS boot sector", f"sectors per cluster {spc}", "spc", 13)
        cluster = bps * spc
        cpr = b.clusters_per_mft_record
        record = 1 << -cpr if cpr < 0 else cpr * cluster
        if not 512 <= record <= 65536 or record & (record - 1):
            raise self.corrupt("NTFS boot sector", f"MFT record size {record}", "cpr", 0x40)
        total = b.total_sectors * bps // cluster
        if b.total_sectors * bps > self.dev.size:
            raise TruncatedImage(
                path=self.path,
                structure="NTFS boot sector",
                problem=f"volume of {b.total_sectors} sectors is larger than the device",
                field="total_sectors",
                offset=self.base + 0x28,
            )
        if not 0 < b.mft_lcn < total:
            raise self.corrupt("NTFS boot sector", f"$MFT at LCN {b.mft_lcn}", "mft_lcn", 0x30)
        return Geometry(bps, cluster, record, total, b.mft_lcn, b.serial)

    # ------------------------------------------------------------------ records

    def _fixup(self, raw: bytes, number: int, offset: int) -> bytes:
        fixed, code = fixup_one(raw)
        if code:
            problem = "record never written" if code == 1 else _PROBLEMS[code]
            raise self.corrupt(f"MFT record {number}", problem, "magic/usa", offset)
        return fixed

    def _load_mft(self) -> tuple[list[Run], int]:
        g = self.geometry
        offset = g.mft_lcn * g.cluster_size
        rec = self._fixup(self._read(offset, g.record_size), 0, offset)
        attrs = parse_attributes(rec, 0, self.path, self.base + offset)
        data = [a for a in attrs if a.type == s.DATA and a.name == "" and a.non_resident]
        if not data:
            raise self.corrupt("MFT record 0", "$MFT has no non-resident $DATA", "$DATA", offset)
        runs = self._runs(data[0], offset)
        if any(a.type == s.ATTRIBUTE_LIST for a in attrs):
            # a fragmented $MFT: its other extents live in records the first extent maps
            self.mft_runs, self.record_count = runs, data[0].data_size // g.record_size
            extents = [a for a in self._all_attributes(0, attrs) if a.type == s.DATA]
            runs = self._joined_runs([a for a in extents if not a.name], offset)
        size = data[0].data_size
        mapped = (runs[-1].vcn + runs[-1].clusters) * g.cluster_size if runs else 0
        if size > mapped:
            raise self.corrupt(
                "MFT record 0", f"$MFT of {size} bytes maps {mapped}", "runs", offset
            )
        if size < g.record_size * s.FIRST_USER_RECORD:
            raise self.corrupt("MFT record 0", f"$MFT of {size} bytes", "data_size", offset)
        return runs, size

    def _runs(self, attr: Attribute, where: int) -> list[Run]:
        def bad(problem: str, field: str, at: int) -> CorruptImage:
            return self.corrupt(f"MFT record {attr.record} runlist", problem, field, where)

        runs = decode_runlist(attr.runlist, attr.start_vcn, self.geometry.total_clusters, bad)
        if runs and runs[-1].vcn + runs[-1].clusters != attr.last_vcn + 1:
            raise bad("runs do not end at the attribute's last VCN", "last_vcn", 0)
        return runs

    def _joined_runs(self, extents: list[Attribute], where: int) -> list[Run]:
        runs: list[Run] = []
        for a in sorted(extents, key=lambda a: a.start_vcn):
            expected = runs[-1].vcn + runs[-1].clusters if runs else 0
            if a.start_vcn != expected:
                raise self.corrupt(
                    f"MFT record {a.record}",
                    f"extent starts at VCN {a.start_vcn}, not {expected}",
                    "start_vcn",
                    where,
                )
            runs += self._runs(a, where)
        return runs

    def record_offset(self, number: int) -> int:
        """Volume byte offset of MFT record ``number`` (its first byte)."""
        return self._vcn_offset(self.mft_runs, number * self.geometry.record_size)

    def _vcn_offset(self, runs: list[Run], byte: int) -> int:
        cs = self.geometry.cluster_size
        vcn = byte // cs
        for r in runs:
            if r.vcn <= vcn < r.vcn + r.clusters and r.lcn is not None:
                return (r.lcn + vcn - r.vcn) * cs + byte % cs
        raise self.corrupt("$MFT", f"byte {byte} of $MFT is not mapped", "runlist")

    def _read_runs(self, runs: list[Run], byte: int, length: int) -> bytes:
        out = bytearray()
        cs = self.geometry.cluster_size
        while len(out) < length:
            at = byte + len(out)
            take = min(length - len(out), cs - at % cs)
            out += self._read(self._vcn_offset(runs, at), take)
        return bytes(out)

    def keep_records(self, numbers: list[int], records: list[bytes]) -> None:
        """Remember fixed-up records a caller already read in bulk, so that ``record`` (and
        the attribute parser over it) does not read them again (the volume is read-only)."""
        self._kept.update(zip(numbers, records, strict=True))

    def record(self, number: int) -> bytes:
        """MFT record ``number``, fixed up."""
        kept = self._kept.get(number)
        if kept is not None:
            return kept
        if not 0 <= number < self.record_count:
            raise NotFound(what=f"MFT record {number} (the MFT holds {self.record_count})")
        rs = self.geometry.record_size
        raw = self._read_runs(self.mft_runs, number * rs, rs)
        return self._fixup(raw, number, self.record_offset(number))

    def attributes(self, number: int) -> list[Attribute]:
        """Every attribute of a file, extension records (via $ATTRIBUTE_LIST) included."""
        rec = self.record(number)
        offset = self.record_offset(number)
        if not int.from_bytes(rec[22:24], "little") & s.RECORD_IN_USE:
            raise NotFound(what=f"MFT record {number} (not in use)")
        attrs = parse_attributes(rec, number, self.path, self.base + offset)
        return self._all_attributes(number, attrs)

    def _all_attributes(self, number: int, attrs: list[Attribute]) -> list[Attribute]:
        lists = [a for a in attrs if a.type == s.ATTRIBUTE_LIST]
        if not lists:
            return attrs
        offset = self.record_offset(number)

        def bad(problem: str, field: str, at: int) -> CorruptImage:
            return self.corrupt(f"MFT record {number} $ATTRIBUTE_LIST", problem, field, offset)

        value = self.read_attribute(lists[0])
        others = {r for *_, r in parse_attribute_list(value, bad) if r != number}
        if len(others) > MAX_EXTENSIONS:
            raise bad(f"{len(others)} extension records", "entries", 0)
        out = list(attrs)
        for ext in sorted(others):
            rec = self.record(ext)
            if int.from_bytes(rec[32:38], "little") != number:
                raise bad(f"record {ext} does not belong to record {number}", "base_ref", 0)
            out += parse_attributes(rec, ext, self.path, self.base + self.record_offset(ext))
        return out

    # ------------------------------------------------------------------ content

    def read_attribute(self, attr: Attribute) -> bytes:
        return b"".join(self.iter_attribute([attr]))

    def iter_attribute(self, extents: list[Attribute], chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """The content of one attribute (all its extents), streamed in pieces."""
        first = min(extents, key=lambda a: a.start_vcn)
        if not first.non_resident:
            yield first.value
            return
        where = self.record_offset(first.record)
        runs = self._joined_runs(extents, where)
        mapped = (runs[-1].vcn + runs[-1].clusters) * self.geometry.cluster_size if runs else 0
        if mapped < first.data_size:
            raise self.corrupt(
                f"MFT record {first.record} $DATA",
                f"runs map {mapped} bytes of {first.data_size}",
                "runlist",
                where,
            )
        if first.compressed and first.compression_unit:
            yield from self._iter_compressed(first, runs)
        else:
            yield from self._iter_plain(runs, first.data_size, first.initialized_size, chunk)

    def iter_runs(self, runs: list[Run], size: int, init: int, chunk: int) -> Iterator[bytes]:
        """The content of an uncompressed non-resident attribute from its decoded runs."""
        return self._iter_plain(runs, size, init, chunk)

    def _iter_plain(self, runs: list[Run], size: int, init: int, chunk: int) -> Iterator[bytes]:
        cs = self.geometry.cluster_size
        for r in runs:
            start, end = r.vcn * cs, min((r.vcn + r.clusters) * cs, size)
            pos = start
            while pos < end:
                n = min(chunk, end - pos)
                if r.lcn is None or pos >= init:
                    yield bytes(n)
                else:
                    data = self._read(r.lcn * cs + (pos - start), n)
                    if pos + n > init:
                        data = data[: init - pos] + bytes(pos + n - init)
                    yield data
                pos += n
        mapped = (runs[-1].vcn + runs[-1].clusters) * cs if runs else 0
        if mapped < size:
            yield bytes(size - mapped)

    def _iter_compressed(self, attr: Attribute, runs: list[Run]) -> Iterator[bytes]:
        cs = self.geometry.cluster_size
        unit = 1 << attr.compression_unit
        mapped = runs[-1].vcn + runs[-1].clusters if runs else 0
        needed = -(-attr.data_size // (cs * unit)) * unit
        lcns = np.full(min(mapped, needed), -1, np.int64)  # clusters past the runs read as holes
        for r in runs:
            if r.lcn is not None and r.vcn < lcns.size:
                n = min(r.clusters, lcns.size - r.vcn)
                lcns[r.vcn : r.vcn + n] = np.arange(r.lcn, r.lcn + n)
        left = attr.data_size
        where = f"{self.path}: MFT record {attr.record}"
        for u in range(0, needed, unit):
            if left <= 0:
                return
            part = lcns[u : u + unit]
            real = part[part >= 0]
            if real.size == unit:
                data = b"".join(self._clusters(real))
            elif real.size == 0:
                data = bytes(unit * cs)
            else:
                packed = b"".join(self._clusters(real))
                data = decompress(packed, unit * cs, where).ljust(unit * cs, b"\0")
            yield data[:left]
            left -= len(data)

    def _clusters(self, lcns: np.ndarray) -> Iterator[bytes]:
        cs = self.geometry.cluster_size
        breaks = np.flatnonzero(np.diff(lcns) != 1) + 1
        for piece in np.split(lcns, breaks):
            yield self._read(int(piece[0]) * cs, piece.size * cs)

    def stream(self, number: int, name: str = "") -> tuple[list[Attribute], int]:
        """The $DATA extents of stream ``name`` of a file, and its size."""
        extents = [a for a in self.attributes(number) if a.type == s.DATA and a.name == name]
        if not extents:
            what = f"stream {name!r} of MFT record {number}" if name else f"data of record {number}"
            raise NotFound(what=what)
        first = min(extents, key=lambda a: a.start_vcn)
        if first.flags & s.ATTR_FLAG_ENCRYPTED:
            raise Unsupported(what=f"reading EFS-encrypted file (MFT record {number})")
        return extents, first.size

    def iter_stream(self, number: int, name: str = "", chunk: int = READ_CHUNK) -> Iterator[bytes]:
        extents, _ = self.stream(number, name)
        yield from self.iter_attribute(extents, chunk)

    def reparse(self, number: int) -> Reparse | None:
        found = [a for a in self.attributes(number) if a.type == s.REPARSE_POINT]
        return parse_reparse(self.read_attribute(found[0])) if found else None

    # ------------------------------------------------------------------ security

    def security_descriptor(self, security_id: int) -> bytes | None:
        """The self-relative security descriptor $Secure:$SDS holds for ``security_id``
        ($SDS is read and its entry headers walked once, on the first call)."""
        if self._sds is None:
            self._sds = self._load_sds()
        found = self._sds_values.get(security_id)
        if found is None:
            data, where = self._sds
            span = where.get(security_id)
            if span is None:
                return None
            found = self._sds_values[security_id] = data[span[0] : span[1]]
        return found

    def security_ids(self) -> list[int]:
        """Every security id $Secure:$SDS holds a descriptor for."""
        if self._sds is None:
            self._sds = self._load_sds()
        return sorted(self._sds[1])

    def _load_sds(self) -> tuple[bytes, dict[int, tuple[int, int]]]:
        try:
            extents, _ = self.stream(s.SECURE_RECORD, "$SDS")
        except NotFound:
            return b"", {}
        data = b"".join(self.iter_attribute(extents))
        return data, sds_entries(data)

    def security(self, number: int) -> bytes | None:
        """A file's security descriptor: its own $SECURITY_DESCRIPTOR, else $Secure's by id."""
        attrs = self.attributes(number)
        own = [a for a in attrs if a.type == s.SECURITY_DESCRIPTOR]
        if own:
            return self.read_attribute(own[0])
        info = [a for a in attrs if a.type == s.STANDARD_INFORMATION]
        sid = parse_standard_info(info[0].value).get("security_id", 0) if info else 0
        return self.security_descriptor(sid) if sid else None

    def owner_sid(self, number: int) -> str | None:
        sd = self.security(number)
        if sd is None or len(sd) < 20:
            return None
        return sid_text(sd, int.from_bytes(sd[4:8], "little"))

    # ------------------------------------------------------------------ tree

    def scan(self) -> Listing:
        """Every file name on the volume (the bulk MFT scan), cached."""
        if self._listing is None:
            self._listing = Listing(self._scan_columns(), self.record_count)
        return self._listing

    def _scan_columns(self) -> Columns:
        rs = self.geometry.record_size
        per = max(1, WINDOW // rs)
        cols = Columns(self.record_count)
        buf = np.empty(min(per, self.record_count) * rs, np.uint8)
        for first in range(0, self.record_count, per):
            n = min(per, self.record_count - first)
            view = buf[: n * rs]
            offsets = self._read_window(first * rs, view)
            scan_window(view.reshape(n, rs), first, self._dtype, cols, offsets)
        return cols

    def _read_window(self, byte: int, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` with $MFT bytes from ``byte``; return each record's disk offset."""
        cs, rs = self.geometry.cluster_size, self.geometry.record_size
        mv = memoryview(out)
        done = 0
        offsets = np.zeros(len(out) // rs, np.int64)
        for r in self.mft_runs:
            lo, hi = r.vcn * cs, (r.vcn + r.clusters) * cs
            a, b = max(lo, byte + done), min(hi, byte + len(out))
            if a >= b or a != byte + done:
                continue
            n = b - a
            if r.lcn is None:
                mv[done : done + n] = bytes(n)
            else:
                src = r.lcn * cs + (a - lo)
                if src + n > self.dev.size:
                    raise self.corrupt("$MFT", "runs past the device", "runlist")
                self.dev.readinto(src, mv[done : done + n])
                first_rec = -(-done // rs)
                rec_starts = np.arange(first_rec * rs, done + n, rs)
                offsets[first_rec : first_rec + rec_starts.size] = (
                    self.base + src + (rec_starts - done)
                )
            done += n
        if done < len(out):
            raise self.corrupt("$MFT", f"runs end {len(out) - done} bytes early", "runlist")
        return offsets

    def read_records(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (not fixed up) MFT records ``numbers`` (sorted, unique, in range) as rows of one
        buffer, and each one's disk offset; records adjacent on disk are read together."""
        rs = self.geometry.record_size
        nums = np.asarray(numbers, np.int64)
        buf = np.empty((nums.size, rs), np.uint8)
        if nums.size == 0:
            return buf, np.zeros(0, np.int64)
        where = self.record_offsets(nums)
        if where is None:  # records straddling clusters, sparse or past the device: slow path
            return buf, self._read_groups(nums, buf)
        breaks = np.flatnonzero(np.diff(where) != rs) + 1
        firsts = np.concatenate(([0], breaks)).tolist()
        lasts = np.concatenate((breaks, [nums.size])).tolist()
        view = memoryview(buf.reshape(-1))
        pieces = [
            (at, view[a * rs : b * rs])
            for a, b, at in zip(firsts, lasts, where[firsts].tolist(), strict=True)
        ]
        read_pieces(self.dev, pieces)
        return buf, self.base + where

    def record_offsets(self, numbers: np.ndarray) -> np.ndarray | None:
        """Volume byte offsets of MFT records ``numbers``, or None unless every one lies whole
        inside one mapped cluster run on the device."""
        cs, rs = self.geometry.cluster_size, self.geometry.record_size
        if cs < rs:
            return None
        byte = np.asarray(numbers, np.int64) * rs
        starts = np.array([r.vcn * cs for r in self.mft_runs], np.int64)
        ends = np.array([(r.vcn + r.clusters) * cs for r in self.mft_runs], np.int64)
        lcn = np.array([-1 if r.lcn is None else r.lcn * cs for r in self.mft_runs], np.int64)
        k = np.searchsorted(starts, byte, side="right") - 1
        if starts.size == 0 or (k < 0).any():
            return None
        inside = (byte + rs <= ends[k]) & (lcn[k] >= 0)
        where = lcn[k] + byte - starts[k]
        if not inside.all() or int(where.max()) + rs > self.dev.size:
            return None
        return where

    def _read_groups(self, nums: np.ndarray, buf: np.ndarray) -> np.ndarray:
        offsets = np.zeros(nums.size, np.int64)
        breaks = np.flatnonzero(np.diff(nums) != 1) + 1
        at = 0
        for group in np.split(nums, breaks):
            n = group.size
            view = buf[at : at + n].reshape(-1)
            offsets[at : at + n] = self._read_window(
                int(group[0]) * self.geometry.record_size, view
            )
            at += n
        return offsets

    def scan_records(
        self, numbers: np.ndarray, cols: Columns, with_lists: list[int] | None = None
    ) -> None:
        """Parse only MFT records ``numbers`` (sorted, unique, in range) into ``cols`` (a
        ``Columns(record_count)``), a window of records per bulk pass; ``with_lists`` gets
        the numbers of those that hold an $ATTRIBUTE_LIST."""
        nums = np.asarray(numbers, np.int64)
        per = max(1, WINDOW // self.geometry.record_size)
        for at in range(0, nums.size, per):
            part = nums[at : at + per]
            raw, offsets = self.read_records(part)
            want = with_lists is not None
            attrs = scan_window(raw, 0, self._dtype, cols, offsets, part, want_attributes=want)
            if attrs is not None and with_lists is not None:
                rows = distinct(attrs.row[attrs.type == s.ATTRIBUTE_LIST])
                with_lists.extend(part[rows].tolist())

    def data_runs(self, extents: list[Attribute]) -> list[Run]:
        """The runs of a non-resident attribute (all its extents, in VCN order)."""
        first = min(extents, key=lambda a: a.start_vcn)
        return self._joined_runs(extents, self.record_offset(first.record))

    def stat(self, path: str) -> NtfsEntry:
        """The entry at ``path`` ("/" is the root), found through the directory indexes from
        the root: only the records and index blocks on the way are read, never the whole MFT.

        Each component matches a name exactly, else case-insensitively (``str.casefold``).  An
        index entry whose record does not carry that name under that directory (a stale
        entry) is passed over, so a path resolves here exactly when the full listing has it.
        """
        return self._resolve(path).entry

    def _resolve(self, path: str) -> _Found:
        # Kept: callers look the same path up again (the gate: exists, then stat, then read).
        return _kept(self._resolved, normalize(path), lambda: self._walk(path))

    def _walk(self, path: str) -> _Found:
        here = self._found(s.ROOT_RECORD, "", s.ROOT_RECORD)
        for name in normalize(path).split("/")[1:]:
            found = self._child(here, name) if here is not None and here.entry.is_dir else None
            if found is None:
                raise NotFound(what=f"{path} on the NTFS volume in {self.path}")
            here = found
        if here is None:
            raise NotFound(what=f"the root directory of the NTFS volume in {self.path}")
        return here

    def root(self) -> NtfsEntry:
        return self.stat("/")

    def _child(self, d: _Found, name: str) -> _Found | None:
        """The entry named ``name`` in directory ``d``."""
        alike = self._directory(d.entry.record).by_folded.get(name.casefold(), [])
        exact = [(ref, n) for ref, n in alike if n == name]
        parent_ref = d.entry.record | d.sequence << 48
        for ref, n in exact + [(ref, n) for ref, n in alike if n != name]:
            found = self._found(ref & s.REF_RECORD_MASK, f"{d.entry.path}/{n}", d.entry.record)
            if found is not None and (parent_ref, n) in found.names:
                return found
        return None

    def _found(self, record: int, path: str, parent: int) -> _Found | None:
        """``record`` as the entry at ``path``, parsed as the full scan parses it (with its
        extension records); None unless it is a base record in use."""
        if not 0 <= record < self.record_count:
            return None
        cols = self._parsed(np.array([record], np.int64))
        row = cols.get(np.array([record]))[0]
        flags, sequence, base = (int(row[FIELDS[k]]) for k in ("flags", "sequence", "base"))
        if not flags & s.RECORD_IN_USE or base != 0:
            return None
        entry = _entries_of(cols, [(record, path, parent)])[0]
        return _Found(entry, sequence, _names_by_owner(cols).get(record, set()))

    def directory(self, path: str) -> tuple[list[NtfsEntry], list[RecordProblem]]:
        """The entries of directory ``path`` from its $I30 index, each name taken only when
        its record's own $FILE_NAME carries it under this directory (as ``stat`` does), in
        the index's node order, and the problems of the records read: no volume scan."""
        d = self._resolve(path)
        if not d.entry.is_dir:
            raise InvalidInput(f"{path} is not a directory")
        children, problems = self._children(d)
        return [c.entry for c in children], problems

    def subtree(
        self, path: str, limit: int | None = None
    ) -> tuple[list[NtfsEntry], list[RecordProblem]] | None:
        """Every entry below directory ``path``, directory by directory through the indexes
        as ``directory`` reads one, and the problems of the records read; None once more
        than ``limit`` entries are found (the bulk scan is then the cheaper way)."""
        top = self._resolve(path)
        if not top.entry.is_dir:
            raise InvalidInput(f"{path} is not a directory")
        todo, seen = [top], {top.entry.record}
        entries: list[NtfsEntry] = []
        problems: list[RecordProblem] = []
        while todo:
            children, met = self._children(todo.pop())
            problems += met
            entries += (c.entry for c in children)
            if limit is not None and len(entries) > limit:
                return None
            for c in children:
                if c.entry.is_dir and c.entry.record not in seen:  # a looping tree: once
                    seen.add(c.entry.record)
                    todo.append(c)
        return entries, problems

    def _children(self, d: _Found) -> tuple[list[_Found], list[RecordProblem]]:
        listed = dict.fromkeys(
            (ref & s.REF_RECORD_MASK, n)
            for ref, ns, n in self.directory_names(d.entry.record)
            if ns != s.NAMESPACE_DOS
        )
        records = distinct(np.fromiter((r for r, _n in listed), np.int64, len(listed)))
        records = records[(records < self.record_count) & (records != s.ROOT_RECORD)]
        cols = self._parsed(records)
        live = cols.get(records)
        in_use = (live[:, FIELDS["flags"]] & s.RECORD_IN_USE != 0) & (live[:, FIELDS["base"]] == 0)
        sequence = dict(zip(records.tolist(), live[:, FIELDS["sequence"]].tolist(), strict=True))
        alive = set(records[in_use].tolist())
        names = _names_by_owner(cols)
        parent_ref = d.entry.record | d.sequence << 48
        chosen = [
            (r, f"{d.entry.path}/{n}", d.entry.record)
            for r, n in listed
            if r in alive and (parent_ref, n) in names.get(r, ())
        ]
        found = [
            _Found(entry, sequence[entry.record], set()) for entry in _entries_of(cols, chosen)
        ]
        return found, cols.problems

    def _parsed(self, records: np.ndarray) -> SparseColumns:
        """Records ``records`` (sorted, unique, in range) parsed as the full scan parses them,
        with the extension records their $ATTRIBUTE_LISTs name."""
        cols = SparseColumns(self.record_count)
        listed: list[int] = []
        self.scan_records(records, cols, with_lists=listed)
        extensions = {e for r in listed for e in self._extension_records(r).tolist()}
        extensions -= set(records.tolist())
        if extensions:
            self.scan_records(np.array(sorted(extensions), np.int64), cols)
        return cols

    def _extension_records(self, record: int) -> np.ndarray:
        """The records an $ATTRIBUTE_LIST of ``record`` names besides itself (sorted)."""
        rec = self.record(record)
        attrs = parse_attributes(rec, record, self.path, self.base + self.record_offset(record))
        others = {a.record for a in self._all_attributes(record, attrs)} - {record}
        return np.array(sorted(o for o in others if o < self.record_count), np.int64)

    def directory_names(self, number: int) -> list[tuple[int, int, str]]:
        """(file reference, namespace, name) of every entry of directory ``number``'s $I30
        index, read from the index itself (no volume scan); the last few directories' are
        kept, as lookups share their parents."""
        return self._directory(number).names

    def _directory(self, number: int) -> _Directory:
        return _kept(
            self._directories, number, lambda: _Directory(self._index(number, index_names))
        )

    def directory_children(self, number: int) -> list[int]:
        """File references (record number | sequence << 48) of every name in directory
        ``number``'s $I30 index, read from the index itself (no volume scan)."""
        return self._index(number, index_children)

    def _index(self, number: int, walk: Callable[..., _T]) -> _T:
        attrs = self.attributes(number)
        offset = self.record_offset(number)

        def bad(problem: str, field: str, at: int) -> CorruptImage:
            return self.corrupt(f"MFT record {number} $I30 index", problem, field, offset)

        def read(extents: list[Attribute]) -> bytes:
            return b"".join(self.iter_attribute(extents))

        return walk(attrs, self.geometry.cluster_size, read, bad)

    def listdir(self, path: str = "/") -> list[NtfsEntry]:
        return self.directory(path)[0]

    def walk(self) -> Iterator[NtfsEntry]:
        """Every name on the volume, in MFT order (parents are not necessarily first)."""
        return self.scan().entries()

    def iter_file(self, path: str | NtfsEntry, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        entry = path if isinstance(path, NtfsEntry) else None
        stream = ""
        if entry is None:
            assert isinstance(path, str)
            path, stream = split_stream(path)
            entry = self.stat(path)
        if entry.is_dir and not stream:
            raise InvalidInput(f"{entry.path or '/'} is a directory")
        yield from self.iter_stream(entry.record, stream, chunk)

    def read_file(self, path: str | NtfsEntry) -> bytes:
        return b"".join(self.iter_file(path))


_PROBLEMS = {
    2: "bad record magic (not FILE)",
    3: "invalid update sequence array",
    4: "update sequence mismatch (torn or corrupt sector)",
}


_T = TypeVar("_T")
_K = TypeVar("_K")


def _kept(cache: dict[_K, _T], key: _K, make: Callable[[], _T]) -> _T:
    """``cache[key]``, made on a miss; ``cache`` keeps the LOOKUPS_KEPT most recently used."""
    value = cache.pop(key, None)
    if value is None:
        value = make()
        if len(cache) >= LOOKUPS_KEPT:
            del cache[next(iter(cache))]
    cache[key] = value
    return value


class _Directory:
    """A directory's $I30 names, and its long names (DOS aliases aside) by casefolded name."""

    def __init__(self, names: list[tuple[int, int, str]]) -> None:
        self.names = names
        self.by_folded: dict[str, list[tuple[int, str]]] = {}
        for ref, namespace, name in names:
            if namespace != s.NAMESPACE_DOS:
                self.by_folded.setdefault(name.casefold(), []).append((ref, name))


class _Found(NamedTuple):
    """A record ``stat`` reached: its entry, sequence number and (parent reference, name) of
    each $FILE_NAME it carries (DOS aliases aside)."""

    entry: NtfsEntry
    sequence: int
    names: set[tuple[int, str]]


def _entries_of(cols: Columns, chosen: list[tuple[int, str, int]]) -> list[NtfsEntry]:
    """``Listing.entry`` for each (record, path, parent directory) of records parsed into
    ``cols``."""
    rows = cols.get(np.array([r for r, _p, _d in chosen], np.int64)).tolist()
    streams = streams_by_owner(cols)
    at = {k: FIELDS[k] for k in ("flags", "size", "links", "reparse")}
    si = FIELDS["si"]
    out = []
    for (record, path, parent), row in zip(chosen, rows, strict=True):
        root = record == s.ROOT_RECORD
        out.append(
            _entry(
                path,
                record,
                parent,
                is_dir=bool(row[at["flags"]] & s.RECORD_IS_DIRECTORY),
                size=row[at["size"]],
                si=row[si],
                links=row[at["links"]],
                reparse_tag=0 if root else row[at["reparse"]],
                streams=() if root else streams.get(record, ()),
            )
        )
    return out


def _entry(
    path: str,
    record: int,
    parent: int,
    *,
    is_dir: bool,
    size: int,
    si: list[int],
    links: int,
    reparse_tag: int,
    streams: Iterable[tuple[str, int]],
) -> NtfsEntry:
    """The entry of one name; ``si`` holds the $STANDARD_INFORMATION values in
    ``NtfsEntry``'s order (four times, attributes, security id)."""
    return NtfsEntry(
        path,
        path.rpartition("/")[2],
        record,
        parent,
        is_dir,
        0 if is_dir else size,
        *si,
        links=links,
        reparse_tag=reparse_tag,
        streams=tuple(streams),
    )


def streams_by_owner(cols: Columns) -> dict[int, list[tuple[str, int]]]:
    """(name, size) of the named $DATA streams parsed into ``cols``, by owner record, in
    name order as NTFS keeps attributes (case-insensitive first): the scan finds the streams
    of a file's extension records interleaved with other records' attributes."""
    out: dict[int, list[tuple[str, int]]] = {}
    for owner, name, size in cols.ads:
        out.setdefault(owner, []).append((name, size))
    for named in out.values():
        if len(named) > 1:
            named.sort(key=lambda stream: (stream[0].upper(), stream[0]))
    return out


def _names_by_owner(cols: Columns) -> dict[int, set[tuple[int, str]]]:
    """(parent reference, name) of the $FILE_NAMEs parsed into ``cols`` (DOS aliases aside),
    by the record that owns them."""
    out: dict[int, set[tuple[int, str]]] = {}
    rows = np.concatenate(cols.fn)[:, :2].tolist() if cols.fn else []
    for (owner, pref), name in zip(rows, cols.names, strict=True):
        out.setdefault(owner, set()).add((pref, name))
    return out


def normalize(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "".join(f"/{p}" for p in parts)


def split_stream(path: str) -> tuple[str, str]:
    """``dir/file:stream`` → (``dir/file``, ``stream``); the last component only."""
    head, _, last = path.rpartition("/")
    if ":" in last:
        name, _, stream = last.partition(":")
        stream = stream.removesuffix(":$DATA")
        return f"{head}/{name}", stream
    return path, ""


def sid_text(sd: bytes, offset: int) -> str | None:
    if offset == 0 or offset + 8 > len(sd):
        return None
    count = sd[offset + 1]
    if offset + 8 + 4 * count > len(sd):
        return None
    authority = int.from_bytes(sd[offset + 2 : offset + 8], "big")
    subs = [
        int.from_bytes(sd[offset + 8 + 4 * i : offset + 12 + 4 * i], "little") for i in range(count)
    ]
    return "-".join(["S", str(sd[offset]), str(authority), *map(str, subs)])


INTERIX_SYMLINK = b"IntxLNK\x01"  # ntfs-3g's default symlink: a system file holding the target


def link_of(vol: NtfsVolume, entry: NtfsEntry) -> tuple[str, str | None] | None:
    """(kind, target) when ``entry`` is a symlink or junction (reparse point or Interix)."""
    if entry.reparse_tag:
        rp = vol.reparse(entry.record)
        return (rp.kind, rp.target) if rp is not None else ("reparse", None)
    if not entry.is_dir and entry.attributes & 0x4 and 8 < entry.size <= 4096:
        data = vol.read_file(entry)
        if data.startswith(INTERIX_SYMLINK) and len(data) % 2 == 0:
            return "symlink", data[len(INTERIX_SYMLINK) :].decode("utf-16-le", "replace")
    return None
