"""FAT12/16/32 reader over any BlockDevice: boot sector, FAT table, directories, files.

References: Microsoft fatgen103 (see ``structs``); sections cited beside the checks.

The FAT is read once into a numpy array.  Chains are walked run by run (a precomputed
"end of contiguous run" array), so the Python steps follow the fragments, not the clusters, and
a chain longer than the cluster count is a loop.  ``walk`` claims every cluster it reaches in
a bitmap, so cross-linked chains and directory cycles are reported, never followed forever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from construct import ConstructError

from strata.blockdev.base import BlockDevice
from strata.errors import CorruptImage, InvalidInput, NotFound, TruncatedImage
from strata.fs.fat import structs as s

CLUSTER_LO_OFFSET = 26  # fatgen103 6: DIR_FstClusLO
DIR_CACHE = 256  # parsed directories kept; a walk reads each one once anyway


@dataclass(frozen=True)
class Geometry:
    """Where everything lies, in bytes from the start of the volume."""

    fat_type: int
    sector_size: int
    cluster_size: int
    reserved_sectors: int
    num_fats: int
    fat_bytes: int  # one FAT copy
    root_entries: int
    total_sectors: int
    cluster_count: int
    root_cluster: int  # 0 for the fixed FAT12/16 root directory
    fsinfo_sector: int
    backup_boot_sector: int
    active_fat: int | None  # FAT32 with mirroring disabled: the one FAT in use
    volume_id: int
    label: str

    @property
    def fat_offset(self) -> int:
        return self.reserved_sectors * self.sector_size

    @property
    def root_offset(self) -> int:
        return self.fat_offset + self.num_fats * self.fat_bytes

    @property
    def root_bytes(self) -> int:
        size = self.root_entries * s.DIRENT_SIZE
        return -(-size // self.sector_size) * self.sector_size

    @property
    def data_offset(self) -> int:
        return self.root_offset + self.root_bytes

    @property
    def volume_bytes(self) -> int:
        return self.total_sectors * self.sector_size

    def cluster_offset(self, cluster: int) -> int:
        return self.data_offset + (cluster - 2) * self.cluster_size


@dataclass(frozen=True)
class FatEntry:
    """One directory entry (the root directory is a synthetic entry named ``""``)."""

    name: str
    short_name: str
    attributes: int
    size: int
    first_cluster: int
    created: dt.datetime | None
    modified: dt.datetime | None
    accessed: dt.date | None
    slot: int = -1  # index of the short entry in its directory
    lfn_slots: int = 0  # long-name entries just before it
    raw_short: bytes = b""
    offset: int | None = None  # volume offset of the short entry

    @property
    def cluster_field(self) -> int | None:
        """Volume offset of the entry's first-cluster field (for error reports)."""
        return None if self.offset is None else self.offset + CLUSTER_LO_OFFSET

    @property
    def is_dir(self) -> bool:
        return bool(self.attributes & s.ATTR_DIRECTORY)


@dataclass
class Directory:
    """A directory's storage: the fixed root region or a cluster chain."""

    first_cluster: int
    spans: list[tuple[int, int]] = field(default_factory=list)  # (volume offset, bytes)

    @property
    def size(self) -> int:
        return sum(n for _, n in self.spans)

    def slot_offset(self, slot: int) -> int:
        at = slot * s.DIRENT_SIZE
        for offset, length in self.spans:
            if at < length:
                return offset + at
            at -= length
        raise IndexError(slot)


def fat_date(date: int, time: int = 0, tenth: int = 0) -> dt.datetime | None:
    day, month, year = date & 0x1F, (date >> 5) & 0x0F, 1980 + (date >> 9)
    sec, minute, hour = (time & 0x1F) * 2, (time >> 5) & 0x3F, time >> 11
    sec += tenth // 100
    try:
        return dt.datetime(year, month, day, hour, minute, sec, (tenth % 100) * 10000)
    except ValueError:
        return None  # 0/0/1980 means "not recorded"; garbage is not worth failing a listing


class FatVolume:
    """A FAT file system on ``dev`` (typically a partition's RangeDevice), read-only."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        self.path = str(getattr(dev, "path", None) or "<device>")
        self.base = int(getattr(dev, "start", 0))  # report disk offsets for partitions
        self.geometry = parse_boot_sector(self._read(0, 512 if dev.size >= 512 else dev.size), self)
        self._check_fits()
        self.fat = self._load_fat()
        self._dir_cache: dict[int, list[FatEntry]] = {}
        self._dir_index: dict[int, dict[str, FatEntry]] = {}
        self._dir_spans: dict[int, Directory] = {}

    # ------------------------------------------------------------------ basics

    def corrupt(
        self, structure: str, problem: str, field: str = "-", offset: int | None = None
    ) -> CorruptImage:
        return CorruptImage(
            path=self.path,
            structure=structure,
            problem=problem,
            field=field,
            offset=None if offset is None else self.base + offset,
        )

    def _read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.dev.readinto(offset, buf)
        return bytes(buf)

    def _check_fits(self) -> None:
        g = self.geometry
        end = g.data_offset + g.cluster_count * g.cluster_size
        if end > self.dev.size or g.volume_bytes > self.dev.size:
            raise TruncatedImage(
                path=self.path,
                structure="FAT boot sector",
                problem=f"the volume needs {max(end, g.volume_bytes)} bytes, "
                f"the device has {self.dev.size}",
                field="total_sectors",
                offset=self.base + 19,
            )

    # ------------------------------------------------------------------ the FAT

    @property
    def fat_copy(self) -> int:
        return self.geometry.active_fat or 0

    def _load_fat(self) -> np.ndarray:
        """Only the entries the clusters need are read, whatever size the BPB claims."""
        g = self.geometry
        need = g.cluster_count + 2
        need_bytes = -(-need * g.fat_type // 8)
        if g.fat_bytes < need_bytes:
            raise self.corrupt(
                "FAT",
                f"a FAT of {g.fat_bytes} bytes is shorter than the {need} entries "
                f"the volume's {g.cluster_count} clusters need",
                "fat_size",
                22 if g.fat_type != 32 else 36,
            )
        raw = self._read(g.fat_offset + self.fat_copy * g.fat_bytes, need_bytes)
        return decode_fat(raw, g.fat_type)[:need].copy()

    def _value_problem(self, value: int) -> str | None:
        g = self.geometry
        if value >= s.END_OF_CHAIN_MIN[g.fat_type]:
            return None
        if value == 0:
            return "points to a free cluster"
        if value == s.BAD_CLUSTER[g.fat_type]:
            return "runs into a cluster marked bad"
        if value < 2 or value >= g.cluster_count + 2:
            return f"points to cluster {value}, past the volume's {g.cluster_count} clusters"
        return None

    def run_end(self, cluster: int) -> int:
        """The last cluster of the contiguous run (``fat[c] == c + 1``) starting at
        ``cluster``, found by comparing growing windows of the table at once."""
        end, window, top = cluster, 64, len(self.fat)
        while end < top - 1:
            seg = self.fat[end : end + window]
            breaks = np.flatnonzero(seg != np.arange(end + 1, end + 1 + len(seg), dtype=np.uint32))
            if len(breaks):
                return end + int(breaks[0])
            end, window = end + len(seg), window * 2
        return top - 1

    def check_cluster(self, cluster: int, what: str, at: int | None = None) -> None:
        if not 2 <= cluster < self.geometry.cluster_count + 2:
            raise self.corrupt(
                what,
                f"first cluster {cluster} lies outside the volume's clusters "
                f"2-{self.geometry.cluster_count + 1}",
                "first_cluster",
                at,
            )

    def runs(
        self, first: int, what: str = "cluster chain", at: int | None = None
    ) -> list[tuple[int, int]]:
        """The chain from ``first`` as (cluster, count) runs; bad chains are CorruptImage."""
        if first == 0:
            return []
        self.check_cluster(first, what, at)
        found: list[tuple[int, int]] = []
        starts: set[int] = set()
        total, cur, limit = 0, first, self.geometry.cluster_count
        while True:
            end = self.run_end(cur)
            found.append((cur, end - cur + 1))
            total += end - cur + 1
            if total > limit or cur in starts:
                raise self.corrupt(
                    what,
                    f"the chain from cluster {first} loops back to cluster {cur}",
                    "next_cluster",
                    self.fat_entry_offset(end),
                )
            nxt = int(self.fat[end])
            problem = self._value_problem(nxt)
            if problem is not None:
                raise self.corrupt(
                    what,
                    f"cluster {end} of the chain from {first} {problem}",
                    "next_cluster",
                    self.fat_entry_offset(end),
                )
            if nxt >= s.END_OF_CHAIN_MIN[self.geometry.fat_type]:
                return found
            starts.add(cur)
            cur = nxt

    def fat_entry_offset(self, cluster: int) -> int:
        g = self.geometry
        return g.fat_offset + self.fat_copy * g.fat_bytes + cluster * g.fat_type // 8

    def cluster_spans(self, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        g = self.geometry
        return [(g.cluster_offset(c), n * g.cluster_size) for c, n in runs]

    # ------------------------------------------------------------------ directories

    def root(self) -> FatEntry:
        return FatEntry("", "", s.ATTR_DIRECTORY, 0, self.geometry.root_cluster, None, None, None)

    def directory(self, entry: FatEntry) -> Directory:
        g = self.geometry
        if entry.first_cluster == 0:
            if g.root_cluster or entry.slot >= 0:
                raise self.corrupt(
                    "directory",
                    f"{entry.name!r} has no cluster",
                    "first_cluster",
                    entry.cluster_field,
                )
            return Directory(0, [(g.root_offset, g.root_entries * s.DIRENT_SIZE)])
        known = self._dir_spans.get(entry.first_cluster)
        if known is not None:
            return known  # resolving a path walks every parent: chains are followed once
        spans = self.cluster_spans(
            self.runs(entry.first_cluster, f"directory {entry.name!r}", entry.cluster_field)
        )
        d = Directory(entry.first_cluster, spans)
        if d.size > s.MAX_DIR_ENTRIES * s.DIRENT_SIZE:
            raise self.corrupt(
                f"directory {entry.name!r}",
                f"{d.size} bytes, more than {s.MAX_DIR_ENTRIES} entries",
                "first_cluster",
            )
        if len(self._dir_spans) >= DIR_CACHE:
            self._dir_spans.pop(next(iter(self._dir_spans)))
        self._dir_spans[entry.first_cluster] = d
        return d

    def read_directory(self, d: Directory) -> np.ndarray:
        raw = b"".join(self._read(offset, length) for offset, length in d.spans)
        return np.frombuffer(raw, s.DIRENT_DTYPE)

    def entries(self, d: Directory) -> list[FatEntry]:
        """Live entries of a directory, without ``.``/``..`` and the volume label.  Each
        names a file of its own: a name no path can hold, or two entries with one name,
        is a CorruptImage (a path made of them would name another file)."""
        cached = self._dir_cache.get(d.first_cluster)
        if cached is None:
            cached = [
                replace(e, offset=d.slot_offset(e.slot))
                for e in parse_entries(self.read_directory(d))
            ]
            self._check_names(cached)
            if len(self._dir_cache) >= DIR_CACHE:
                self.forget(next(iter(self._dir_cache)))
            self._dir_cache[d.first_cluster] = cached
        return cached

    def _check_names(self, entries: list[FatEntry]) -> None:
        seen: dict[str, FatEntry] = {}
        for e in entries:
            problem = long_name_problem(e.name)
            if problem is not None:  # a long name only stands when valid: this is a short one
                raise self.corrupt(
                    "directory entry", f"short name {e.raw_short!r} {problem}", "name", e.offset
                )
            other = seen.setdefault(e.name.upper(), e)
            if other is not e:
                raise self.corrupt(
                    "directory entry",
                    f"{e.name!r} and the entry at {self.base + (other.offset or 0):#x} have "
                    "one name (FAT compares names in upper case)",
                    "name",
                    e.offset,
                )

    def forget(self, first_cluster: int) -> None:
        """Drop a directory's cached entries and chain (after it changed)."""
        self._dir_cache.pop(first_cluster, None)
        self._dir_index.pop(first_cluster, None)
        self._dir_spans.pop(first_cluster, None)

    def listdir(self, path: str = "/") -> list[FatEntry]:
        entry = self.stat(path)
        if not entry.is_dir:
            raise InvalidInput(f"{path} is a file, not a directory")
        return self.entries(self.directory(entry))

    def lookup(self, d: Directory, name: str) -> FatEntry | None:
        """Case-insensitive, by long or short name (FAT compares upper case)."""
        index = self._dir_index.get(d.first_cluster)
        if index is None or d.first_cluster not in self._dir_cache:
            entries = self.entries(d)
            index = {e.short_name.upper(): e for e in reversed(entries)}
            index.update({e.name.upper(): e for e in reversed(entries)})
            self._dir_index[d.first_cluster] = index
        return index.get(name.upper())

    def stat(self, path: str) -> FatEntry:
        entry = self.root()
        for part in split_path(path):
            if not entry.is_dir:
                raise NotFound(what=f"{path} on {self.path} ({entry.name} is a file)")
            found = self.lookup(self.directory(entry), part)
            if found is None:
                raise NotFound(what=f"{path} on {self.path}")
            entry = found
        return entry

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    # ------------------------------------------------------------------ files

    def file_runs(self, entry: FatEntry) -> list[tuple[int, int]]:
        """(volume offset, length) of the file's bytes, in order, cut at its size."""
        spans = self.cluster_spans(
            self.runs(entry.first_cluster, f"file {entry.name!r}", entry.cluster_field)
        )
        left, out = entry.size, []
        for offset, length in spans:
            if left <= 0:
                break
            out.append((offset, min(length, left)))
            left -= length
        if left > 0:
            raise self.corrupt(
                f"file {entry.name!r}",
                f"the cluster chain holds {entry.size - left} of its {entry.size} bytes",
                "size",
            )
        return out

    def iter_file(self, path: str | FatEntry, chunk: int = 1 << 20) -> Iterator[bytes]:
        entry = self.stat(path) if isinstance(path, str) else path
        if entry.is_dir:
            raise InvalidInput(f"{path if isinstance(path, str) else entry.name} is a directory")
        for offset, length in self.file_runs(entry):
            for lo in range(0, length, chunk):
                yield self._read(offset + lo, min(chunk, length - lo))

    def read_file(self, path: str | FatEntry) -> bytes:
        return b"".join(self.iter_file(path))

    # ------------------------------------------------------------------ whole tree

    def walk(self) -> Iterator[tuple[str, FatEntry]]:
        """Every entry depth-first as (path, entry); cross-links and cycles are corrupt."""
        owner = np.zeros(self.geometry.cluster_count + 2, dtype=bool)
        if self.geometry.root_cluster:
            self._claim(owner, self.runs(self.geometry.root_cluster, "root directory"), "/")
        yield from self._walk(self.root(), "", owner)

    def used_clusters(self) -> np.ndarray:
        """Bitmap of the clusters reachable from the root (after a full, checked walk)."""
        owner = np.zeros(self.geometry.cluster_count + 2, dtype=bool)
        if self.geometry.root_cluster:
            self._claim(owner, self.runs(self.geometry.root_cluster, "root directory"), "/")
        for _ in self._walk(self.root(), "", owner):
            pass
        return owner

    def _walk(
        self, entry: FatEntry, prefix: str, owner: np.ndarray
    ) -> Iterator[tuple[str, FatEntry]]:
        # An explicit stack: nesting depth is bounded by the cluster count, not by Python.
        stack = [(prefix, iter(self.entries(self.directory(entry))))]
        while stack:
            prefix, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                continue
            path = f"{prefix}/{child.name}"
            if child.first_cluster:
                runs = self.runs(child.first_cluster, f"entry {path!r}", child.cluster_field)
                self._claim(owner, runs, path)
            if not child.is_dir:
                self.file_runs(child)
            yield path, child
            if child.is_dir:
                stack.append((path, iter(self.entries(self.directory(child)))))

    def _claim(self, owner: np.ndarray, runs: list[tuple[int, int]], path: str) -> None:
        for cluster, count in runs:
            if owner[cluster : cluster + count].any():
                raise self.corrupt(
                    "cluster chain",
                    f"{path!r} shares cluster(s) with another file or directory (cross-linked)",
                    "first_cluster",
                    self.geometry.cluster_offset(cluster),
                )
            owner[cluster : cluster + count] = True


# ---------------------------------------------------------------------------- parsing


def long_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a FAT long name (fatgen103 7: no ``\\/:*?"<>|``, no control
    characters, at most 255 UTF-16 units; Windows drops a trailing space or dot), else None."""
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    bad = sorted(set(name) & s.LONG_FORBIDDEN | {c for c in name if ord(c) < 0x20})
    if bad:
        return f"holds {''.join(bad)!r}, which FAT names cannot hold"
    if len(name.encode("utf-16-le", "surrogatepass")) // 2 > s.MAX_NAME_UNITS:
        return f"is longer than {s.MAX_NAME_UNITS} UTF-16 units"
    if name != name.rstrip(" ."):
        return "ends in a space or dot, which FAT drops"
    return None


def split_path(path: str) -> list[str]:
    return [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]


def decode_fat(raw: bytes, fat_type: int) -> np.ndarray:
    """All entries of one FAT copy as uint32 (FAT32's high four bits masked)."""
    data = np.frombuffer(raw, np.uint8)
    if fat_type == 32:
        return np.frombuffer(raw[: len(raw) // 4 * 4], "<u4") & np.uint32(0x0FFFFFFF)
    if fat_type == 16:
        return np.frombuffer(raw[: len(raw) // 2 * 2], "<u2").astype(np.uint32)
    triples = data[: len(data) // 3 * 3].reshape(-1, 3).astype(np.uint32)
    even = triples[:, 0] | ((triples[:, 1] & 0x0F) << 8)
    odd = (triples[:, 1] >> 4) | (triples[:, 2] << 4)
    return np.stack([even, odd], axis=1).reshape(-1)


def encode_fat12(table: np.ndarray, length: int) -> bytes:
    values = np.zeros(-(-len(table) // 2) * 2, np.uint32)
    values[: len(table)] = table
    even, odd = values[0::2], values[1::2]
    out = np.stack(
        [even & 0xFF, ((even >> 8) & 0x0F) | ((odd & 0x0F) << 4), odd >> 4], axis=1
    ).astype(np.uint8)
    return out.tobytes()[:length]


def parse_boot_sector(sector: bytes, vol: FatVolume) -> Geometry:
    if len(sector) < 512:
        raise TruncatedImage(path=vol.path, structure="FAT boot sector", problem="device too small")
    try:
        bpb = s.BPB.parse(sector)
        ext = s.FAT32_EBPB.parse(sector[s.FAT32_EBPB_OFFSET :])
    except ConstructError as e:  # pragma: no cover - fixed-size parse of 512 bytes
        raise vol.corrupt("FAT boot sector", str(e), offset=0) from e
    _check_bpb(bpb, sector, vol)
    return _geometry(bpb, ext, sector, vol)


def _check_bpb(bpb: Any, sector: bytes, vol: FatVolume) -> None:
    def bad(problem: str, field: str, offset: int) -> CorruptImage:
        return vol.corrupt("FAT boot sector", problem, field, offset)

    if sector[s.BOOT_SIGNATURE_OFFSET : s.BOOT_SIGNATURE_OFFSET + 2] != s.BOOT_SIGNATURE:
        raise bad("missing 0x55AA signature", "signature", 510)
    if bpb.bytes_per_sector not in (512, 1024, 2048, 4096):
        raise bad(f"bytes per sector {bpb.bytes_per_sector}", "bytes_per_sector", 11)
    spc = bpb.sectors_per_cluster
    if spc == 0 or spc & (spc - 1):
        raise bad(f"sectors per cluster {spc} is not a power of two", "sectors_per_cluster", 13)
    if bpb.reserved_sectors == 0:
        raise bad("no reserved sectors", "reserved_sectors", 14)
    if bpb.num_fats == 0:
        raise bad("no FAT copies", "num_fats", 16)


def _geometry(bpb: Any, ext: Any, sector: bytes, vol: FatVolume) -> Geometry:
    ss = bpb.bytes_per_sector
    fat_sectors = bpb.fat_size_16 or ext.fat_size_32
    total = bpb.total_sectors_16 or bpb.total_sectors_32
    root_sectors = -(-bpb.root_entries * s.DIRENT_SIZE // ss)
    data_start = bpb.reserved_sectors + bpb.num_fats * fat_sectors + root_sectors
    if fat_sectors == 0:
        raise vol.corrupt("FAT boot sector", "FAT size is zero", "fat_size", 22)
    if total <= data_start:
        raise vol.corrupt(
            "FAT boot sector",
            f"{total} sectors leave no data region after sector {data_start}",
            "total_sectors",
            19,
        )
    clusters = (total - data_start) // bpb.sectors_per_cluster
    fat_type = (
        12 if clusters <= s.FAT12_MAX_CLUSTERS else 16 if clusters <= s.FAT16_MAX_CLUSTERS else 32
    )
    is32 = fat_type == 32
    if is32 and (bpb.fat_size_16 or bpb.root_entries):
        raise vol.corrupt(
            "FAT boot sector",
            f"{clusters} clusters make this FAT32, but the BPB has FAT12/16 fields set",
            "root_entries",
            17,
        )
    if not is32 and bpb.root_entries == 0:
        raise vol.corrupt("FAT boot sector", "no root directory entries", "root_entries", 17)
    if is32 and not 2 <= ext.root_cluster < clusters + 2:
        raise vol.corrupt("FAT boot sector", f"root cluster {ext.root_cluster}", "root_cluster", 44)
    mirror_off = is32 and bool(ext.ext_flags & 0x80)
    active = ext.ext_flags & 0x0F if mirror_off else None
    if active is not None and active >= bpb.num_fats:
        raise vol.corrupt("FAT boot sector", f"active FAT {active}", "ext_flags", 40)
    label_at = 71 if is32 else 43
    vol_id_at = 67 if is32 else 39
    return Geometry(
        fat_type=fat_type,
        sector_size=ss,
        cluster_size=ss * bpb.sectors_per_cluster,
        reserved_sectors=bpb.reserved_sectors,
        num_fats=bpb.num_fats,
        fat_bytes=fat_sectors * ss,
        root_entries=0 if is32 else bpb.root_entries,
        total_sectors=total,
        cluster_count=clusters,
        root_cluster=ext.root_cluster if is32 else 0,
        fsinfo_sector=ext.fsinfo_sector if is32 else 0,
        backup_boot_sector=ext.backup_boot_sector if is32 else 0,
        active_fat=active,
        volume_id=int.from_bytes(sector[vol_id_at : vol_id_at + 4], "little"),
        label=sector[label_at : label_at + 11].decode("cp850", "replace").rstrip(),
    )


def short_display(name: bytes, nt_res: int) -> str:
    raw = bytearray(name)
    if raw[0] == s.KANJI_E5:
        raw[0] = s.FREE_MARK
    base = raw[:8].decode("cp850", "replace").rstrip(" ")
    ext = raw[8:11].decode("cp850", "replace").rstrip(" ")
    if nt_res & s.NT_LOWER_BASE:
        base = base.lower()
    if nt_res & s.NT_LOWER_EXT:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


def _lfn_units(raw: np.ndarray) -> np.ndarray:
    """(N, 13) UTF-16 code units of every slot read as a long-name entry."""
    as_bytes = raw.view(np.uint8).reshape(-1, s.DIRENT_SIZE)
    lo = as_bytes[:, s.LFN_CHAR_OFFSETS].astype(np.uint16)
    hi = as_bytes[:, s.LFN_CHAR_OFFSETS + 1].astype(np.uint16)
    return lo | (hi << 8)


def parse_entries(table: np.ndarray) -> list[FatEntry]:
    raw = table.view(np.uint8).reshape(-1, s.DIRENT_SIZE)
    ends = np.flatnonzero(raw[:, 0] == s.END_MARK)
    live = int(ends[0]) if len(ends) else len(table)
    table, raw = table[:live], raw[:live]
    attrs = table["attr"]
    is_lfn = (attrs & 0x3F) == s.ATTR_LONG_NAME
    keep = (raw[:, 0] != s.FREE_MARK) & ~is_lfn & ((attrs & s.ATTR_VOLUME_ID) == 0)
    units = _lfn_units(table) if is_lfn.any() else None
    out = []
    for index in np.flatnonzero(keep):
        name_raw = raw[int(index), :11].tobytes()
        if name_raw in (b".          ", b"..         "):
            continue
        out.append(_entry(table, units, is_lfn, int(index), name_raw))
    return out


def _entry(
    table: np.ndarray, units: np.ndarray | None, is_lfn: np.ndarray, index: int, name_raw: bytes
) -> FatEntry:
    e = table[index]
    short = short_display(name_raw, int(e["nt_res"]))
    long_name, count = _long_name(table, units, is_lfn, index, s.lfn_checksum(name_raw))
    return FatEntry(
        name=long_name if long_name is not None else short,
        short_name=short,
        slot=index,
        lfn_slots=count,
        raw_short=name_raw,
        **record_fields(e),
    )


def record_fields(e: np.void) -> dict[str, Any]:
    """What a short entry (``DIRENT_DTYPE``) says besides its names."""
    attrs = int(e["attr"])
    return {
        "attributes": attrs,
        "size": 0 if attrs & s.ATTR_DIRECTORY else int(e["size"]),
        "first_cluster": (int(e["cluster_hi"]) << 16) | int(e["cluster_lo"]),
        "created": fat_date(int(e["crt_date"]), int(e["crt_time"]), int(e["crt_time_tenth"])),
        "modified": fat_date(int(e["wrt_date"]), int(e["wrt_time"])),
        "accessed": (d.date() if (d := fat_date(int(e["acc_date"]))) else None),
    }


def _long_name(
    table: np.ndarray, units: np.ndarray | None, is_lfn: np.ndarray, index: int, checksum: int
) -> tuple[str | None, int]:
    """fatgen103 7: ordinals 1..n walking back from the short entry, same checksum, last
    one flagged 0x40.  Anything else is an orphan: the short name stands (as Windows does).
    A well-formed long name that is not a valid one (``long_name_problem``: a ``/``, ``..``,
    a control character...) is not used either: the short name stands, and the slots still
    belong to the entry (a delete frees them)."""
    if units is None:
        return None, 0
    raw = table.view(np.uint8).reshape(-1, s.DIRENT_SIZE)
    pieces = []
    for n in range(1, 21):
        j = index - n
        if j < 0 or not is_lfn[j]:
            return None, 0
        ordinal = int(raw[j, 0])
        if ordinal & s.LFN_ORDINAL_MASK != n or int(raw[j, s.LFN_CHECKSUM_OFFSET]) != checksum:
            return None, 0
        pieces.append(units[j])
        if ordinal & s.LFN_LAST:
            break
    else:
        return None, 0
    code = np.concatenate(pieces)
    stop = np.flatnonzero(code == 0)
    code = code[: int(stop[0])] if len(stop) else code
    text = code.astype("<u2").tobytes().decode("utf-16-le", "replace")
    return (text if long_name_problem(text) is None else None), len(pieces)
