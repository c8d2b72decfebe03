"""File-system verbs over any image: ``ls`` and ``cat`` for FAT and NTFS volumes.

References: ``strata.fs.fat`` (fatgen103) and ``strata.fs.ntfs`` (NTFS documentation).

A target is ``IMAGE[:PART]``: PART is a partition number; without it the whole disk is used
when it holds a file system directly, else the first partition with a recognised one.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from strata.blockdev.base import BlockDevice
from strata.errors import InvalidInput, NotFound, Unsupported
from strata.formats import registry
from strata.fs import detect
from strata.fs.ntfs import Listing, NtfsEntry, NtfsVolume, attribute_names, link_of
from strata.fs.ntfs.records import RecordProblem
from strata.fs.ntfs.structs import FIRST_USER_RECORD
from strata.fs.volumes import WHOLE_DISK, located_volumes
from strata.ops.table import TIME_FIELDS, Gathered, IntColumn, Labels, Paths, Table, TimeColumns

if TYPE_CHECKING:  # FAT (with its editor) and partition tables load only when a listing needs them
    from strata.fs.fat import FatEntry, FatVolume

SUPPORTED = ("fat", "ntfs")
FAT_ATTRIBUTES = {0x01: "readonly", 0x02: "hidden", 0x04: "system", 0x20: "archive"}
# ASCII digits only: int() also takes fullwidth and Arabic-Indic ones.
_PART = re.compile(r"^(.*):([0-9]+)$")


@dataclass
class Mounted:
    """An opened file system and where it was found."""

    kind: str  # "fat" or "ntfs"
    partition: int | None  # None: the whole disk
    fs: FatVolume | NtfsVolume
    warnings: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return "whole disk" if self.partition is None else f"partition {self.partition}"


def parse_target(text: str) -> tuple[str, int | None]:
    """``IMAGE[:PART]``: split on the last ':' only when what follows is all digits.  Else the
    whole text is the image (a file name may hold ':'), unless no file has that name while
    the text before the last ':' names one: then PART is no number (``disk.img:x``)."""
    m = _PART.match(text)
    if m and m.group(1):
        if int(m.group(2)) == 0 and not os.path.lexists(text):
            raise InvalidInput(f"{text!r}: partitions are numbered from 1 (IMAGE[:PART])")
        return m.group(1), int(m.group(2))
    _refuse_part(text)
    return text, None


def _refuse_part(text: str) -> None:
    image, colon, part = text.rpartition(":")
    if not colon or not image or "/" in part:  # a ':' inside a directory name splits nothing
        return
    if not os.path.lexists(text) and os.path.exists(image):
        raise InvalidInput(
            f"{text!r}: the part after the last ':' must be a partition number "
            f"(IMAGE[:PART]), not {part!r}"
        )


@contextmanager
def open_fs(
    target: str, fmt: str | None = None, allowed_dirs: Sequence[str] = ()
) -> Iterator[Mounted]:
    image, part = parse_target(target)
    with registry.open_image(image, fmt, allowed_dirs=list(allowed_dirs) or None) as disk:
        dev, number, kind = _locate(disk, part, image)
        yield Mounted(kind, number, _open(kind, dev))


def _open(kind: str, dev: BlockDevice) -> FatVolume | NtfsVolume:
    if kind == "ntfs":
        return NtfsVolume(dev)
    from strata.fs.fat import FatVolume

    return FatVolume(dev)


def _locate(disk: BlockDevice, part: int | None, image: str) -> tuple[BlockDevice, int | None, str]:
    if part is not None:
        from strata.partition import open_partition

        dev = open_partition(disk, part)
        kind = detect(dev)
        if kind not in SUPPORTED:
            raise Unsupported(
                what=f"file system {kind or 'unknown'} on partition {part} of {image}"
            )
        return dev, part, kind
    for vol in located_volumes(disk):
        if vol.fs is not None and vol.fs in SUPPORTED:
            return vol.dev, None if vol.number == WHOLE_DISK else vol.number, vol.fs
    raise NotFound(what=f"a FAT or NTFS file system in {image} (use IMAGE:PART)")


def iso(value: dt.datetime | dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


# ---------------------------------------------------------------------------- NTFS


class _NtfsRows(NamedTuple):
    """What a listing table takes per row: a full listing's columns, gathered from its
    tables as the output goes (``-r``), or the entries of one directory read through its
    index."""

    path: Paths
    record: np.ndarray
    is_dir: np.ndarray
    times: TimeColumns  # FILETIMEs: created, modified, accessed
    flags: IntColumn  # file attributes
    size: IntColumn
    links: IntColumn
    special: np.ndarray  # rows that may be links: system or reparse-point files, reparse tags
    streams: dict[int, list[tuple[str, int]]]  # by record
    entry: Callable[[int], NtfsEntry]  # of a row, for its link


def _listing_rows(listing: Listing, chosen: np.ndarray) -> _NtfsRows:
    rec = listing.owner[chosen]
    attributes = listing.attributes
    times = listing.times  # created, modified, MFT modified, accessed
    special = ((attributes & (_SYSTEM | _REPARSE)) != 0) | (listing.reparse_tag != 0)
    return _NtfsRows(
        PathRows(listing, chosen),
        rec,
        listing.is_dir[rec],
        (Gathered(times[:, 0], rec), Gathered(times[:, 1], rec), Gathered(times[:, 3], rec)),
        Gathered(attributes, rec),
        Gathered(listing.size, rec),  # a directory's is 0
        Gathered(listing.links, rec),
        special[rec],
        listing.streams,
        lambda j: listing.entry(int(chosen[j])),
    )


class PathRows:
    """The paths of a listing's rows ``rows``, made a slice at a time."""

    def __init__(self, listing: Listing, rows: np.ndarray) -> None:
        self.listing = listing
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, at: slice) -> list[str]:
        return self.listing.path_texts(self.rows[at])

    def lines(self, lo: int, hi: int) -> bytes:
        return self.listing.path_lines(self.rows[lo:hi])

    def columns(self, lo: int, hi: int) -> list[tuple[bytes | bytearray, np.ndarray]] | None:
        """``lines`` as ``join_spans`` columns, when no path needs an escape."""
        return self.listing.path_columns(self.rows[lo:hi]) if self.listing.plain else None


def _entry_rows(entries: list[NtfsEntry]) -> _NtfsRows:
    entries = sorted(entries, key=lambda e: e.path)
    times = np.array([(e.created, e.modified, e.accessed) for e in entries], np.int64)
    times = times.reshape(-1, 3)
    flags = np.array([e.attributes for e in entries], np.int64)
    reparse = np.array([e.reparse_tag for e in entries], np.int64)
    return _NtfsRows(
        [e.path for e in entries],
        np.array([e.record for e in entries], np.int64),
        np.array([e.is_dir for e in entries], bool),
        (times[:, 0], times[:, 1], times[:, 2]),
        flags,
        np.array([e.size for e in entries], np.int64),
        np.array([e.links for e in entries], np.int64),
        ((flags & (_SYSTEM | _REPARSE)) != 0) | (reparse != 0),
        {e.record: list(e.streams) for e in entries if e.streams},
        entries.__getitem__,
    )


def _ntfs_table(vol: NtfsVolume, rows: _NtfsRows) -> Table:
    """The table of ``rows``, times and sizes taken as columns."""
    table = Table(
        path=rows.path,
        kind=Labels(rows.is_dir.astype(np.uint8), ["file", "dir"]),
        size=rows.size,
        flags=rows.flags,
        names_of=attribute_names,
        filetimes=rows.times,
        more={"record": rows.record, "links": rows.links},
    )
    for j in np.flatnonzero(rows.special).tolist():
        link = link_of(vol, rows.entry(j))
        if link is not None:
            table.kind[j], target = link
            if target is not None:
                table.sparse[j] = {"target": target}
    streams = rows.streams
    named = np.isin(rows.record, np.fromiter(streams, np.int64, len(streams)))
    for j in np.flatnonzero(named).tolist():
        table.sparse.setdefault(j, {})["streams"] = [
            {"name": n, "size": s} for n, s in streams[int(rows.record[j])]
        ]
    return table


_SYSTEM, _REPARSE = 0x4, 0x400
# A subtree walk reads ~20 us an entry, the bulk scan ~0.5-0.9 us a record (200 000-record
# volume): the walk stops at 1/64 of the records, so a subtree it cannot finish costs at most
# about a third more than the scan alone.
WALK_SHARE = 64


def _ntfs_ls(
    vol: NtfsVolume, path: str, recursive: bool, system: bool, walk_limit: int | None = None
) -> tuple[Table, list[str]]:
    """The table and the problems met.  One directory (or file) is read through the indexes;
    a recursive listing below the root walks the indexes too while it stays under
    ``walk_limit`` entries, and otherwise (and from the root) scans the whole MFT."""
    top = vol.stat(path)
    if not top.is_dir:
        return _ntfs_table(vol, _entry_rows([top])), []
    walked: tuple[list[NtfsEntry], list[RecordProblem]] | None = None
    if not recursive:
        walked = vol.directory(path)
    elif top.path:
        limit = vol.record_count // WALK_SHARE if walk_limit is None else walk_limit
        walked = vol.subtree(path, limit)
    if walked is not None:
        shown = [e for e in walked[0] if system or not e.is_system]
        return _ntfs_table(vol, _entry_rows(shown)), [str(p) for p in walked[1]]
    listing = vol.scan()
    chosen = np.flatnonzero(listing.below(top.path)) if top.path else np.arange(len(listing))
    if not system:
        chosen = chosen[listing.owner[chosen] >= FIRST_USER_RECORD]
        chosen = chosen[~np.isin(listing.parent[chosen], _extend_dirs(listing))]
    order = listing.order(chosen)
    return _ntfs_table(vol, _listing_rows(listing, order)), [str(p) for p in listing.problems]


def _extend_dirs(listing: Listing) -> np.ndarray:
    """Records of ``/$Extend`` and the directories below it: their entries are metadata."""
    inside = (listing.below("/$Extend") | listing.named("/$Extend")) & listing.is_dir[listing.owner]
    return listing.owner[inside]


# ---------------------------------------------------------------------------- FAT


def _fat_table(entries: list[tuple[str, FatEntry]]) -> Table:
    entries = sorted(entries, key=lambda pe: pe[0])
    found = [e for _p, e in entries]
    return Table(
        path=[p for p, _e in entries],
        kind=["dir" if e.is_dir else "file" for e in found],
        size=[0 if e.is_dir else e.size for e in found],
        flags=[e.attributes for e in found],
        names_of=lambda bits: [name for bit, name in FAT_ATTRIBUTES.items() if bits & bit],
        stamps=lambda k: [iso(getattr(e, TIME_FIELDS[k])) for e in found],
        more={"short_name": [e.short_name for e in found]},
    )


def _fat_ls(vol: FatVolume, path: str, recursive: bool) -> Table:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    base = "".join(f"/{p}" for p in parts)
    top = vol.stat(path)
    if not top.is_dir:
        return _fat_table([(base or "/", top)])
    if recursive:
        prefix = (f"{base}/" if base else "/").casefold()
        return _fat_table([(p, e) for p, e in vol.walk() if p.casefold().startswith(prefix)])
    return _fat_table([(f"{base}/{e.name}", e) for e in vol.listdir(path)])


def _left_unfinished(vol: NtfsVolume) -> list[str]:
    from strata.fs.ntfs.shutdown import unfinished

    state = unfinished(vol)
    lines = [f"how Windows left this volume could not be read: {e}" for e in state.unreadable]
    if state.reasons:
        lines.insert(
            0,
            f"Windows did not shut down this volume fully ({'; '.join(state.reasons)}): what "
            "it lists is what the disk holds, not what Windows last saw",
        )
    return lines


# ---------------------------------------------------------------------------- verbs


def ls(
    target: str,
    path: str = "/",
    recursive: bool = False,
    system: bool = False,
    fmt: str | None = None,
    allowed_dirs: Sequence[str] = (),
    *,
    columns: bool = False,
) -> dict[str, Any]:
    """Entries under ``path`` (one level, or all with ``recursive``), with where they came from.

    ``system``: also NTFS metadata files ($MFT, $Extend/...).  ``columns``: the entries stay a
    ``Table`` (for output built from its columns) instead of a list of dicts.
    """
    with open_fs(target, fmt, allowed_dirs) as m:
        if isinstance(m.fs, NtfsVolume):
            table, problems = _ntfs_ls(m.fs, path, recursive, system)
            unclean = _left_unfinished(m.fs)
        else:
            table = _fat_ls(m.fs, path, recursive)
            problems, unclean = [], []
        return {
            "filesystem": m.kind,
            "partition": m.partition,
            "where": m.where,
            "entries": table if columns else table.rows(),
            "warnings": problems,
            "unclean": unclean,  # how Windows left the volume, when not shut down
        }


@contextmanager
def cat(
    target: str, path: str, fmt: str | None = None, allowed_dirs: Sequence[str] = ()
) -> Iterator[Iterator[bytes]]:
    """The content of the file at ``path`` (``file:stream`` names an NTFS data stream)."""
    with open_fs(target, fmt, allowed_dirs) as m:
        if m.kind == "fat" and ":" in path.rsplit("/", 1)[-1]:
            raise InvalidInput(f"{path}: FAT has no named streams")
        yield m.fs.iter_file(path)
