"""File delta of one NTFS volume, at a cost that follows what changed: the block delta names
the MFT records that lie in changed blocks, only those are parsed (in base and child), their
paths are resolved through parent references (parent records read on demand, cached).

References: Russon & Fledel "NTFS Documentation" 4.1 (FILE record: sequence number, in-use
flag, base reference), 5.1 ($STANDARD_INFORMATION), 5.3 ($FILE_NAME: parent reference,
namespace), 5.7 ($DATA), 5.12 ($REPARSE_POINT); docs/architecture.md ("Layers at file level").

What changed is decided per record number: in use in the child and not (or with another
sequence number) in the base is an added file; the reverse a deleted one; the same file with
other names is moved (deleted at the old path, added at the new); the same name with other
content or metadata is modified.  Directory times that change only because a child changed
are not recorded.  A renamed or moved directory is refused (its unchanged subtree would have to
be enumerated): the volume is then skipped and named in the delta's ``skipped``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import xxhash

from strata.errors import CorruptImage, StrataError, Unsupported
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s
from strata.fs.ntfs.attributes import Attribute
from strata.fs.ntfs.records import Columns, scan_window
from strata.fs.ntfs.runlist import Run, decode_runlist

BLOCK = 64 << 10  # the block delta's grid
MAX_DEPTH = 1024  # parent hops before a path is called a cycle
EPOCH = dt.datetime(1970, 1, 1)
SYSTEM_DIR = "/$Extend/"


@dataclass(frozen=True)
class NtfsItem:
    """One name of a changed file, shaped like a FAT entry for the shared table writer."""

    path: str
    record: int
    is_dir: bool
    size: int
    created: dt.datetime | None
    modified: dt.datetime | None
    accessed: dt.datetime | None
    attributes: int  # the low byte: DOS attribute bits, as FAT entries carry
    ntfs_attributes: int
    security_id: int
    reparse_tag: int
    links: int
    mft_modified: int  # FILETIME
    streams: tuple[tuple[str, int], ...] = ()


class NtfsContent:
    """Reads an item's unnamed $DATA, as ``FatVolume.iter_file`` reads a FAT entry; each
    record's attributes are parsed once (compare, check and read all need them)."""

    def __init__(self, vol: NtfsVolume) -> None:
        self.vol = vol
        self._data: dict[int, tuple[list[Attribute], int] | StrataError] = {}
        self.resident: dict[int, bytes] = {}  # unnamed $DATA values read from parsed records
        self.runs: dict[int, Plain] = {}  # uncompressed non-resident $DATA, from the same

    def data(self, record: int) -> tuple[list[Attribute], int]:
        """The unnamed $DATA extents and size (the error ``vol.stream`` raises, again)."""
        if record not in self._data:
            try:
                self._data[record] = self.vol.stream(record)
            except StrataError as e:
                self._data[record] = e
        found = self._data[record]
        if isinstance(found, StrataError):
            raise found
        return found

    def readable(self, item: NtfsItem) -> bool:
        if item.record in self.resident or item.record in self.runs:
            return True
        try:
            self.data(item.record)
        except StrataError:
            return False
        return True

    def iter_file(self, item: NtfsItem, window: int) -> Iterator[bytes]:
        if item.record in self.resident:
            return iter((self.resident[item.record],))
        if item.record in self.runs:
            plain = self.runs[item.record]
            return self.vol.iter_runs(plain.runs, plain.size, plain.initialized, window)
        return self.vol.iter_attribute(self.data(item.record)[0], window)


def filetime_naive(filetime: int) -> dt.datetime | None:
    """A FILETIME as a naive UTC datetime (None for 0 or out of range)."""
    if filetime <= 0:
        return None
    try:
        return EPOCH + dt.timedelta(microseconds=(filetime - s.FILETIME_UNIX_OFFSET) // 10)
    except OverflowError:
        return None


_time = filetime_naive


@dataclass
class Records:
    """The MFT records of one volume parsed so far (only those asked for), and their paths."""

    vol: NtfsVolume
    cols: Columns = field(init=False)
    scanned: np.ndarray = field(init=False)
    names: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # parent ref, name
    streams: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    resident: dict[int, bytes] = field(default_factory=dict)
    runs: dict[int, Plain] = field(default_factory=dict)
    paths: dict[int, str | None] = field(default_factory=dict)
    _fn_rows: int = 0
    _ads_rows: int = 0

    def __post_init__(self) -> None:
        self.cols = Columns(self.vol.record_count)
        self.scanned = np.zeros(self.vol.record_count, bool)
        self.paths[s.ROOT_RECORD] = ""

    def load(self, numbers: np.ndarray) -> None:
        nums = np.unique(np.asarray(numbers, np.int64))
        nums = nums[(nums >= 0) & (nums < self.vol.record_count)]
        nums = nums[~self.scanned[nums]]
        if nums.size == 0:
            return
        per = 8192
        for at in range(0, nums.size, per):
            part = nums[at : at + per]
            raw, offsets = self.vol.read_records(part)
            scan_window(raw, 0, self.vol.record_dtype, self.cols, offsets, numbers=part)
            for r, row in zip(part.tolist(), raw, strict=True):  # fixed up in place by the scan
                value = record_data(self.vol, row.tobytes())
                if isinstance(value, bytes):
                    self.resident[r] = value
                elif value is not None:
                    self.runs[r] = value
        self.scanned[nums] = True
        flat = [row for part in self.cols.fn[self._fn_rows :] for row in part.tolist()]
        names = self.cols.names[sum(len(p) for p in self.cols.fn[: self._fn_rows]) :]
        self._fn_rows = len(self.cols.fn)
        for (owner, pref, ns), name in zip(flat, names, strict=True):
            if ns != s.NAMESPACE_DOS:
                self.names.setdefault(owner, []).append((pref, name))
        for owner, name, size in self.cols.ads[self._ads_rows :]:
            self.streams.setdefault(owner, []).append((name, size))
        self._ads_rows = len(self.cols.ads)

    def load_parents(self, numbers: np.ndarray) -> None:
        """Parse the ancestors of records ``numbers``, a generation per bulk pass."""
        todo = {int(n) for n in numbers}
        for _ in range(MAX_DEPTH):
            wanted = {
                pref & s.REF_RECORD_MASK
                for r in todo
                for pref, _name in self.names.get(r, [])
                if pref & s.REF_RECORD_MASK not in self.paths
            }
            wanted = {d for d in wanted if d < self.vol.record_count and not self.scanned[d]}
            if not wanted:
                return
            self.load(np.array(sorted(wanted), np.int64))
            todo = wanted

    def in_use(self, r: int) -> bool:
        if r >= self.vol.record_count:
            return False
        flags, base = int(self.cols.flags[r]), int(self.cols.base[r])
        return bool(flags & s.RECORD_IN_USE) and base == 0

    def is_dir(self, r: int) -> bool:
        return bool(int(self.cols.flags[r]) & s.RECORD_IS_DIRECTORY)

    def sequence(self, r: int) -> int:
        return int(self.cols.sequence[r]) if r < self.vol.record_count else -1

    def path_of(self, parent_ref: int, name: str) -> str | None:
        prefix = self.dir_path(parent_ref & s.REF_RECORD_MASK, (parent_ref >> 48) & 0xFFFF)
        return None if prefix is None else f"{prefix}/{name}"

    def dir_path(self, d: int, seq: int) -> str | None:
        """The path of directory ``d`` (None when gone, reused or in a cycle), cached."""
        chain: list[tuple[int, str]] = []
        while d not in self.paths:
            if len(chain) > MAX_DEPTH or not 0 <= d < self.vol.record_count:
                return None
            if not self.scanned[d]:
                self.load(np.array([d]))
            if not (self.in_use(d) and self.is_dir(d) and self.sequence(d) == seq):
                self.paths[d] = None
                break
            names = self.names.get(d)
            if not names:
                self.paths[d] = None
                break
            pref, name = names[0]
            chain.append((d, name))
            d, seq = pref & s.REF_RECORD_MASK, (pref >> 48) & 0xFFFF
        prefix = self.paths[d]
        for c, name in reversed(chain):
            prefix = None if prefix is None else f"{prefix}/{name}"
            self.paths[c] = prefix
        return prefix

    def items(self, r: int) -> list[NtfsItem]:
        """Every resolvable name of in-use record ``r``."""
        si = self.cols.si[r]
        is_dir = self.is_dir(r)
        out = []
        for pref, name in self.names.get(r, []):
            path = self.path_of(pref, name)
            if path is None or path.startswith(SYSTEM_DIR):  # metafiles: the volume's own
                continue
            out.append(
                NtfsItem(
                    path=path,
                    record=r,
                    is_dir=is_dir,
                    size=0 if is_dir else int(self.cols.size[r]),
                    created=_time(int(si[0])),
                    modified=_time(int(si[1])),
                    accessed=_time(int(si[3])),
                    attributes=int(si[4]) & 0xFF,
                    ntfs_attributes=int(si[4]),
                    security_id=int(si[5]),
                    reparse_tag=int(self.cols.reparse[r]),
                    links=int(self.cols.links[r]),
                    mft_modified=int(si[2]),
                    streams=tuple(sorted(self.streams.get(r, []))),
                )
            )
        return out


@dataclass(frozen=True)
class Plain:
    """An uncompressed, unencrypted non-resident unnamed $DATA held in one extent."""

    runs: list[Run]
    size: int
    initialized: int


def _plain(vol: NtfsVolume, attr: bytes) -> Plain | None:
    """The runs of a non-resident $DATA attribute (its bytes), or None when the full parser
    must read it (compressed, encrypted, several extents, sizes or runs out of order)."""
    if len(attr) < 64:
        return None
    flags = int.from_bytes(attr[12:14], "little")
    start_vcn = int.from_bytes(attr[16:24], "little")
    last_vcn = int.from_bytes(attr[24:32], "little")
    runs_at = int.from_bytes(attr[32:34], "little")
    size = int.from_bytes(attr[48:56], "little")
    init = int.from_bytes(attr[56:64], "little")
    if flags & (s.ATTR_FLAG_COMPRESSED | s.ATTR_FLAG_ENCRYPTED) or start_vcn or init > size:
        return None
    if not 64 <= runs_at < len(attr):
        return None

    def bad(problem: str, field: str, at: int) -> StrataError:
        return StrataError(problem)

    try:
        runs = decode_runlist(attr[runs_at:], 0, vol.geometry.total_clusters, bad)
    except StrataError:
        return None
    end = runs[-1].vcn + runs[-1].clusters if runs else 0
    if end != last_vcn + 1 or end * vol.geometry.cluster_size < size:
        return None
    return Plain(runs, size, init)


def record_data(vol: NtfsVolume, rec: bytes) -> bytes | Plain | None:
    """The unnamed $DATA of a fixed-up FILE record: its resident value, its runs (``Plain``),
    or None (no $DATA, an attribute list, or a kind the full attribute parser reads)."""
    pos = int.from_bytes(rec[20:22], "little")
    end = min(int.from_bytes(rec[24:28], "little"), len(rec))
    while pos + 24 <= end:
        atype = int.from_bytes(rec[pos : pos + 4], "little")
        length = int.from_bytes(rec[pos + 4 : pos + 8], "little")
        if atype == s.ATTR_END or length < 24 or pos + length > end:
            return None
        if atype == s.ATTRIBUTE_LIST:
            return None
        if atype == s.DATA and rec[pos + 9] == 0:
            if rec[pos + 8]:
                return _plain(vol, rec[pos : pos + length])
            vlen = int.from_bytes(rec[pos + 16 : pos + 20], "little")
            voff = int.from_bytes(rec[pos + 20 : pos + 22], "little")
            if voff + vlen > length:
                return None
            return rec[pos + voff : pos + voff + vlen]
        pos += length
    return None


def changed_records(vol: NtfsVolume, start: int, changed: np.ndarray) -> np.ndarray:
    """Record numbers of ``vol``'s MFT that lie (even partly) in a changed 64 KiB block;
    ``start`` is the volume's disk offset, ``changed`` the disk's block bitmap."""
    cs, rs = vol.geometry.cluster_size, vol.geometry.record_size
    out: list[np.ndarray] = []
    for run in vol.mft_runs:
        if run.lcn is None:
            continue
        lo = start + run.lcn * cs
        hi = lo + run.clusters * cs
        first, last = lo // BLOCK, min((hi - 1) // BLOCK, changed.size - 1)
        blocks = np.flatnonzero(changed[first : last + 1]) + first
        if blocks.size == 0:
            continue
        a = np.maximum(blocks * BLOCK, lo) - lo + run.vcn * cs
        b = np.minimum((blocks + 1) * BLOCK, hi) - lo + run.vcn * cs
        ra, rb = a // rs, -(-b // rs)
        counts = rb - ra
        starts = np.repeat(ra - np.cumsum(counts) + counts, counts)
        out.append(starts + np.arange(int(counts.sum())))
    if not out:
        return np.zeros(0, np.int64)
    nums = np.unique(np.concatenate(out))
    return nums[nums < vol.record_count]


def differing(old: NtfsVolume, new: NtfsVolume, nums: np.ndarray) -> np.ndarray:
    """The records among ``nums`` whose bytes differ between base and child (a changed block
    holds 64 records of 1 KiB; usually few of them changed)."""
    per = 8192
    keep: list[np.ndarray] = [nums[nums >= old.record_count]]
    both = nums[nums < old.record_count]
    for at in range(0, both.size, per):
        part = both[at : at + per]
        a, _ = old.read_records(part)
        b, _ = new.read_records(part)
        keep.append(part[(a != b).any(axis=1)])
    return np.sort(np.concatenate(keep))


def _bases(recs: Records, nums: np.ndarray) -> np.ndarray:
    """The base records of the extension records among ``nums``."""
    base = recs.cols.base[nums[nums < recs.vol.record_count]]
    return np.unique(base[base != 0])


@dataclass
class Change:
    change: str  # "added", "modified" (content carried when ``content``), "deleted"
    item: NtfsItem
    content: bool = False


def diff(old: NtfsVolume, new: NtfsVolume, start: int, changed: np.ndarray) -> list[Change]:
    """The changes of one NTFS volume at disk offset ``start`` (see the module text)."""
    return diff_with(NtfsContent(old), NtfsContent(new), start, changed)


def diff_with(
    old_data: NtfsContent, new_data: NtfsContent, start: int, changed: np.ndarray
) -> list[Change]:
    """``diff`` with the content readers of base and child (their parsed $DATA is kept)."""
    old, new = old_data.vol, new_data.vol
    nums = np.union1d(changed_records(new, start, changed), changed_records(old, start, changed))
    nums = differing(old, new, nums[nums >= s.FIRST_USER_RECORD])
    before, after = Records(old), Records(new)
    before.load(nums)
    after.load(nums)
    extra = np.union1d(_bases(before, nums), _bases(after, nums))
    extra = extra[extra >= s.FIRST_USER_RECORD]
    before.load(extra)
    after.load(extra)
    old_data.resident.update(before.resident)  # a record without an attribute list holds
    new_data.resident.update(after.resident)  # all its resident $DATA itself
    old_data.runs.update(before.runs)
    new_data.runs.update(after.runs)
    every = np.union1d(nums, extra)
    before.load_parents(every)
    after.load_parents(every)
    for recs in (before, after):  # a record left out would read as deleted: refuse instead
        if recs.cols.problems:
            first = recs.cols.problems[0]
            raise CorruptImage(
                path=recs.vol.path,
                structure=f"MFT record {first.record}",
                problem=f"{first.problem} ({len(recs.cols.problems)} record(s) unreadable)",
                field="record",
                offset=first.offset,
            )
    out: list[Change] = []
    for r in every.tolist():
        out += _record_changes(before, after, r, (old_data, new_data, changed, start))
    return out


Where = tuple[NtfsContent, NtfsContent, np.ndarray, int]  # base, child, changed blocks, start


def _record_changes(before: Records, after: Records, r: int, where: Where) -> list[Change]:
    was = before.items(r) if before.in_use(r) else []
    now = after.items(r) if after.in_use(r) else []
    if not was and not now:
        return []
    if was and now and before.sequence(r) == after.sequence(r):
        return _same_file(r, was, now, where)
    return [Change("deleted", w) for w in was] + [Change("added", n, True) for n in now]


def _same_file(r: int, was: list[NtfsItem], now: list[NtfsItem], where: Where) -> list[Change]:
    old_paths = {w.path: w for w in was}
    new_paths = {n.path: n for n in now}
    gone = [w for p, w in old_paths.items() if p not in new_paths]
    came = [n for p, n in new_paths.items() if p not in old_paths]
    if now[0].is_dir:
        if gone or came:
            where = ", ".join(sorted(w.path for w in gone))
            raise Unsupported(
                what=f"NTFS file delta: directory {where} was renamed or moved (record {r})"
            )
        return [
            Change("modified", n)
            for p, n in new_paths.items()
            if _dir_meta(old_paths[p]) != _dir_meta(n)
        ]
    out = [Change("deleted", w) for w in gone] + [Change("added", n, True) for n in came]
    kept = [(old_paths[p], n) for p, n in new_paths.items() if p in old_paths]
    if not kept:
        return out
    same = kept[0][0].size == kept[0][1].size and _same_content(r, where)
    for w, n in kept:
        if not same:
            out.append(Change("modified", n, True))
        elif _file_meta(w) != _file_meta(n):
            out.append(Change("modified", n))
    return out


def _dir_meta(i: NtfsItem) -> tuple[object, ...]:
    return (i.ntfs_attributes, i.created, i.security_id, i.reparse_tag, i.streams)


def _file_meta(i: NtfsItem) -> tuple[object, ...]:
    return (*_dir_meta(i), i.modified, i.size)


def _same_content(r: int, where: Where) -> bool:
    """Unnamed $DATA equal in base and child: the same runs in unchanged blocks, or the
    same resident value, or (when neither settles it) the same digest."""
    old_data, new_data, changed, start = where
    old, new = old_data.vol, new_data.vol
    if r in old_data.resident and r in new_data.resident:
        return old_data.resident[r] == new_data.resident[r]
    if r in old_data.runs and r in new_data.runs:
        a_runs, b_runs = old_data.runs[r], new_data.runs[r]
        if a_runs == b_runs and not _runs_touch(new, b_runs.runs, changed, start):
            return True
        return _plain_digest(old, a_runs) == _plain_digest(new, b_runs)
    try:
        a, size_a = old_data.data(r)
        b, size_b = new_data.data(r)
    except StrataError:  # encrypted or unreadable: carried as changed, content read decides
        return False
    if size_a != size_b:
        return False
    fa, fb = min(a, key=lambda x: x.start_vcn), min(b, key=lambda x: x.start_vcn)
    if not fa.non_resident and not fb.non_resident:
        return fa.value == fb.value
    if fa.non_resident and fb.non_resident:
        runs = new.data_runs(b)
        if runs == old.data_runs(a) and not _runs_touch(new, runs, changed, start):
            return True
    return _digest(old, a) == _digest(new, b)


def _runs_touch(vol: NtfsVolume, runs: list, changed: np.ndarray, start: int) -> bool:  # type: ignore[type-arg]
    cs = vol.geometry.cluster_size
    for run in runs:
        if run.lcn is None:
            continue
        lo = (start + run.lcn * cs) // BLOCK
        hi = (start + (run.lcn + run.clusters) * cs - 1) // BLOCK
        if changed[lo : hi + 1].any():
            return True
    return False


def _plain_digest(vol: NtfsVolume, plain: Plain) -> bytes:
    h = xxhash.xxh3_128()
    for piece in vol.iter_runs(plain.runs, plain.size, plain.initialized, 1 << 20):
        h.update(piece)
    return h.digest()


def _digest(vol: NtfsVolume, extents: list[Attribute]) -> bytes:
    h = xxhash.xxh3_128()
    for piece in vol.iter_attribute(extents, 1 << 20):
        h.update(piece)
    return h.digest()


def settle(changes: list[Change]) -> list[Change]:
    """One change per path, parents first: a path deleted and added is modified (a directory:
    opaque); below a deleted or opaque directory only that directory is recorded."""
    deleted = {c.item.path.casefold(): c for c in changes if c.change == "deleted"}
    live: dict[str, Change] = {}
    for c in changes:
        if c.change == "deleted":
            continue
        key = c.item.path.casefold()
        if key in deleted:
            prior = deleted.pop(key).item
            kind = "opaque" if c.item.is_dir and prior.is_dir else "modified"
            c = Change(kind, c.item, not c.item.is_dir)
        live[key] = c
    closed = {k for k, c in deleted.items() if c.item.is_dir}
    closed |= {k for k, c in live.items() if c.change == "opaque"}
    whiteouts = [c for k, c in deleted.items() if not any(_under(k, d) for d in closed if d != k)]
    ordered = sorted(live.values(), key=lambda c: c.item.path.split("/"))
    return ordered + sorted(whiteouts, key=lambda c: c.item.path.split("/"))


def _under(key: str, directory: str) -> bool:
    return key.startswith(directory + "/")
