"""File delta of one NTFS volume, at a cost that follows what changed: the block delta names
the MFT records that lie in changed blocks, only those are parsed (in base and child), their
paths are resolved through parent references (parent records read on demand, cached).

References: Russon & Fledel "NTFS Documentation" 4.1 (FILE record: sequence number, in-use
flag, base reference), 5.1 ($STANDARD_INFORMATION), 5.3 ($FILE_NAME: parent reference,
namespace), 5.6 ($SECURITY_DESCRIPTOR), 5.7 ($DATA), 5.12 ($REPARSE_POINT), 6.8 ($Secure: $SDS);
docs/architecture.md ("Layers at file level").

What changed is decided per record number: in use in the child and not (or with another
sequence number) in the base is an added file; the reverse a deleted one; the same file with
other names is moved (deleted at the old path, added at the new); the same name with other
content or metadata is modified.  Directory times that change only because a child changed
are not recorded.  A renamed or moved directory is deleted at its old path and added at the new
one with everything below it (as the FAT delta records it); the subtree comes from the
directories' $I30 indexes, not from a volume scan.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import xxhash

from strata.errors import CorruptImage, StrataError
from strata.fs import component_problem
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s
from strata.fs.ntfs.attributes import Attribute
from strata.fs.ntfs.records import ROW_FIELDS, Attributes, SparseColumns, gather, scan_window
from strata.fs.ntfs.runlist import Run, decode_runlist

BLOCK = 64 << 10  # the block delta's grid
NO_FACTS = [0] * ROW_FIELDS  # a record not parsed: not in use
SMALL_FILE = 1 << 20  # files up to this size are read grouped with their neighbours
GROUP_BYTES = 8 << 20  # the most one grouped read holds
GROUP_GAP = 64 << 10  # unused bytes read between two files rather than a second read
MAX_DEPTH = 1024  # generations of parents read in bulk; hops to decide ``same_chain``
EPOCH = dt.datetime(1970, 1, 1)
SYSTEM_DIR = "/$Extend/"


class NtfsItem(NamedTuple):
    """One name of a changed file, shaped like a FAT entry for the shared table writer."""

    path: str
    record: int
    is_dir: bool
    size: int
    created_ft: int  # FILETIMEs (100 ns since 1601) from $STANDARD_INFORMATION
    modified_ft: int
    accessed_ft: int
    attributes: int  # the low byte: DOS attribute bits, as FAT entries carry
    ntfs_attributes: int
    security_id: int
    reparse_tag: int
    links: int
    mft_modified: int  # FILETIME
    streams: tuple[tuple[str, int], ...] = ()
    own_security: bool = False  # may hold a $SECURITY_DESCRIPTOR (or has an attribute list)

    @property
    def created(self) -> dt.datetime | None:
        return filetime_naive(self.created_ft)

    @property
    def modified(self) -> dt.datetime | None:
        return filetime_naive(self.modified_ft)

    @property
    def accessed(self) -> dt.datetime | None:
        return filetime_naive(self.accessed_ft)


class Extras(NamedTuple):
    """What a changed record carries besides its unnamed $DATA: its whole $REPARSE_POINT
    value, its own (old-style) $SECURITY_DESCRIPTOR, its named $DATA streams' extents, and a
    problem per stream or attribute that cannot be read (the rest is still carried).  A
    tuple with immutable defaults: one is made per changed file."""

    reparse: bytes | None = None
    security: bytes | None = None
    streams: Mapping[str, list[Attribute]] = MappingProxyType({})
    problems: Sequence[str] = ()


class NtfsContent:
    """Reads an item's unnamed $DATA, as ``FatVolume.iter_file`` reads a FAT entry; each
    record's attributes are parsed once (compare, check and read all need them)."""

    def __init__(self, vol: NtfsVolume) -> None:
        self.vol = vol
        self._extras: dict[int, Extras | StrataError] = {}
        self._data: dict[int, tuple[list[Attribute], int] | StrataError] = {}
        self.resident: dict[int, bytes] = {}  # unnamed $DATA values read from parsed records
        self.runs: dict[int, Plain] = {}  # uncompressed non-resident $DATA, from the same
        self.security: dict[int, bytes] = {}  # resident $SECURITY_DESCRIPTOR values, same
        self.reparse: dict[int, bytes] = {}  # resident $REPARSE_POINT values, same
        self._where: dict[int, tuple[int, int, int]] = {}  # record: group, offset, size
        self._groups: list[tuple[int, int]] = []  # volume byte ranges read in one go
        self._held: tuple[int, memoryview] | None = None  # the group read last

    def disk_order(self, item: NtfsItem) -> int:
        """Where the item's content starts on the volume (reading in this order is
        sequential); -1 when it is not read through ``prefetch``."""
        found = self._where.get(item.record)
        return -1 if found is None else found[1]

    def prefetch(self, items: list[NtfsItem]) -> None:
        """Plan reading the small one-run files among ``items`` in few large reads: runs of
        files close together on the volume become one read of at most GROUP_BYTES."""
        cs = self.vol.geometry.cluster_size
        spans = []
        for item in items:
            plain = self.runs.get(item.record)
            if plain is None or len(plain.runs) != 1 or plain.initialized != plain.size:
                continue
            lcn = plain.runs[0].lcn
            if lcn is not None and 0 < plain.size <= SMALL_FILE:
                spans.append((lcn * cs, plain.size, item.record))
        spans.sort()
        start = end = -1
        for offset, size, record in spans:
            if start < 0 or offset - end > GROUP_GAP or offset + size - start > GROUP_BYTES:
                if start >= 0:
                    self._groups.append((start, end))
                start, end = offset, offset + size
            else:
                end = max(end, offset + size)
            self._where[record] = (len(self._groups), offset, size)
        if start >= 0:
            self._groups.append((start, end))

    def _grouped(self, record: int) -> bytes:
        group, offset, size = self._where[record]
        if self._held is None or self._held[0] != group:
            lo, hi = self._groups[group]
            self._held = (group, self.vol.read_view(lo, hi - lo))
        lo = self._groups[group][0]
        return bytes(self._held[1][offset - lo : offset - lo + size])

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

    def descriptor(self, security_id: int) -> bytes | None:
        """The descriptor ``$Secure:$SDS`` holds for ``security_id`` ($SDS is read once per
        volume, on the first call; None when no entry has that id)."""
        return self.vol.security_descriptor(security_id)

    def extras(self, item: NtfsItem) -> Extras:
        """The reparse value, own descriptor and named streams of ``item``'s record: its
        attributes are parsed only when it may have any of them, once per
        record; a record that cannot be parsed raises its StrataError (again)."""
        fast = Extras(self.reparse.get(item.record), self.security.get(item.record))
        if not (item.streams or (item.reparse_tag and fast.reparse is None) or item.own_security):
            return fast
        if item.record not in self._extras:
            try:
                self._extras[item.record] = record_extras(self.vol, item.record)
            except StrataError as e:
                self._extras[item.record] = e
        found = self._extras[item.record]
        if isinstance(found, StrataError):
            raise found
        return found

    def whole(self, item: NtfsItem) -> bytes | None:
        """The item's content when it is at hand in one piece (resident, or read grouped
        with its neighbours); None when ``iter_file`` must read it."""
        if item.record in self._where:
            return self._grouped(item.record)
        return self.resident.get(item.record)

    def iter_file(self, item: NtfsItem, window: int) -> Iterator[bytes]:
        if item.record in self._where:
            return iter((self._grouped(item.record),))
        if item.record in self.resident:
            return iter((self.resident[item.record],))
        if item.record in self.runs:
            plain = self.runs[item.record]
            return self.vol.iter_runs(plain.runs, plain.size, plain.initialized, window)
        return self.vol.iter_attribute(self.data(item.record)[0], window)


def record_extras(vol: NtfsVolume, record: int) -> Extras:
    """``NtfsContent.extras`` of one in-use record: a named stream whose runs do not map its
    size inside the volume, or that is encrypted, is left out with a problem named."""
    attrs = vol.attributes(record)
    reparse = next((a for a in attrs if a.type == s.REPARSE_POINT), None)
    own = next((a for a in attrs if a.type == s.SECURITY_DESCRIPTOR), None)
    named: dict[str, list[Attribute]] = {}
    for a in attrs:
        if a.type == s.DATA and a.name:
            named.setdefault(a.name, []).append(a)
    problems: list[str] = []
    streams: dict[str, list[Attribute]] = {}
    for name, extents in sorted(named.items()):
        problem = _stream_problem(vol, extents)
        if problem is None:
            streams[name] = extents
        else:
            problems.append(f"stream {name!r}: {problem}")
    values = []
    for what, attr in (("$REPARSE_POINT", reparse), ("$SECURITY_DESCRIPTOR", own)):
        try:
            values.append(None if attr is None else vol.read_attribute(attr))
        except StrataError as e:
            problems.append(f"{what}: {e}")
            values.append(None)
    return Extras(values[0], values[1], streams, problems)


def _stream_problem(vol: NtfsVolume, extents: list[Attribute]) -> str | None:
    """Why a named stream cannot be read (None when it can): encrypted, or runs that are
    corrupt, leave the volume or do not map its size."""
    first = min(extents, key=lambda a: a.start_vcn)
    if first.flags & s.ATTR_FLAG_ENCRYPTED:
        return "EFS-encrypted"
    if first.size > vol.dev.size:  # reading it would not end (a sparse or corrupt size)
        return f"{first.size} bytes, more than the volume holds"
    if not first.non_resident:
        return None
    try:
        runs = vol.data_runs(extents)
    except StrataError as e:
        return str(e)
    cs = vol.geometry.cluster_size
    mapped = (runs[-1].vcn + runs[-1].clusters) * cs if runs else 0
    if mapped < first.data_size and not first.compressed:
        return f"runs map {mapped} bytes of {first.data_size}"
    end = max((r.lcn + r.clusters for r in runs if r.lcn is not None), default=0)
    if end * cs > vol.dev.size:
        return f"runs end at cluster {end}, past the volume"
    return None


def filetime_naive(filetime: int) -> dt.datetime | None:
    """A FILETIME as a naive UTC datetime (None for 0 or out of range)."""
    if filetime <= 0:
        return None
    try:
        return EPOCH + dt.timedelta(microseconds=(filetime - s.FILETIME_UNIX_OFFSET) // 10)
    except OverflowError:
        return None


@dataclass
class Records:
    """The MFT records of one volume parsed so far (only those asked for), and their paths."""

    vol: NtfsVolume
    cols: SparseColumns = field(init=False)
    scanned: np.ndarray = field(init=False)
    names: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # parent ref, name
    streams: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    resident: dict[int, bytes] = field(default_factory=dict)
    runs: dict[int, Plain] = field(default_factory=dict)
    paths: dict[int, str | None] = field(default_factory=dict)
    prefixes: dict[int, str] = field(default_factory=dict)  # parent reference: its path
    own_security: set[int] = field(default_factory=set)  # see NtfsItem.own_security
    security: dict[int, bytes] = field(default_factory=dict)  # resident values sliced out
    reparse: dict[int, bytes] = field(default_factory=dict)
    facts: dict[int, list[int]] = field(default_factory=dict)  # table rows, as lists
    twin: Records | None = None  # the other side's records, to share the unchanged ones
    changed: np.ndarray | None = None  # sorted numbers of the records that differ
    _changed_set: set[int] | None = None
    _same_chain: dict[int, bool] = field(default_factory=dict)  # see ``same_chain``
    _fn_rows: int = 0
    _ads_rows: int = 0

    def __post_init__(self) -> None:
        self.cols = SparseColumns(self.vol.record_count)
        self.scanned = np.zeros(self.vol.record_count, bool)
        self.paths[s.ROOT_RECORD] = ""

    def load(self, numbers: np.ndarray) -> None:
        nums = np.unique(np.asarray(numbers, np.int64))
        nums = nums[(nums >= 0) & (nums < self.vol.record_count)]
        nums = nums[~self.scanned[nums]]
        if self.twin is not None and self.changed is not None and nums.size:
            nums = self._adopt(nums, self.twin, self.changed)
        if nums.size == 0:
            return
        per = 8192
        for at in range(0, nums.size, per):
            part = nums[at : at + per]
            raw, offsets = self.vol.read_records(part)
            attrs = scan_window(
                raw,
                0,
                self.vol.record_dtype,
                self.cols,
                offsets,
                numbers=part,
                want_attributes=True,
            )
            assert attrs is not None
            base = self.cols.get(part)[:, 2]
            unnamed_data(self.vol, raw, part, base, attrs, self)
            hit = attrs.row[
                (attrs.type == s.SECURITY_DESCRIPTOR) | (attrs.type == s.ATTRIBUTE_LIST)
            ]
            sd = resident_values(raw, part, base, attrs, s.SECURITY_DESCRIPTOR)
            self.security.update(sd)
            self.reparse.update(resident_values(raw, part, base, attrs, s.REPARSE_POINT))
            owners = np.where(base[hit] != 0, base[hit], part[hit]).tolist()
            self.own_security.update(r for r in owners if r not in sd)
            keep = _parsed_again(raw, base, attrs)
            self.vol.keep_records(part[keep].tolist(), [raw[k].tobytes() for k in keep.tolist()])
        self.scanned[nums] = True
        self._snapshot(nums)
        fresh = self.cols.fn[self._fn_rows :]
        names = [
            n
            for k in range(self._fn_rows, len(fresh) + self._fn_rows)
            for n in self.cols.part_names(k)
        ]
        self._fn_rows = len(self.cols.fn)
        if fresh:
            rows = np.concatenate(fresh)
            keep = rows[:, 2] != s.NAMESPACE_DOS
            for (owner, pref), name in zip(
                rows[keep, :2].tolist(), np.array(names, object)[keep].tolist(), strict=True
            ):
                self.names.setdefault(owner, []).append((pref, name))
        for owner, name, size in self.cols.ads[self._ads_rows :]:
            self.streams.setdefault(owner, []).append((name, size))
        self._ads_rows = len(self.cols.ads)

    def _snapshot(self, nums: np.ndarray) -> None:
        """Keep the table rows of records ``nums`` (and of the base records their extension
        records added to) as Python lists: the per-record logic reads them many times."""
        owners = self.cols.get(nums)[:, 2]
        touched = np.union1d(nums, owners[owners != 0])
        touched = touched[touched < self.vol.record_count]
        self.facts.update(zip(touched.tolist(), self.cols.get(touched).tolist(), strict=True))

    def _adopt(self, nums: np.ndarray, twin: Records, changed: np.ndarray) -> np.ndarray:
        """Take the records of ``nums`` that are the same bytes on both sides from ``twin``
        (already parsed there); the others are left to read."""
        same = nums < twin.vol.record_count
        same[same] = twin.scanned[nums[same]]
        same &= ~np.isin(nums, changed, assume_unique=True)
        shared = nums[same]
        if shared.size == 0:
            return nums
        self.cols.put(shared, twin.cols.get(shared))
        self.own_security.update(twin.own_security.intersection(shared.tolist()))
        for r in shared.tolist():
            for own, other in (
                (self.facts, twin.facts),
                (self.names, twin.names),
                (self.streams, twin.streams),
                (self.resident, twin.resident),
                (self.runs, twin.runs),
                (self.security, twin.security),
                (self.reparse, twin.reparse),
            ):
                if r in other:
                    own[r] = other[r]  # type: ignore[index]
        self.scanned[shared] = True
        return nums[~same]

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
            wanted = {
                d
                for d in wanted
                if d < self.vol.record_count and not self.scanned[d] and not self.same_chain(d)
            }
            if not wanted:
                return
            self.load(np.array(sorted(wanted), np.int64))
            todo = wanted

    def in_use(self, r: int) -> bool:
        f = self.facts.get(r)
        return f is not None and bool(f[0] & s.RECORD_IN_USE) and f[2] == 0

    def is_dir(self, r: int) -> bool:
        f = self.facts.get(r)
        return f is not None and bool(f[0] & s.RECORD_IS_DIRECTORY)

    def sequence(self, r: int) -> int:
        f = self.facts.get(r)
        return f[1] if f is not None else 0 if r < self.vol.record_count else -1

    def path_of(self, parent_ref: int, name: str, r: int) -> str | None:
        """The path of record ``r``'s name ``name`` in directory ``parent_ref``."""
        prefix = self.prefix_of(parent_ref)
        return None if prefix is None else f"{prefix}/{self.component(r, name)}"

    def component(self, r: int, name: str) -> str:
        """``name`` (of record ``r``) as a path component; a name no path can hold (empty,
        ``.``, ``..``, holding ``/`` or NUL: neither Windows nor ntfs-3g makes one) would
        make the path of another file, so the volume is refused."""
        problem = component_problem(name)
        if problem is not None:
            raise CorruptImage(
                path=self.vol.path,
                structure=f"MFT record {r}",
                problem=f"the name {name!r} cannot be a path component: it {problem}",
                field="$FILE_NAME.name",
                offset=self.vol.base + self.vol.record_offset(r),
            )
        return name

    def prefix_of(self, parent_ref: int) -> str | None:
        """The path of the directory ``parent_ref`` names (None when gone, reused or in a
        cycle), cached; the twin's when that directory's chain is the same on both sides."""
        prefix = self.prefixes.get(parent_ref)
        if prefix is None:
            d, seq = parent_ref & s.REF_RECORD_MASK, (parent_ref >> 48) & 0xFFFF
            if self.twin is not None and self.same_chain(d):
                prefix = self.twin.prefix_of(parent_ref)
            else:
                prefix = self.dir_path(d, seq)
            if prefix is not None:
                self.prefixes[parent_ref] = prefix
        return prefix

    def same_chain(self, d: int) -> bool:
        """Directory ``d`` and its ancestors up to the root are records the twin has parsed
        and that hold the same bytes on both sides (none among ``changed``): their names,
        and so the paths below them, are the twin's, and need not be parsed here."""
        twin, verdict = self.twin, False
        if twin is None or self.changed is None:
            return False
        if self._changed_set is None:
            self._changed_set = set(self.changed.tolist())
        seen = []
        for _ in range(MAX_DEPTH):
            known = self._same_chain.get(d)
            if known is not None:
                verdict = known
                break
            seen.append(d)
            if d == s.ROOT_RECORD:
                verdict = True
                break
            inside = 0 <= d < min(self.vol.record_count, twin.vol.record_count)
            if not inside or not twin.scanned[d] or d in self._changed_set:
                break
            names = twin.names.get(d)
            if not names:
                break
            d = names[0][0] & s.REF_RECORD_MASK
        for x in seen:
            self._same_chain[x] = verdict
        return verdict

    def dir_path(self, d: int, seq: int) -> str | None:
        """The path of directory ``d`` (None when gone or reused), cached; a cycle of parent
        references is a CorruptImage (each of its files would have no path).  No depth
        limit: the walk ends at the root, a cached directory or a repeat (a limit on the
        hops of one walk left a deep tree's files out, or not, by the order of the walks)."""
        chain: list[tuple[int, str]] = []
        on_chain: set[int] = set()
        while d not in self.paths:
            if d in on_chain:
                raise CorruptImage(
                    path=self.vol.path,
                    structure=f"MFT record {d}",
                    problem="parent reference cycle",
                    field="$FILE_NAME.parent",
                    offset=self.vol.base + self.vol.record_offset(d),
                )
            if not 0 <= d < self.vol.record_count:
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
            chain.append((d, self.component(d, name)))
            on_chain.add(d)
            d, seq = pref & s.REF_RECORD_MASK, (pref >> 48) & 0xFFFF
        prefix = self.paths[d]
        if prefix is not None and d != s.ROOT_RECORD and self.sequence(d) != seq:
            prefix = None  # cached through a current reference; this one names a former file
        for c, name in reversed(chain):
            prefix = None if prefix is None else f"{prefix}/{name}"
            self.paths[c] = prefix
        return prefix

    def items(self, r: int) -> list[NtfsItem]:
        """Every name of in-use record ``r`` outside the metafiles; a name whose directory is
        gone (chkdsk's orphan) has no path, and leaving it out would lose the file without a
        word, so the volume is refused."""
        out = []
        for pref, name in self.names.get(r, ()):
            path = self.path_of(pref, name, r)
            if path is None:
                raise self.orphan(r, pref)
            if path.startswith(SYSTEM_DIR):  # metafiles: the volume's own
                continue
            out.append(self.item(r, path))
        return out

    def orphan(self, r: int, parent_ref: int) -> CorruptImage:
        d, seq = parent_ref & s.REF_RECORD_MASK, (parent_ref >> 48) & 0xFFFF
        return CorruptImage(
            path=self.vol.path,
            structure=f"MFT record {r}",
            problem=f"its parent directory, record {d} (sequence {seq}), is gone: "
            + self.gone_why(d, seq),
            field="$FILE_NAME.parent",
            offset=self.vol.base + self.vol.record_offset(r),
        )

    def gone_why(self, d: int, seq: int) -> str:
        if not 0 <= d < self.vol.record_count:
            return f"the MFT has {self.vol.record_count} records"
        if not self.in_use(d):
            return "that record is not in use"
        if not self.is_dir(d):
            return "that record is not a directory"
        if self.sequence(d) != seq:
            return f"that record was reused (sequence {self.sequence(d)})"
        if not self.names.get(d):
            return "that record has no name"
        return "a directory above it is gone"

    def item(self, r: int, path: str) -> NtfsItem:
        """In-use record ``r`` under the name at ``path``."""
        flags, _seq, _base, links, size, reparse, *si = self.facts.get(r, NO_FACTS)
        created, modified, mft_modified, accessed, attributes, security_id = si
        is_dir = bool(flags & s.RECORD_IS_DIRECTORY)
        streams = self.streams.get(r)
        return NtfsItem(
            path,
            r,
            is_dir,
            0 if is_dir else size,
            created,
            modified,
            accessed,
            attributes & 0xFF,
            attributes,
            security_id,
            reparse,
            links,
            mft_modified,
            tuple(sorted(streams)) if streams else (),
            r in self.own_security,
        )


def _parsed_again(raw: np.ndarray, base: np.ndarray, attrs: Attributes) -> np.ndarray:
    """Rows of ``raw`` (fixed up) that the full attribute parser will read again: records with
    named streams, an attribute list or a non-resident descriptor or reparse value, and
    extension records (read through their base's list)."""
    flat = raw.reshape(-1)
    t = attrs.type
    again = (t == s.ATTRIBUTE_LIST) | ((t == s.DATA) & (flat[attrs.pos + 9] != 0))
    again |= ((t == s.SECURITY_DESCRIPTOR) | (t == s.REPARSE_POINT)) & (flat[attrs.pos + 8] != 0)
    live = np.unique(attrs.row)
    return np.union1d(attrs.row[again], live[base[live] != 0])


class Plain(NamedTuple):
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


def unnamed_data(
    vol: NtfsVolume,
    raw: np.ndarray,
    numbers: np.ndarray,
    base: np.ndarray,
    attrs: Attributes,
    into: Records,
) -> None:
    """``record_data`` for every row of ``raw`` (fixed-up records ``numbers``) at once, from
    the attribute rows the scan found: resident values sliced out, single-run runlists decoded
    with numpy, anything else through ``_plain``.  Results go to ``into.resident``/``runs``."""
    flat = raw.reshape(-1)
    listed = np.zeros(numbers.size, bool)
    listed[attrs.row[attrs.type == s.ATTRIBUTE_LIST]] = True
    unnamed = (attrs.type == s.DATA) & (flat[attrs.pos + 9] == 0)
    rows, first = np.unique(attrs.row[unnamed], return_index=True)  # a record's first one
    pos, length = attrs.pos[unnamed][first], attrs.length[unnamed][first]
    own = ~listed[rows] & (base[rows] == 0) & (length >= s.ATTR_RESIDENT_SIZE)
    rows, pos, length = rows[own], pos[own], length[own]
    nonres = flat[pos + 8] != 0
    vfield = _int(flat, pos + 16, 8)
    vlen, voff = vfield & 0xFFFFFFFF, (vfield >> 32) & 0xFFFF
    res = ~nonres & (voff + vlen <= length)
    starts = (pos + voff)[res]
    for r, a, b in zip(
        numbers[rows[res]].tolist(), starts.tolist(), (starts + vlen[res]).tolist(), strict=True
    ):
        into.resident[r] = flat[a:b].tobytes()
    nr = np.flatnonzero(nonres & (length >= s.ATTR_NONRESIDENT_SIZE))
    good, lcn, count, size, init = _single_runs(vol, flat, pos[nr], length[nr])
    for r, c, n, z, i in zip(
        numbers[rows[nr[good]]].tolist(),
        lcn.tolist(),
        count.tolist(),
        size.tolist(),
        init.tolist(),
        strict=True,
    ):
        into.runs[r] = Plain([Run(0, c, n)], z, i)
    for k in nr[~good].tolist():
        a = int(pos[k])
        plain = _plain(vol, flat[a : a + int(length[k])].tobytes())
        if plain is not None:
            into.runs[int(numbers[rows[k]])] = plain


def resident_values(
    raw: np.ndarray, numbers: np.ndarray, base: np.ndarray, attrs: Attributes, atype: int
) -> dict[int, bytes]:
    """The value of each record's first resident attribute of type ``atype``, sliced out of
    ``raw`` (fixed-up records ``numbers``), for records that are base records without an
    attribute list (others: the full parser, see ``NtfsContent.extras``)."""
    flat = raw.reshape(-1)
    listed = np.zeros(numbers.size, bool)
    listed[attrs.row[attrs.type == s.ATTRIBUTE_LIST]] = True
    mine = attrs.type == atype
    rows, first = np.unique(attrs.row[mine], return_index=True)
    pos, length = attrs.pos[mine][first], attrs.length[mine][first]
    own = ~listed[rows] & (base[rows] == 0) & (length >= s.ATTR_RESIDENT_SIZE)
    rows, pos, length = rows[own], pos[own], length[own]
    vfield = _int(flat, pos + 16, 8)
    vlen, voff = vfield & 0xFFFFFFFF, (vfield >> 32) & 0xFFFF
    ok = (flat[pos + 8] == 0) & (voff + vlen <= length)
    starts = (pos + voff)[ok]
    return {
        r: flat[a:b].tobytes()
        for r, a, b in zip(
            numbers[rows[ok]].tolist(), starts.tolist(), (starts + vlen[ok]).tolist(), strict=True
        )
    }


def _single_runs(
    vol: NtfsVolume, flat: np.ndarray, pos: np.ndarray, length: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Which non-resident $DATA attributes at ``pos`` hold one plain run that ``_plain`` would
    accept, and that run's LCN, clusters, data size and initialized size."""
    flags, runs_at = _int(flat, pos + 12, 2), _int(flat, pos + 32, 2)
    start_vcn, last_vcn = _int(flat, pos + 16, 8), _int(flat, pos + 24, 8)
    size, init = _int(flat, pos + 48, 8), _int(flat, pos + 56, 8)
    ok = flags & (s.ATTR_FLAG_COMPRESSED | s.ATTR_FLAG_ENCRYPTED) == 0
    ok &= (start_vcn == 0) & (init >= 0) & (init <= size) & (runs_at >= 64) & (runs_at < length)
    at = np.where(ok, pos + runs_at, pos)
    header = flat[at].astype(np.int64)
    lsz, osz = header & 0xF, header >> 4
    end = runs_at + 1 + lsz + osz
    ok &= (lsz >= 1) & (lsz <= 8) & (osz >= 1) & (osz <= 8) & (end < length)
    ok &= flat[np.where(ok, pos + end, pos)] == 0
    count = _signed(flat, np.where(ok, at + 1, pos), lsz)
    lcn = _signed(flat, np.where(ok, at + 1 + lsz, pos), osz)
    total, cs = vol.geometry.total_clusters, vol.geometry.cluster_size
    ok &= (count > 0) & (lcn >= 0) & (lcn + count <= total) & (count == last_vcn + 1)
    ok &= count * cs >= size
    return ok, lcn[ok], count[ok], size[ok], init[ok]


def _int(flat: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    return gather(flat, at, width).astype(np.int64)


def _signed(flat: np.ndarray, at: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Little-endian signed integers of ``width`` (1..8) bytes at each index ``at``."""
    idx = np.minimum(at[:, None] + np.arange(8), flat.size - 1)
    raw = np.where(np.arange(8) < width[:, None], flat[idx], 0).astype(np.uint8)
    value = np.ascontiguousarray(raw).view("<i8")[:, 0]
    top = np.minimum(width, 7) * 8
    negative = (width < 8) & (value >> (top - 1) & 1 == 1)
    return np.where(negative, value - (np.int64(1) << top), value)


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
    lo = np.flatnonzero(changed).astype(np.int64) * BLOCK - start
    return _records_in(vol, lo, lo + BLOCK)


def masked_records(vol: NtfsVolume, start: int, masks: np.ndarray, sector_size: int) -> np.ndarray:
    """Record numbers of ``vol``'s MFT holding a sector that the sector masks mark as changed
    (``SECTOR_MASK_ROW`` rows: a changed block's disk offset and its bitmap of differing
    sectors, bit k = sector k, least significant bit first); ``start`` is the volume's disk
    offset.  Cost follows the changed sectors, not the blocks around them."""
    if len(masks) == 0:
        return np.zeros(0, np.int64)
    cs = vol.geometry.cluster_size
    runs = [
        (start + r.lcn * cs, start + (r.lcn + r.clusters) * cs)
        for r in vol.mft_runs
        if r.lcn is not None
    ]
    lo, hi = np.array(runs, np.int64).reshape(-1, 2).T
    at = masks["offset"].astype(np.int64)
    masks = masks[((at[:, None] < hi) & (at[:, None] + BLOCK > lo)).any(axis=1)]  # MFT blocks
    if len(masks) == 0:
        return np.zeros(0, np.int64)
    per = BLOCK // sector_size
    mask = np.frombuffer(masks["mask"].tobytes(), np.uint8).reshape(-1, 16)[:, : -(-per // 8)]
    row, byte = np.nonzero(mask)  # the few bytes with a changed sector, then their bits
    bits = np.unpackbits(mask[row, byte][:, None], axis=1, bitorder="little")
    hit, bit = np.nonzero(bits)
    row, k = row[hit], byte[hit] * 8 + bit
    keep = k < per
    row, k = row[keep], k[keep]
    sector = masks["offset"].astype(np.int64)[row] + k * sector_size - start
    return _records_in(vol, sector, sector + sector_size)


def _records_in(vol: NtfsVolume, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Record numbers of the MFT bytes that the volume byte ranges ``lo``..``hi`` cover."""
    cs, rs = vol.geometry.cluster_size, vol.geometry.record_size
    out: list[np.ndarray] = []
    for run in vol.mft_runs:
        if run.lcn is None:
            continue
        a0, b0 = run.lcn * cs, (run.lcn + run.clusters) * cs
        hit = (hi > a0) & (lo < b0)
        if not hit.any():
            continue
        a = np.maximum(lo[hit], a0) - a0 + run.vcn * cs
        b = np.minimum(hi[hit], b0) - a0 + run.vcn * cs
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
    base = recs.cols.get(nums[nums < recs.vol.record_count])[:, 2]
    return np.unique(base[base != 0])


@dataclass
class Change:
    change: str  # "added", "modified" (content carried when ``content``), "deleted"
    item: NtfsItem
    content: bool = False


Masks = tuple[np.ndarray, int]  # SECTOR_MASK_ROW rows and the sector size they count in


def diff(
    old: NtfsVolume,
    new: NtfsVolume,
    start: int,
    changed: np.ndarray,
    masks: Masks | None = None,
) -> list[Change]:
    """The changes of one NTFS volume at disk offset ``start`` (see the module text)."""
    return diff_with(NtfsContent(old), NtfsContent(new), start, changed, masks)


def diff_with(
    old_data: NtfsContent,
    new_data: NtfsContent,
    start: int,
    changed: np.ndarray,
    masks: Masks | None = None,
) -> list[Change]:
    """``diff`` with the content readers of base and child (their parsed $DATA is kept).

    With the block delta's sector ``masks`` the changed records are known exactly; without,
    every record in a changed block is compared byte for byte between base and child."""
    old, new = old_data.vol, new_data.vol
    if masks is not None:
        rows, sector = masks
        nums = masked_records(new, start, rows, sector)
        if (old.mft_runs, old.geometry) != (new.mft_runs, new.geometry) or (
            old.record_count > new.record_count
        ):  # the MFT moved or grew: its records are not where they were
            nums = np.union1d(nums, masked_records(old, start, rows, sector))
        nums = nums[nums >= s.FIRST_USER_RECORD]
    else:
        nums = np.union1d(
            changed_records(new, start, changed), changed_records(old, start, changed)
        )
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
    new_data.security.update(after.security)
    new_data.reparse.update(after.reparse)
    every = np.union1d(nums, extra)
    after.load_parents(every)
    before.twin, before.changed = after, every  # unchanged ancestors: parsed once, shared
    before.load_parents(every)
    _refuse_problems(before)
    _refuse_problems(after)
    out: list[Change] = []
    where = (old_data, new_data, changed, start)
    for r in every.tolist():
        found = _kept_file(before, after, r, where)
        out += found if found is not None else _record_changes(before, after, r, where)
    _refuse_problems(after)  # records below a renamed directory were read since
    new_data.resident.update(after.resident)  # records a renamed directory's subtree added
    new_data.runs.update(after.runs)
    new_data.security.update(after.security)
    new_data.reparse.update(after.reparse)
    return out


def _refuse_problems(recs: Records) -> None:
    """A record left out would read as deleted (or a subtree as smaller): refuse instead."""
    if recs.cols.problems:
        first = recs.cols.problems[0]
        raise CorruptImage(
            path=recs.vol.path,
            structure=f"MFT record {first.record}",
            problem=f"{first.problem} ({len(recs.cols.problems)} record(s) unreadable)",
            field="record",
            offset=first.offset,
        )


Where = tuple[NtfsContent, NtfsContent, np.ndarray, int]  # base, child, changed blocks, start


def _record_changes(before: Records, after: Records, r: int, where: Where) -> list[Change]:
    was = before.items(r) if before.in_use(r) else []
    now = after.items(r) if after.in_use(r) else []
    if not was and not now:
        return []
    if was and now and before.sequence(r) == after.sequence(r):
        return _same_file(after, r, was, now, where, _same_extras(before, after, r, where))
    return [Change("deleted", w) for w in was] + [Change("added", n, True) for n in now]


def _kept_file(before: Records, after: Records, r: int, where: Where) -> list[Change] | None:
    """``_record_changes`` for the usual case, read straight from the records' rows: a file
    with one name, the same on both sides (None when the case is another)."""
    fb, fa = before.facts.get(r), after.facts.get(r)
    if fb is None or fa is None or fb[1] != fa[1] or fb[2] or fa[2]:
        return None
    if not fb[0] & fa[0] & s.RECORD_IN_USE or (fb[0] | fa[0]) & s.RECORD_IS_DIRECTORY:
        return None
    names = after.names.get(r)
    if names is None or len(names) != 1 or before.names.get(r) != names:
        return None
    pref, name = names[0]
    path = after.path_of(pref, name, r)
    if (
        path is None
        or path.startswith(SYSTEM_DIR)
        or before.prefix_of(pref) != after.prefix_of(pref)
    ):
        return None
    if fb[4] != fa[4] or not _same_content(r, where):
        return [Change("modified", after.item(r, path), True)]
    streams_b, streams_a = sorted(before.streams.get(r, ())), sorted(after.streams.get(r, ()))
    if fb[5:8] != fa[5:8] or fb[10:] != fa[10:] or streams_b != streams_a:  # reparse, times,
        return [Change("modified", after.item(r, path))]  # attributes, security id, streams
    if not _same_extras(before, after, r, where):
        return [Change("modified", after.item(r, path))]
    return []


def _same_extras(before: Records, after: Records, r: int, where: Where) -> bool:
    """What the record rows do not show is equal on both sides: the own security descriptor
    and reparse value (sliced out with the rows) and the named streams' content (read only
    for records that have named streams)."""
    if before.security.get(r) != after.security.get(r):
        return False
    if before.reparse.get(r) != after.reparse.get(r):
        return False
    names = sorted(after.streams.get(r, ()))
    if names != sorted(before.streams.get(r, ())):
        return False
    old, new = where[0].vol, where[1].vol
    for name, _size in names:
        try:
            if _stream_digest(old, r, name) != _stream_digest(new, r, name):
                return False
        except StrataError:  # unreadable on a side: carried as changed, with its warning
            return False
    return True


def _stream_digest(vol: NtfsVolume, r: int, name: str) -> bytes:
    h = xxhash.xxh3_128()
    for piece in vol.iter_stream(r, name, 1 << 20):
        h.update(piece)
    return h.digest()


def _same_file(
    after: Records,
    r: int,
    was: list[NtfsItem],
    now: list[NtfsItem],
    where: Where,
    same_extras: bool = True,
) -> list[Change]:
    old_paths = {w.path: w for w in was}
    new_paths = {n.path: n for n in now}
    gone = [w for p, w in old_paths.items() if p not in new_paths]
    came = [n for p, n in new_paths.items() if p not in old_paths]
    if now[0].is_dir:
        if gone or came:  # renamed or moved: deleted at the old path, added with its subtree
            moved = [Change("deleted", w) for w in gone] + [Change("added", n) for n in came]
            return moved + _subtree(after, r, [n.path for n in came])
        return [
            Change("modified", n)
            for p, n in new_paths.items()
            if _dir_meta(old_paths[p]) != _dir_meta(n) or not same_extras
        ]
    out = [Change("deleted", w) for w in gone] + [Change("added", n, True) for n in came]
    kept = [(old_paths[p], n) for p, n in new_paths.items() if p in old_paths]
    if not kept:
        return out
    same = kept[0][0].size == kept[0][1].size and _same_content(r, where)
    for w, n in kept:
        if not same:
            out.append(Change("modified", n, True))
        elif _file_meta(w) != _file_meta(n) or not same_extras:
            out.append(Change("modified", n))
    return out


def _subtree(after: Records, d: int, paths: list[str]) -> list[Change]:
    """Everything below directory ``d`` (now at ``paths``), added with its content: what a
    renamed directory changes for the layer.  Children come from the directories' $I30
    indexes, a generation per bulk record load, so the cost follows the subtree."""
    vol = after.vol
    under = tuple(f"{p}/" for p in paths)
    out: list[Change] = []
    seen = {d}
    todo = [d]
    while todo:
        kids = []
        for parent in todo:
            for ref in vol.directory_children(parent):
                c = ref & s.REF_RECORD_MASK
                if c >= s.FIRST_USER_RECORD and c not in seen:
                    seen.add(c)
                    kids.append(c)
        after.load(np.array(sorted(kids), np.int64))
        todo = []
        for c in kids:
            if not after.in_use(c):
                continue
            is_dir = after.is_dir(c)
            out += [
                Change("added", i, not is_dir) for i in after.items(c) if i.path.startswith(under)
            ]
            if is_dir:
                todo.append(c)
    return out


def _dir_meta(i: NtfsItem) -> tuple[object, ...]:
    return (i.ntfs_attributes, i.created_ft, i.security_id, i.reparse_tag, i.streams)


def _file_meta(i: NtfsItem) -> tuple[object, ...]:
    return (*_dir_meta(i), i.modified_ft, i.size)


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


def settle(changes: list[Change], source: str = "<ntfs>") -> list[Change]:
    """One change per path, parents first: a path deleted and added is modified (a directory:
    opaque); below a deleted or opaque directory only that directory is recorded.  Paths are
    compared as NTFS keeps them: names that differ only in case (POSIX-namespace names, which
    ntfs-3g makes) are two files, both carried.  A deletion pairs with an addition of the same
    path, else with one of the same path in another case (a file renamed in case only).
    Two records named by one path (``source``'s directory holds one name once) are a
    CorruptImage: keeping either would leave the other file out without a word."""
    deleted = {c.item.path: c for c in changes if c.change == "deleted"}
    kept = [c for c in changes if c.change != "deleted"]
    prior: dict[int, NtfsItem] = {}
    for at, c in enumerate(kept):
        if c.item.path in deleted:
            prior[at] = deleted.pop(c.item.path).item
    folded: dict[str, list[str]] = {}
    for path in deleted:
        folded.setdefault(path.casefold(), []).append(path)
    for at, c in enumerate(kept):
        others = folded.get(c.item.path.casefold())
        if at not in prior and others:
            prior[at] = deleted.pop(others.pop(0)).item
    live: dict[str, Change] = {}
    for at, c in enumerate(kept):
        was = prior.get(at)
        if was is not None:
            kind = "opaque" if c.item.is_dir and was.is_dir else "modified"
            c = Change(kind, c.item, not c.item.is_dir)
        other = live.setdefault(c.item.path, c)
        if other.item.record != c.item.record:
            raise CorruptImage(
                path=source,
                structure=f"MFT records {other.item.record} and {c.item.record}",
                problem=f"both are named {c.item.path!r}",
                field="$FILE_NAME.name",
            )
        live[c.item.path] = c
    closed = {k for k, c in deleted.items() if c.item.is_dir}
    closed |= {k for k, c in live.items() if c.change == "opaque"}
    whiteouts = [c for k, c in deleted.items() if not any(_under(k, d) for d in closed if d != k)]
    ordered = sorted(live.values(), key=_walk_key)
    return ordered + sorted(whiteouts, key=_walk_key)


def _walk_key(c: Change) -> str:
    """Sorts like the path's components (a separator below every character): parents first."""
    return c.item.path.replace("/", "\0")


def _under(key: str, directory: str) -> bool:
    return key.startswith(directory + "/")
