"""File delta of a layer version: what the packaging machine added, modified and deleted in each
FAT or NTFS volume, with whiteouts for deletions and opaque directories (deleted and re-created).

References: docs/architecture.md ("Layers at file level"); Microsoft fatgen103 (the volumes);
FastCDC (Xia et al., USENIX ATC 2016) for file content, through ``strata.native.fastcdc_cuts``.

Three binary tables sit beside the block delta in the layer-version manifest:
``files`` (``file-entry-v1``, one row per changed entry, in walk order so parents come first),
``file-chunks`` (``chunks-v1`` whose offsets are offsets inside the file; an entry owns rows
``first_chunk .. first_chunk + chunk_count``) and ``file-names`` (``file-name-bytes-v1``, the
UTF-8 paths an entry points into).  Meta ``file_delta`` lists the volumes it covers.
NTFS volumes (``strata.layer.ntfsdelta``: only the MFT records in changed blocks are parsed) add
``file-ntfs`` (``ntfs-entry-v2``: full attributes, security id, reparse tag, record, links, the
entry's rows of ``file-streams`` and its rows of ``file-ntfs-blobs``), ``file-streams``
(``file-stream-v2``: each named $DATA stream's name (in file-names), size, digest and its
content's rows of ``file-chunks``, after every entry's own) and ``file-ntfs-blobs``
(``chunks-v1``, offset 0: one chunk per distinct security descriptor or reparse value; an
entry names the row of its self-relative descriptor and of its whole $REPARSE_POINT value).
Manifests written with ``ntfs-entry-v1``/``file-stream-v1`` (no bytes, only ids, tags and
stream names) still load, as rows that carry none.  Records whose descriptor or a stream
cannot be read are named in meta ``file_delta.warnings``; the rest of them is carried.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from strata.blockdev.base import BlockDevice
from strata.errors import CorruptImage, StrataError
from strata.fs import component_problem
from strata.fs.fat import FatEntry, FatVolume, open_fat
from strata.fs.fat.reader import long_name_problem
from strata.fs.ntfs import NtfsVolume, open_ntfs
from strata.fs.ntfs.attributes import Attribute
from strata.fs.ntfs.structs import FILETIME_UNIX_OFFSET
from strata.fs.volumes import located_volumes, open_volume
from strata.layer import ntfsdelta
from strata.layer.ntfsdelta import NtfsContent, NtfsItem
from strata.native import fastcdc_cuts
from strata.partition import PartitionTable, read_table
from strata.store import CHUNK_ROW, Manifest, Store, register_schema
from strata.store.ids import ZERO_ID, Buffer

CDC_MIN, CDC_AVG, CDC_MAX = 16 << 10, 64 << 10, 256 << 10
READ_WINDOW = 1 << 20
BLOCK = 64 << 10  # the block delta's grid

ADDED, MODIFIED, DELETED, OPAQUE = 1, 2, 3, 4
CHANGE_NAMES = {ADDED: "added", MODIFIED: "modified", DELETED: "deleted", OPAQUE: "opaque"}
FILE, DIRECTORY = 1, 2
KIND_NAMES = {FILE: "file", DIRECTORY: "dir"}
HAS_CONTENT = 0x01  # the entry carries its content (else: metadata only)
NO_TIME = -1

FILE_ENTRY_ROW = np.dtype(
    [
        ("partition", "<u2"),
        ("change", "u1"),
        ("kind", "u1"),
        ("attributes", "u1"),
        ("flags", "u1"),
        ("name_offset", "<u8"),
        ("name_length", "<u4"),
        ("size", "<u8"),
        ("created", "<i8"),  # microseconds since 1970 of the FAT local time; -1 none
        ("modified", "<i8"),
        ("accessed", "<i8"),
        ("first_chunk", "<u8"),
        ("chunk_count", "<u4"),
        ("digest", "V16"),  # xxh3-128 of the whole content (zeros for directories)
    ]
)
NAME_ROW = np.dtype([("byte", "u1")])
NTFS_ENTRY_V1 = np.dtype(
    [
        ("entry", "<u4"),  # row of the files table
        ("record", "<u8"),  # MFT record number in the child
        ("attributes", "<u4"),  # $STANDARD_INFORMATION file attributes, all 32 bits
        ("security_id", "<u4"),  # into the child's $Secure
        ("reparse_tag", "<u4"),
        ("links", "<u2"),
        ("stream_count", "<u2"),
        ("first_stream", "<u4"),
        ("mft_modified", "<i8"),  # microseconds since 1970; -1 none
    ]
)
NO_BLOB = 0xFFFFFFFF  # an entry without that blob
NTFS_ENTRY_ROW = np.dtype(
    [
        *NTFS_ENTRY_V1.descr,
        ("security_blob", "<u4"),  # row of file-ntfs-blobs: the self-relative descriptor
        ("reparse_blob", "<u4"),  # row of file-ntfs-blobs: the whole $REPARSE_POINT value
    ]
)
STREAM_V1 = np.dtype([("size", "<u8"), ("name_offset", "<u8"), ("name_length", "<u4")])
STREAM_ROW = np.dtype(
    [
        *STREAM_V1.descr,
        ("flags", "<u4"),  # HAS_CONTENT when the stream's content is carried
        ("first_chunk", "<u8"),  # rows of file-chunks
        ("chunk_count", "<u4"),
        ("digest", "V16"),  # xxh3-128 of the stream's content
    ]
)
register_schema("file-entry-v1", FILE_ENTRY_ROW)
register_schema("file-name-bytes-v1", NAME_ROW)
register_schema("ntfs-entry-v1", NTFS_ENTRY_V1)
register_schema("file-stream-v1", STREAM_V1)
register_schema("ntfs-entry-v2", NTFS_ENTRY_ROW)
register_schema("file-stream-v2", STREAM_ROW)
EPOCH = dt.datetime(1970, 1, 1)
STAMP_MIN = (dt.datetime.min - EPOCH) // dt.timedelta(microseconds=1)  # what datetimes hold
STAMP_MAX = (dt.datetime.max - EPOCH) // dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class Volume:
    partition: int
    start: int
    length: int
    fs: str = "fat"


@dataclass
class FileDelta:
    volumes: list[Volume]
    entries: np.ndarray
    chunks: np.ndarray
    names: bytes
    skipped: list[dict[str, Any]] = field(default_factory=list)
    ntfs: np.ndarray = field(default_factory=lambda: np.zeros(0, NTFS_ENTRY_ROW))
    streams: np.ndarray = field(default_factory=lambda: np.zeros(0, STREAM_ROW))
    blobs: np.ndarray = field(default_factory=lambda: np.zeros(0, CHUNK_ROW))
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def path(self, row: int) -> str:
        entry = self.entries[row]
        start = int(entry["name_offset"])
        return self.names[start : start + int(entry["name_length"])].decode(
            "utf-8", "surrogatepass"
        )

    def chunk_rows(self, row: int) -> np.ndarray:
        entry = self.entries[row]
        first = int(entry["first_chunk"])
        return self.chunks[first : first + int(entry["chunk_count"])]

    def rows_of(self, partition: int) -> np.ndarray:
        return np.flatnonzero(self.entries["partition"] == partition)

    def volume(self, partition: int) -> Volume | None:
        return next((v for v in self.volumes if v.partition == partition), None)

    def add_to(self, manifest: Manifest) -> None:
        manifest.add_table("files", "file-entry-v1", self.entries)
        manifest.add_table("file-chunks", "chunks-v1", self.chunks)
        manifest.add_table("file-names", "file-name-bytes-v1", np.frombuffer(self.names, NAME_ROW))
        if any(v.fs == "ntfs" for v in self.volumes):
            manifest.add_table("file-ntfs", "ntfs-entry-v2", self.ntfs)
            manifest.add_table("file-streams", "file-stream-v2", self.streams)
            manifest.add_table("file-ntfs-blobs", "chunks-v1", self.blobs)
        manifest.meta["file_delta"] = {
            "volumes": [_volume_meta(v) for v in self.volumes],
            "skipped": self.skipped,
            **({"warnings": self.warnings} if self.warnings else {}),
        }

    def summary(self) -> dict[str, Any]:
        counts = {name: 0 for name in CHANGE_NAMES.values()}
        for code, name in CHANGE_NAMES.items():
            counts[name] = int(np.count_nonzero(self.entries["change"] == code))
        return {
            "volumes": [v.partition for v in self.volumes],
            "entries": len(self.entries),
            **counts,
            "content_bytes": int(self.chunks["length"].sum(dtype=np.uint64)),
            "skipped": self.skipped,
            "warnings": self.warnings,
        }

    def ntfs_row(self, row: int) -> np.void | None:
        """The NTFS facts of entry ``row`` (None for FAT entries)."""
        at = int(self._ntfs_at[row]) if 0 <= row < len(self._ntfs_at) else -1
        return self.ntfs[at] if at >= 0 else None

    @functools.cached_property
    def _ntfs_at(self) -> np.ndarray:
        """Per entry, its row of ``ntfs`` (-1: none): the merge asks for every entry's."""
        at = np.full(len(self.entries), -1, np.int64)
        entries = self.ntfs["entry"].astype(np.int64)
        inside = entries < len(at)
        at[entries[inside][::-1]] = np.flatnonzero(inside)[::-1]  # the first row wins
        return at

    def stream_names(self, row: int) -> list[tuple[str, int]]:
        return [(name, int(st["size"])) for name, st in self.stream_rows(row)]

    def stream_rows(self, row: int) -> list[tuple[str, np.void]]:
        """Entry ``row``'s named streams: name and ``file-stream-v2`` row."""
        facts = self.ntfs_row(row)
        if facts is None:
            return []
        first = int(facts["first_stream"])
        out = []
        for st in self.streams[first : first + int(facts["stream_count"])]:
            start = int(st["name_offset"])
            name = self.names[start : start + int(st["name_length"])].decode(
                "utf-8", "surrogatepass"
            )
            out.append((name, st))
        return out

    def stream_chunks(self, stream: np.void) -> np.ndarray:
        """The ``file-chunks`` rows of a named stream's content (none when not carried)."""
        first = int(stream["first_chunk"])
        return self.chunks[first : first + int(stream["chunk_count"])]

    def blob(self, row: int, kind: str) -> np.ndarray:
        """The ``file-ntfs-blobs`` row (as a one-row table, for ``read_content``) of entry
        ``row``'s ``kind`` ("security" or "reparse"); empty when it carries none."""
        facts = self.ntfs_row(row)
        at = NO_BLOB if facts is None else int(facts[f"{kind}_blob"])
        return self.blobs[at : at + 1] if at != NO_BLOB else self.blobs[:0]

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for vol in self.volumes:
            rows = self.rows_of(vol.partition)
            out.append(
                {
                    "partition": vol.partition,
                    **({"filesystem": vol.fs} if vol.fs != "fat" else {}),
                    "entries": [
                        {
                            "path": self.path(int(r)),
                            "change": CHANGE_NAMES[int(self.entries[r]["change"])],
                            "type": KIND_NAMES[int(self.entries[r]["kind"])],
                            "size": int(self.entries[r]["size"]),
                        }
                        for r in rows
                    ],
                }
            )
        return out


def load(manifest: Manifest) -> FileDelta | None:
    """The file delta stored in a layer-version manifest, or None when it has none.

    Every row is checked before it is trusted (publish writes through these paths): volumes,
    changes, kinds and flags in range; names and chunk rows inside their tables; each path
    ``/``-rooted with no empty, ``.`` or ``..`` component nor NUL (on FAT, every component a
    valid long name) and named once per volume; a carried content's chunks adding up to its
    size; stamps a datetime can hold.  A failure is a CorruptImage naming the layer version,
    the table field and the row."""
    info = manifest.meta.get("file_delta")
    if info is None or "files" not in manifest.tables:
        return None
    bad = _Bad(manifest)
    volumes = _volumes(info, bad)
    names = _table(manifest, "file-names", bad).tobytes()
    entries = _table(manifest, "files", bad)
    chunks = _table(manifest, "file-chunks", bad)
    skipped, warnings = info.get("skipped", []), info.get("warnings", [])
    if not (_dicts(skipped) and _dicts(warnings)):
        raise bad("meta skipped and warnings must be lists of objects", "meta.file_delta")
    delta = FileDelta(volumes, entries, chunks, names, list(skipped))
    delta.warnings = list(warnings)
    _check_entries(delta, bad)
    if "file-ntfs" in manifest.tables:
        delta.ntfs = _widened(_table(manifest, "file-ntfs", bad), NTFS_ENTRY_ROW)
        delta.streams = _widened(_table(manifest, "file-streams", bad), STREAM_ROW)
        if "file-ntfs-blobs" in manifest.tables:
            delta.blobs = _table(manifest, "file-ntfs-blobs", bad)
        _check_ntfs(delta, bad)
    return delta


TABLE_SCHEMAS = {
    "files": ("file-entry-v1",),
    "file-chunks": ("chunks-v1",),
    "file-names": ("file-name-bytes-v1",),
    "file-ntfs": ("ntfs-entry-v2", "ntfs-entry-v1"),
    "file-streams": ("file-stream-v2", "file-stream-v1"),
    "file-ntfs-blobs": ("chunks-v1",),
}


def _table(manifest: Manifest, name: str, bad: _Bad) -> np.ndarray:
    """A file-delta table, present and of one of the schemas it is written with."""
    found = manifest.tables.get(name)
    if found is None:
        raise bad(f"the manifest has no table {name!r}", name)
    if found[0] not in TABLE_SCHEMAS[name]:
        raise bad(f"table {name!r} has schema {found[0]!r}", name)
    return found[1]


class _Bad:
    """Makes the CorruptImage of a stored file delta that fails a check."""

    def __init__(self, manifest: Manifest) -> None:
        meta = manifest.meta
        self.where = f"layer {meta.get('layer', '?')}:{meta.get('version', '?')}"

    def __call__(self, problem: str, field: str, row: int | None = None) -> CorruptImage:
        at = f"row {row}: " if row is not None else ""
        return CorruptImage(
            path=self.where, structure="file delta", problem=at + problem, field=field
        )


def _dicts(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(x, dict) for x in value)


def _volumes(info: object, bad: _Bad) -> list[Volume]:
    volumes = info.get("volumes") if isinstance(info, dict) else None
    if not _dicts(volumes):
        raise bad("meta volumes must be a list of objects", "meta.file_delta.volumes")
    out = []
    for v in volumes:  # type: ignore[union-attr]
        numbers = [v.get(k) for k in ("partition", "start", "length")]
        fs = v.get("fs", "fat")
        if not all(type(n) is int and 0 <= n < 1 << 63 for n in numbers) or fs not in FS_KINDS:
            raise bad(f"volume {v!r}"[:200] + " is not a volume", "meta.file_delta.volumes")
        out.append(Volume(*numbers, fs))  # type: ignore[arg-type]
    if len({v.partition for v in out}) != len(out):
        raise bad("a volume is listed twice", "meta.file_delta.volumes")
    return out


FS_KINDS = ("fat", "ntfs")


def _inside(first: np.ndarray, count: np.ndarray, total: int) -> np.ndarray:
    """Rows whose range ``first .. first + count`` lies in a table of ``total`` rows (no
    uint64 wrap-around)."""
    first, count, top = first.astype(np.uint64), count.astype(np.uint64), np.uint64(total)
    return (first <= top) & (count <= top - np.minimum(first, top))


def _first_bad(ok: np.ndarray) -> int | None:
    wrong = np.flatnonzero(~ok)
    return int(wrong[0]) if wrong.size else None


def _check_entries(delta: FileDelta, bad: _Bad) -> None:
    e, chunks = delta.entries, delta.chunks
    partitions = np.array([v.partition for v in delta.volumes], np.int64)
    checks = [
        (
            _inside(e["name_offset"], e["name_length"], len(delta.names)),
            "files.name_offset",
            "the name points past the names table",
        ),
        (
            _inside(e["first_chunk"], e["chunk_count"], len(chunks)),
            "files.first_chunk",
            "the content points past the chunk table",
        ),
        (np.isin(e["partition"], partitions), "files.partition", "a volume the delta lacks"),
        (np.isin(e["change"], list(CHANGE_NAMES)), "files.change", "an unknown change"),
        (np.isin(e["kind"], list(KIND_NAMES)), "files.kind", "an unknown kind"),
        ((e["flags"] | HAS_CONTENT) == HAS_CONTENT, "files.flags", "unknown flags"),
        (
            ~(
                (e["flags"] & HAS_CONTENT).astype(bool)
                & ((e["kind"] != FILE) | (e["change"] == DELETED))
            ),
            "files.flags",
            "content on a directory or a deleted entry",
        ),
    ]
    for name in ("created", "modified", "accessed"):
        stamp = e[name]
        ok = (stamp == NO_TIME) | ((stamp >= STAMP_MIN) & (stamp <= STAMP_MAX))
        checks.append((ok, f"files.{name}", "a time no date can hold"))
    for ok, field_name, problem in checks:
        row = _first_bad(ok)
        if row is not None:
            raise bad(problem, field_name, row)
    carried = np.flatnonzero(e["flags"] & HAS_CONTENT)
    _check_contents(e[carried], chunks, bad, "files", carried)
    _check_paths(delta, bad)


def _check_contents(
    rows: np.ndarray, chunks: np.ndarray, bad: _Bad, table: str, numbers: np.ndarray
) -> None:
    """The chunk rows of each carried content run from offset 0 without a gap and add up to
    its size (else a merge would write a file of another size than the entry says)."""
    if not len(rows):
        return
    ends = np.concatenate(([0], np.cumsum(chunks["length"], dtype=np.uint64)))
    first = rows["first_chunk"].astype(np.int64)
    count = rows["chunk_count"].astype(np.int64)
    sums = ends[first + count] - ends[first]
    row = _first_bad(sums == rows["size"])
    if row is not None:
        raise bad(
            f"its chunks hold {int(sums[row])} bytes, its size is {int(rows['size'][row])}",
            f"{table}.size",
            int(numbers[row]),
        )
    at = np.repeat(first, count) + (
        np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    )
    want = ends[at] - np.repeat(ends[first], count)
    wrong = _first_bad(chunks["offset"][at] == want)
    if wrong is not None:
        owner = int(np.searchsorted(np.cumsum(count), wrong, side="right"))
        raise bad(
            f"chunk row {int(at[wrong])} is at offset {int(chunks['offset'][at[wrong]])}, "
            f"not {int(want[wrong])}",
            "file-chunks.offset",
            int(numbers[owner]),
        )


def _check_paths(delta: FileDelta, bad: _Bad) -> None:
    """``path_problem`` of every entry, and each path named once per volume.  The paths are
    joined (NUL-separated: no path holds one) and scanned at once (``_suspects``); only the
    rows flagged there are parsed one by one (a 200 000-entry delta: a fifth of a second)."""
    e = delta.entries
    if not len(e):
        return
    starts, lengths = e["name_offset"].tolist(), e["name_length"].tolist()
    raw = [delta.names[a : a + n] for a, n in zip(starts, lengths, strict=True)]
    joined = b"\0" + b"\0".join(raw)
    if joined.count(b"\0") != len(raw):
        row = next(i for i, r in enumerate(raw) if b"\0" in r)
        raise bad("the path holds a NUL", "file-names", row)
    try:
        paths = joined.decode("utf-8", "surrogatepass").split("\0")[1:]
    except UnicodeDecodeError as err:
        row = joined.count(b"\0", 0, err.start + 1) - 1
        raise bad(f"the path is not UTF-8 ({err.reason})", "files.name_offset", row) from err
    fat_volumes = {v.partition for v in delta.volumes if v.fs == "fat"}
    partitions = e["partition"].tolist()
    for row in _suspects(joined, raw, e["name_length"]):
        problem = path_problem(paths[row], partitions[row] in fat_volumes)
        if problem is not None:
            raise bad(f"the path {_shown(paths[row])} {problem}", "file-names", row)
    keys: list[Any]
    if len(delta.volumes) == 1:  # the usual case: the paths alone, upper-cased at once on FAT
        fat = delta.volumes[0].fs == "fat"
        keys = "\0".join(paths).upper().split("\0") if fat else paths
    else:
        keys = [
            (p, path.upper() if p in fat_volumes else path)
            for p, path in zip(partitions, paths, strict=True)
        ]
    if len(set(keys)) != len(keys):
        seen: dict[Any, int] = {}
        for row, key in enumerate(keys):
            other = seen.setdefault(key, row)
            if other != row:
                raise bad(f"the path {_shown(paths[row])} is also row {other}'s", "file-names", row)


_FAT_FORBIDDEN = np.zeros(256, bool)
_FAT_FORBIDDEN[list(b'\\:*?"<>|')] = True
_FAT_FORBIDDEN[1:0x20] = True
_ALLOWED = bytes(np.flatnonzero(~_FAT_FORBIDDEN).astype(np.uint8))  # ``translate`` deletes
_ENDINGS = np.zeros(256, bool)
_ENDINGS[list(b"/. ")] = True


def _suspects(joined: bytes, raw: list[bytes], lengths: np.ndarray) -> list[int]:
    """The rows ``path_problem`` may refuse (a superset), from ``joined`` (NUL, then the rows
    NUL-separated): a row not starting with '/', or starting with '/$'; a component ending in
    '/' (empty), '.' ('.', '..', a trailing dot) or ' '; a byte a FAT name cannot hold; a
    component of more than 127 bytes (a FAT name holds 255 UTF-16 units).  UTF-8 never holds
    an ASCII byte inside another character, so bytes are enough."""
    arr = np.frombuffer(joined + b"\0", np.uint8)
    nuls = np.flatnonzero(arr == 0)  # row r starts after nuls[r]; the last one ends the text
    bad_start = np.flatnonzero(arr[nuls[:-1] + 1] != ord("/"))
    metafile = np.flatnonzero(arr[np.minimum(nuls[:-1] + 2, len(arr) - 1)] == ord("$"))
    seps = np.flatnonzero((arr == ord("/")) | (arr == 0))[1:]
    ending = _ENDINGS[arr[seps - 1]]
    forbidden = (
        np.flatnonzero(_FAT_FORBIDDEN[arr]) if joined.translate(None, _ALLOWED) else seps[:0]
    )
    rows = np.concatenate(
        [
            bad_start,
            metafile,
            np.searchsorted(nuls, seps[ending] - 1, "right") - 1,
            np.searchsorted(nuls, forbidden, "right") - 1,
        ]
    )
    long = [
        i for i in np.flatnonzero(lengths > 128).tolist() if max(map(len, raw[i].split(b"/"))) > 127
    ]
    return sorted(set(rows.tolist()) | set(long))


def _shown(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:60] + "…" + shown[-19:]


# The root's NTFS metadata files (records 0-11 and $Extend, whose files the capture leaves
# out): a delta naming one would have the merge edit the volume's own structures.
NTFS_METAFILES = frozenset(
    {"$MFT", "$MFTMIRR", "$LOGFILE", "$VOLUME", "$ATTRDEF", "$BITMAP", "$BOOT", "$BADCLUS"}
    | {"$SECURE", "$UPCASE", "$EXTEND"}
)


def path_problem(path: str, fat: bool) -> str | None:
    """Why ``path`` cannot name an entry of a volume's tree (on FAT: of a FAT volume; else of
    an NTFS one), else None."""
    parts = path.split("/")
    if parts[0] != "" or len(parts) < 2:
        return "does not start with '/'"
    if not fat and parts[1].upper() in NTFS_METAFILES:
        return f"lies in NTFS metadata file {parts[1]}"
    for part in parts[1:]:
        problem = component_problem(part)
        if problem is None and fat:
            problem = long_name_problem(part)
        if problem is not None:
            return f"has a component that {problem}"
    return None


def _widened(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows of an older schema (``ntfs-entry-v1``, ``file-stream-v1``) in ``dtype``: the
    fields they lack say "not carried" (no blob, no chunks)."""
    if rows.dtype == dtype:
        return rows
    out = np.zeros(len(rows), dtype)
    for name in rows.dtype.names or ():
        out[name] = rows[name]
    for name in ("security_blob", "reparse_blob"):
        if name in (dtype.names or ()) and name not in (rows.dtype.names or ()):
            out[name] = NO_BLOB
    return out


def _check_ntfs(delta: FileDelta, bad: _Bad) -> None:
    entries, streams, ntfs = delta.entries, delta.streams, delta.ntfs
    blobs = len(delta.blobs)
    checks = [
        (ntfs["entry"] < len(entries), "file-ntfs.entry", "the row points past the entries"),
        (
            _inside(ntfs["first_stream"], ntfs["stream_count"], len(streams)),
            "file-ntfs.first_stream",
            "the streams point past the streams table",
        ),
        (
            (ntfs["security_blob"] == NO_BLOB) | (ntfs["security_blob"] < blobs),
            "file-ntfs.security_blob",
            "the row points past the blobs table",
        ),
        (
            (ntfs["reparse_blob"] == NO_BLOB) | (ntfs["reparse_blob"] < blobs),
            "file-ntfs.reparse_blob",
            "the row points past the blobs table",
        ),
        (
            _inside(streams["name_offset"], streams["name_length"], len(delta.names)),
            "file-streams.name_offset",
            "the name points past the names table",
        ),
        (
            _inside(streams["first_chunk"], streams["chunk_count"], len(delta.chunks)),
            "file-streams.first_chunk",
            "the content points past the chunk table",
        ),
        ((streams["flags"] | HAS_CONTENT) == HAS_CONTENT, "file-streams.flags", "unknown flags"),
    ]
    for ok, field_name, problem in checks:
        row = _first_bad(ok)
        if row is not None:
            raise bad(problem, field_name, row)
    carried = np.flatnonzero(streams["flags"] & HAS_CONTENT)
    _check_contents(streams[carried], delta.chunks, bad, "file-streams", carried)
    for row, st in enumerate(streams):
        start = int(st["name_offset"])
        raw = delta.names[start : start + int(st["name_length"])]
        try:
            name = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as e:
            raise bad(f"the name is not UTF-8 ({e.reason})", "file-streams.name_offset", row) from e
        if not name or "\0" in name:
            raise bad(f"stream name {name!r} is empty or holds a NUL", "file-streams", row)


def _volume_meta(v: Volume) -> dict[str, Any]:
    meta: dict[str, Any] = {"partition": v.partition, "start": v.start, "length": v.length}
    if v.fs != "fat":
        meta["fs"] = v.fs
    return meta


# -- file-system volumes of a disk -------------------------------------------------------------
def volumes_of(disk: BlockDevice, fs: str, table: PartitionTable | None = None) -> list[Volume]:
    """Every volume of ``disk`` (the whole disk, or its partitions) that ``fs.detect``
    recognises as ``fs``."""
    try:
        table = table if table is not None else read_table(disk)
    except StrataError:
        return []
    return file_volumes(disk, table, (fs,))


def file_volumes(
    disk: BlockDevice, table: PartitionTable, kinds: tuple[str, ...] = ("fat", "ntfs")
) -> list[Volume]:
    """Every volume of ``disk`` holding a file system of ``kinds`` (``Volume.partition`` is
    ``WHOLE_DISK`` for a file system on the whole disk), each probed once."""
    return [
        Volume(v.number, v.start, v.length, v.fs)
        for v in located_volumes(disk, table)
        if v.fs is not None and v.fs in kinds
    ]


def fat_volumes(disk: BlockDevice, table: PartitionTable | None = None) -> list[Volume]:
    return volumes_of(disk, "fat", table)


def ntfs_volumes(disk: BlockDevice, table: PartitionTable | None = None) -> list[Volume]:
    return volumes_of(disk, "ntfs", table)


# -- capture ----------------------------------------------------------------------------------
@dataclass
class _Row:
    partition: int
    path: str
    change: int
    entry: FatEntry | NtfsItem
    content: FatVolume | NtfsContent | None = None  # where the carried content is read from
    ntfs: NtfsContent | None = None  # the child volume of an NTFS entry (its metadata bytes)


def capture(
    store: Store,
    child: BlockDevice,
    base: BlockDevice,
    changed_offsets: np.ndarray,
    *,
    masks: np.ndarray | None = None,
    level: int | None = None,
) -> FileDelta | None:
    """The file delta of every FAT and NTFS volume of ``child`` against ``base``; None when it
    has none.

    ``changed_offsets`` are the disk offsets of the blocks the block delta holds: a file whose
    clusters are where they were and lie in no changed block is unchanged without reading it.
    ``masks`` (``SECTOR_MASK_ROW`` rows, in ``child``'s sectors, taken against this same
    ``base``) name the sectors that differ: NTFS then parses exactly the changed MFT records
    instead of comparing every record of the changed blocks.
    A volume that does not read cleanly on either side is skipped and named in ``skipped``.
    """
    try:
        table = read_table(child)  # read once: every volume is opened through it
    except StrataError:
        return None
    volumes = file_volumes(child, table)
    if not volumes:
        return None
    changed = _block_bitmap(changed_offsets, child.size)
    rows: list[_Row] = []
    kept: list[Volume] = []
    skipped: list[dict[str, Any]] = []
    base_table: PartitionTable | None = None  # read with a volume: failing skips that volume
    for vol in sorted(volumes, key=lambda v: v.partition):
        try:
            if base_table is None:
                base_table = read_table(base)
            if vol.fs == "ntfs":
                both = (base_table, table)
                rows += diff_ntfs(vol, base, child, changed, _masks(masks, child), both)
                kept.append(vol)
                continue
            new = open_fat(open_volume(child, vol.partition, table))
            old = open_fat(open_volume(base, vol.partition, base_table))
            rows += diff_volumes(vol, old, new, changed)
        except StrataError as e:
            skipped.append({"partition": vol.partition, "reason": str(e)})
            continue
        kept.append(vol)
    return _build(store, kept, rows, skipped, level)


NTFS_CHANGES = {"added": ADDED, "modified": MODIFIED, "deleted": DELETED, "opaque": OPAQUE}


def _masks(masks: np.ndarray | None, child: BlockDevice) -> ntfsdelta.Masks | None:
    return None if masks is None else (masks, child.sector_size)


def diff_ntfs(
    vol: Volume,
    base: BlockDevice,
    child: BlockDevice,
    changed: np.ndarray,
    masks: ntfsdelta.Masks | None = None,
    tables: tuple[PartitionTable | None, PartitionTable | None] = (None, None),
) -> list[_Row]:
    """Changed entries of one NTFS volume, from only the MFT records in changed blocks (with
    ``masks``: only the changed records); ``tables``: base's and child's partition tables
    when already read."""
    old = open_ntfs(open_volume(base, vol.partition, tables[0]))
    new = open_ntfs(open_volume(child, vol.partition, tables[1]))
    return ntfs_rows(vol, old, new, changed, masks)


def ntfs_rows(
    vol: Volume,
    old: NtfsVolume,
    new: NtfsVolume,
    changed: np.ndarray,
    masks: ntfsdelta.Masks | None = None,
) -> list[_Row]:
    """Changed entries of NTFS volume ``vol`` (``old`` in the base, ``new`` in the child)."""
    reader = NtfsContent(new)
    found = ntfsdelta.diff_with(NtfsContent(old), reader, vol.start, changed, masks)
    changes = ntfsdelta.settle(found, new.path)
    return [
        _Row(
            vol.partition,
            c.item.path,
            NTFS_CHANGES[c.change],
            c.item,
            reader if c.content and not c.item.is_dir and reader.readable(c.item) else None,
            reader,
        )
        for c in changes
    ]


def capture_volume(
    store: Store,
    old: NtfsVolume,
    new: NtfsVolume,
    changed_offsets: np.ndarray,
    *,
    masks: np.ndarray | None = None,
    level: int | None = None,
) -> FileDelta:
    """The file delta of a bare NTFS volume (a whole device, partition number 0)."""
    changed = _block_bitmap(changed_offsets, new.dev.size)
    vol = Volume(0, 0, new.dev.size, "ntfs")
    rows = ntfs_rows(vol, old, new, changed, _masks(masks, new.dev))
    return _build(store, [vol], rows, [], level)


def _block_bitmap(offsets: np.ndarray, size: int) -> np.ndarray:
    bitmap = np.zeros(-(-size // BLOCK) + 1, bool)
    bitmap[np.asarray(offsets, np.int64) // BLOCK] = True
    return bitmap


def _touches(vol: FatVolume, entry: FatEntry, changed: np.ndarray, disk_base: int) -> bool:
    for offset, length in vol.file_runs(entry):
        lo = (disk_base + offset) // BLOCK
        hi = (disk_base + offset + length - 1) // BLOCK
        if changed[lo : hi + 1].any():
            return True
    return False


def _digest(vol: FatVolume, entry: FatEntry) -> bytes:
    h = xxhash.xxh3_128()
    for piece in vol.iter_file(entry, READ_WINDOW):
        h.update(piece)
    return h.digest()


def same_content(
    old: FatVolume, new: FatVolume, a: FatEntry, b: FatEntry, changed: np.ndarray, start: int
) -> bool:
    if a.size != b.size:
        return False
    if old.file_runs(a) == new.file_runs(b) and not _touches(new, b, changed, start):
        return True
    return _digest(old, a) == _digest(new, b)


def _meta_differs(a: FatEntry, b: FatEntry) -> bool:
    return (a.attributes, a.modified, a.created) != (b.attributes, b.modified, b.created)


def diff_volumes(vol: Volume, old: FatVolume, new: FatVolume, changed: np.ndarray) -> list[_Row]:
    """Changed entries of one volume in walk order, then the topmost deleted ones."""
    before = {path.upper(): (path, e) for path, e in old.walk()}
    seen: set[str] = set()
    covered: set[str] = set()  # added, opaque or replaced directories: their subtree is handled
    rows: list[_Row] = []
    for path, entry in new.walk():
        key = path.upper()
        seen.add(key)
        prior = before.get(key)
        if prior is None or _parent(key) in covered:
            rows.append(_Row(vol.partition, path, ADDED, entry, new))
            if entry.is_dir:
                covered.add(key)
            continue
        was = prior[1]
        if was.is_dir and not entry.is_dir:
            covered.add(key)
        if entry.is_dir:
            if not was.is_dir or was.first_cluster != entry.first_cluster:
                rows.append(_Row(vol.partition, path, OPAQUE, entry))
                covered.add(key)
            elif _meta_differs(was, entry):
                rows.append(_Row(vol.partition, path, MODIFIED, entry))
            continue
        if was.is_dir or not same_content(old, new, was, entry, changed, vol.start):
            rows.append(_Row(vol.partition, path, MODIFIED, entry, new))
        elif _meta_differs(was, entry):
            rows.append(_Row(vol.partition, path, MODIFIED, entry))
    return rows + _whiteouts(vol, before, seen, covered)


def _parent(key: str) -> str:
    return key.rpartition("/")[0]


def _whiteouts(
    vol: Volume, before: dict[str, tuple[str, FatEntry]], seen: set[str], covered: set[str]
) -> list[_Row]:
    """Deleted entries; below a deleted directory only the directory itself is recorded."""
    rows: list[_Row] = []
    gone: set[str] = set()
    for key, (path, entry) in before.items():  # walk order: parents first
        if key in seen:
            continue
        gone.add(key)
        parent = _parent(key)
        if parent in gone or parent in covered:
            continue
        rows.append(_Row(vol.partition, path, DELETED, entry))
    return rows


def _stamp(value: dt.datetime | dt.date | None) -> int:
    if value is None:
        return NO_TIME
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    return (value - EPOCH) // dt.timedelta(microseconds=1)


def unstamp(value: int) -> dt.datetime | None:
    return None if value == NO_TIME else EPOCH + dt.timedelta(microseconds=int(value))


def _ft_stamp(filetime: int) -> int:
    """``_stamp(filetime_naive(filetime))`` without making a datetime."""
    if filetime <= 0:
        return NO_TIME
    micros = (filetime - FILETIME_UNIX_OFFSET) // 10
    return micros if STAMP_MIN <= micros <= STAMP_MAX else NO_TIME


def _all_stamps(rows: list[_Row]) -> np.ndarray:
    """Created, modified and accessed stamps of every row; NTFS FILETIMEs converted with
    numpy (``_ft_stamp`` of each)."""
    out = np.empty((len(rows), 3), np.int64)
    ntfs = [i for i, row in enumerate(rows) if isinstance(row.entry, NtfsItem)]
    if ntfs:
        ft = np.array(
            [(e.created_ft, e.modified_ft, e.accessed_ft) for e in (rows[i].entry for i in ntfs)],
            np.int64,
        ).reshape(-1, 3)
        micros = (ft - FILETIME_UNIX_OFFSET) // 10
        ok = (ft > 0) & (micros >= STAMP_MIN) & (micros <= STAMP_MAX)
        out[ntfs] = np.where(ok, micros, NO_TIME)
    if len(ntfs) < len(rows):
        fat = [i for i, row in enumerate(rows) if not isinstance(row.entry, NtfsItem)]
        out[fat] = np.array([_stamps(rows[i].entry) for i in fat], np.int64).reshape(-1, 3)
    return out


def _stamps(e: FatEntry | NtfsItem) -> tuple[int, int, int]:
    if isinstance(e, NtfsItem):
        return _ft_stamp(e.created_ft), _ft_stamp(e.modified_ft), _ft_stamp(e.accessed_ft)
    return _stamp(e.created), _stamp(e.modified), _stamp(e.accessed)


def _build(
    store: Store,
    volumes: list[Volume],
    rows: list[_Row],
    skipped: list[dict[str, Any]],
    level: int | None,
) -> FileDelta:
    n = len(rows)
    entries = np.zeros(n, FILE_ENTRY_ROW)
    encoded = [row.path.encode("utf-8", "surrogatepass") for row in rows]
    lengths = np.fromiter(map(len, encoded), np.int64, n)
    names = bytearray(b"".join(encoded))
    if n:
        dirs = np.fromiter((row.entry.is_dir for row in rows), bool, n)
        entries["partition"] = [row.partition for row in rows]
        entries["change"] = [row.change for row in rows]
        entries["kind"] = np.where(dirs, DIRECTORY, FILE)
        entries["attributes"] = [row.entry.attributes for row in rows]
        entries["size"] = np.where(dirs, 0, [row.entry.size for row in rows])
        entries["name_offset"] = np.cumsum(lengths) - lengths
        entries["name_length"] = lengths
        stamps = _all_stamps(rows)
        entries["created"], entries["modified"], entries["accessed"] = stamps.T
    warnings: list[dict[str, Any]] = []
    metas = _ntfs_metas(rows, warnings)
    carried = [i for i, r in enumerate(rows) if r.content is not None and not r.entry.is_dir]
    chunks, blobs, streams_done = _store_contents(store, rows, carried, entries, metas, level)
    ntfs, streams = _ntfs_tables(rows, names, streams_done)
    return FileDelta(
        volumes, entries, chunks, bytes(names), skipped, ntfs, streams, blobs, warnings
    )


@dataclass
class _Meta:
    """The bytes an NTFS entry carries besides its unnamed $DATA."""

    security: bytes | None = None
    reparse: bytes | None = None
    streams: Mapping[str, list[Attribute]] = field(default_factory=dict)  # readable named ones


def _ntfs_metas(rows: list[_Row], warnings: list[dict[str, Any]]) -> dict[int, _Meta]:
    """Per NTFS row still present in the child: its security descriptor (from $Secure by
    id, each id read once; or its own attribute), reparse value and readable named streams.
    What cannot be read is left out and named in ``warnings``, one per record and problem."""
    out: dict[int, _Meta] = {}
    for i, row in enumerate(rows):
        e, reader = row.entry, row.ntfs
        if not isinstance(e, NtfsItem) or reader is None or row.change == DELETED:
            continue
        problems: list[str] = []
        try:
            extras = reader.extras(e)
        except StrataError as err:
            problems.append(f"attributes: {err}")
            extras = ntfsdelta.Extras()
        if extras.problems:
            problems += extras.problems
        security = reader.descriptor(e.security_id) if e.security_id else None
        if e.security_id and security is None:
            problems.append(f"security id {e.security_id} is not in $Secure:$SDS")
        if security is None:  # the id rules when set (as ntfs-3g and Windows read it)
            security = extras.security
        if e.reparse_tag and extras.reparse is None:
            problems.append(f"reparse tag {e.reparse_tag:#x} without a readable value")
        for problem in problems:
            where = {"partition": row.partition, "path": row.path, "record": e.record}
            warnings.append({**where, "problem": problem})
        out[i] = _Meta(security, extras.reparse, extras.streams)
    return out


def _ntfs_tables(
    rows: list[_Row],
    names: bytearray,
    done: dict[tuple[int, str], Any],
) -> tuple[np.ndarray, np.ndarray]:
    """The NTFS facts of the NTFS rows; stream names are appended to ``names``.  ``done``
    (from ``_store_contents``) holds per (row, stream name) carried its first chunk row,
    chunk rows and digest, per (row, _SECURITY or _REPARSE) its blob row."""
    facts: list[tuple[int, ...]] = []
    streams: list[tuple[Any, ...]] = []
    for i, row in enumerate(rows):
        e = row.entry
        if not isinstance(e, NtfsItem):
            continue
        sec, rep = done.get((i, _SECURITY), NO_BLOB), done.get((i, _REPARSE), NO_BLOB)
        facts.append(
            (
                i,
                e.record,
                e.ntfs_attributes,
                e.security_id,
                e.reparse_tag,
                min(e.links, 0xFFFF),
                len(e.streams),
                len(streams),
                _ft_stamp(e.mft_modified),
                sec,
                rep,
            )
        )
        for name, size in e.streams:
            encoded = name.encode("utf-8", "surrogatepass")
            carried = done.get((i, name))
            if carried is None:
                streams.append((size, len(names), len(encoded), 0, 0, 0, bytes(16)))
            else:
                first, count, digest = carried  # type: ignore[misc]
                streams.append((size, len(names), len(encoded), HAS_CONTENT, first, count, digest))
            names += encoded
    table = np.zeros(len(facts), NTFS_ENTRY_ROW)
    for name, column in zip(NTFS_ENTRY_ROW.names or (), zip(*facts, strict=True), strict=False):
        table[name] = column  # by column: a structured array from tuples costs twice as much
    return table, np.array(streams, STREAM_ROW)


_SECURITY, _REPARSE = "\0security", "\0reparse"  # keys beside stream names (never one)


class _Chunks:
    """The ``file-chunks`` rows being made: content cut like a file's, as one stream."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.lengths: list[int] = []

    def small(self, data: bytes) -> Iterator[bytes]:
        """The one chunk of a content of at most CDC_MIN bytes (none when empty); its digest
        is left for ``digests`` to take from the chunk's id (both are its xxh3-128)."""
        first = len(self.offsets)
        if data:
            self.offsets.append(0)
            self.lengths.append(len(data))
            yield data
        self.last = (first, len(self.offsets) - first, None)

    def cut(self, pieces: Iterator[bytes], size: int) -> Iterator[Buffer]:
        """Yield the chunks of one content (one chunk up to CDC_MIN: FastCDC never cuts
        below its minimum); ``self.last`` is then (first row, rows, xxh3-128 digest or None:
        see ``small``)."""
        if size <= CDC_MIN:
            yield from self.small(b"".join(pieces))
            return
        first = len(self.offsets)
        digest = xxhash.xxh3_128()
        for at, chunk in cdc_chunks(_hashing(pieces, digest)):
            self.offsets.append(at)
            self.lengths.append(len(chunk))
            yield chunk
        self.last = (first, len(self.offsets) - first, digest.digest())


def _digest_of(
    digest: bytes | None, first: int, count: int, ids: list[bytes], lengths: list[int]
) -> bytes:
    """A content's xxh3-128: given, or that of its one chunk, which is the chunk's id unless
    the store named it by the zero id (or the content is empty)."""
    if digest is not None:
        return digest
    if count == 0:
        return EMPTY_DIGEST
    if ids[first] == ZERO_ID:
        return xxhash.xxh3_128_digest(bytes(lengths[first]))
    return ids[first]


EMPTY_DIGEST = xxhash.xxh3_128_digest(b"")


def _store_contents(
    store: Store,
    rows: list[_Row],
    carried: list[int],
    entries: np.ndarray,
    metas: dict[int, _Meta],
    level: int | None,
) -> tuple[np.ndarray, np.ndarray, dict[tuple[int, str], Any]]:
    """Chunk every carried file with FastCDC in one stream into ``put_many``; NTFS files are
    taken in disk order, small neighbours read together.  Then the named streams of NTFS
    entries (cut the same way, their rows after the files'), then each distinct security
    descriptor and reparse value as one blob chunk.  Returns the file-chunks table, the
    blobs table and, per (row, stream name or blob key), where its bytes went."""
    cuts = _Chunks()
    done: list[tuple[int, int, int, bytes]] = []  # row, first chunk, chunks, digest
    for reader in {id(r.content): r.content for r in rows}.values():
        if isinstance(reader, NtfsContent):
            reader.prefetch([rows[i].entry for i in carried if rows[i].content is reader])  # type: ignore[misc]
    carried = sorted(carried, key=lambda i: _disk_order(rows[i]))
    placed: dict[tuple[int, str], Any] = {}
    blobs: dict[bytes, int] = {}
    for i, meta in sorted(metas.items()):
        for key, value in ((_SECURITY, meta.security), (_REPARSE, meta.reparse)):
            if value is not None:
                placed[(i, key)] = blobs.setdefault(value, len(blobs))

    def stream() -> Iterator[Buffer]:
        for i in carried:
            row = rows[i]
            assert row.content is not None
            whole = row.content.whole(row.entry) if isinstance(row.entry, NtfsItem) else None
            if whole is None:
                pieces = row.content.iter_file(row.entry, READ_WINDOW)  # type: ignore[arg-type]
                yield from cuts.cut(pieces, row.entry.size)
            elif len(whole) > CDC_MIN:
                yield from cuts.cut(iter((whole,)), len(whole))
            elif whole:  # ``cuts.small`` inline: most files of a delta are small
                done.append((i, len(cuts.offsets), 1, None))
                cuts.offsets.append(0)
                cuts.lengths.append(len(whole))
                yield whole
                continue
            else:
                cuts.last = (len(cuts.offsets), 0, None)
            done.append((i, *cuts.last))
        same_record: dict[tuple[int, int, str], tuple[int, int, bytes]] = {}
        for i, meta in sorted(metas.items()):
            row = rows[i]
            for name, extents in meta.streams.items():
                key = (id(row.ntfs), row.entry.record, name)  # type: ignore[union-attr]
                if key not in same_record:  # hard links share their record's streams
                    vol = row.ntfs.vol  # type: ignore[union-attr]
                    size = min(extents, key=lambda a: a.start_vcn).size
                    yield from cuts.cut(vol.iter_attribute(extents, READ_WINDOW), size)
                    same_record[key] = cuts.last
                placed[(i, name)] = same_record[key]
        yield from blobs

    ids = store.put_many(stream(), level=level)
    lengths = cuts.lengths
    for key, found in placed.items():  # streams: (first, count, digest or None)
        if isinstance(found, tuple):
            first, count, digest = found
            placed[key] = (first, count, _digest_of(digest, first, count, ids, lengths))
    if done:
        at, first, count, digests = zip(*done, strict=True)
        where = list(at)
        entries["first_chunk"][where] = first
        entries["chunk_count"][where] = count
        entries["digest"][where] = np.frombuffer(
            b"".join(
                _digest_of(d, f, c, ids, lengths)
                for d, f, c in zip(digests, first, count, strict=True)
            ),
            "V16",
        )
        entries["flags"][where] |= HAS_CONTENT
    n = len(cuts.offsets)
    table = np.zeros(n, CHUNK_ROW)
    if n:
        table["offset"], table["length"] = cuts.offsets, cuts.lengths
        table["id"] = np.frombuffer(b"".join(ids[:n]), "V16")
    blob_table = np.zeros(len(blobs), CHUNK_ROW)
    if blobs:
        blob_table["length"] = [len(b) for b in blobs]
        blob_table["id"] = np.frombuffer(b"".join(ids[n:]), "V16")
    return table, blob_table, placed


def _disk_order(row: _Row) -> int:
    if isinstance(row.content, NtfsContent):
        return row.content.disk_order(row.entry)  # type: ignore[arg-type]
    return -1


def _hashing(pieces: Iterator[bytes], digest: Any) -> Iterator[bytes]:
    for piece in pieces:
        digest.update(piece)
        yield piece


def cdc_chunks(
    pieces: Iterator[bytes],
    sizes: Sequence[int] = (CDC_MIN, CDC_AVG, CDC_MAX),
) -> Iterator[tuple[int, memoryview]]:
    """(offset, chunk) of a stream cut with FastCDC; the same cuts as one call on the whole.
    Small pieces are gathered into windows first: each call scans what it is given from its
    start, so a file read a 512-byte cluster at a time (a fragmented FAT or NTFS file comes
    a run at a time) cost a scan of the carried tail per piece (32 MiB: 2.5 s, not 0.06)."""
    windows = _windows(pieces, max(READ_WINDOW, 4 * sizes[2]))
    carried = b""
    start = 0
    pending = next(windows, None)
    while pending is not None:
        following = next(windows, None)
        buf = carried + pending if carried else pending
        final = following is None
        view = memoryview(buf)
        prev = 0
        for end in fastcdc_cuts(buf, *sizes, final=final):
            yield start + prev, view[prev:end]
            prev = end
        start += prev
        carried = bytes(view[prev:])
        pending = following
    if carried:
        yield start, memoryview(carried)


def _windows(pieces: Iterator[Buffer], size: int) -> Iterator[Buffer]:
    """``pieces`` joined into windows of at least ``size`` bytes (a large piece passes as it
    is); the last window may be shorter."""
    held: list[Buffer] = []
    count = 0
    for piece in pieces:
        if not held and len(piece) >= size:
            yield piece
            continue
        held.append(piece)
        count += len(piece)
        if count >= size:
            yield b"".join(held)
            held, count = [], 0
    if held:
        yield b"".join(held)


def read_content(store: Store, chunks: np.ndarray) -> Iterator[bytes]:
    """A file's bytes, chunk by chunk, verified by the store."""
    yield from store.get_many([bytes(c) for c in chunks["id"]], chunks["length"].tolist())
