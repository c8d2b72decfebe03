"""File-system verbs over any image: ``ls`` and ``cat`` for FAT and NTFS volumes.

References: ``strata.fs.fat`` (fatgen103) and ``strata.fs.ntfs`` (NTFS documentation).

A target is ``IMAGE[:PART]``: PART is a partition number; without it the whole disk is used
when it holds a file system directly, else the first partition with a recognised one.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strata.blockdev.base import BlockDevice
from strata.errors import InvalidInput, NotFound, Unsupported
from strata.formats import registry
from strata.fs import detect
from strata.fs.fat import FatEntry, FatVolume
from strata.fs.ntfs import NtfsEntry, NtfsVolume, attribute_names, link_of
from strata.fs.ntfs.structs import FILETIME_UNIX_OFFSET, FIRST_USER_RECORD
from strata.partition import open_partition, read_table

SUPPORTED = ("fat", "ntfs")
FAT_ATTRIBUTES = {0x01: "readonly", 0x02: "hidden", 0x04: "system", 0x20: "archive"}
_PART = re.compile(r"^(.*):(\d+)$")


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
    """``IMAGE[:PART]``: split on the last ':' only when what follows is all digits."""
    m = _PART.match(text)
    if m and m.group(1):
        return m.group(1), int(m.group(2))
    return text, None


@contextmanager
def open_fs(
    target: str, fmt: str | None = None, allowed_dirs: Sequence[str] = ()
) -> Iterator[Mounted]:
    image, part = parse_target(target)
    with registry.open_image(image, fmt, allowed_dirs=list(allowed_dirs) or None) as disk:
        dev, number, kind = _locate(disk, part, image)
        yield Mounted(kind, number, _open(kind, dev))


def _open(kind: str, dev: BlockDevice) -> FatVolume | NtfsVolume:
    return NtfsVolume(dev) if kind == "ntfs" else FatVolume(dev)


def _locate(disk: BlockDevice, part: int | None, image: str) -> tuple[BlockDevice, int | None, str]:
    if part is not None:
        dev = open_partition(disk, part)
        kind = detect(dev)
        if kind not in SUPPORTED:
            raise Unsupported(
                what=f"file system {kind or 'unknown'} on partition {part} of {image}"
            )
        return dev, part, kind
    kind = detect(disk)
    if kind in SUPPORTED:
        return disk, None, kind
    table = read_table(disk)
    for p in table.partitions:
        dev = open_partition(disk, p.number, table)
        kind = detect(dev)
        if kind in SUPPORTED:
            return dev, p.number, kind
    raise NotFound(what=f"a FAT or NTFS file system in {image} (use IMAGE:PART)")


def iso(value: dt.datetime | dt.date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value.isoformat()


# ---------------------------------------------------------------------------- NTFS


def _ntfs_rows(vol: NtfsVolume, chosen: list[int]) -> list[dict[str, Any]]:
    """Rows for listing entries ``chosen`` (indices), times and sizes taken as columns."""
    listing = vol.scan()
    pick = np.asarray(chosen, dtype=np.int64)
    rec = listing.owner[pick]
    is_dir = listing.is_dir[rec]
    size = np.where(is_dir, 0, listing.size[rec]).tolist()
    created, modified, accessed = (_iso_times(listing.si[rec, k]) for k in (0, 1, 3))
    attrs = listing.si[rec, 4].tolist()
    names_of: dict[int, list[str]] = {}
    links = listing.links[rec].tolist()
    rows = []
    for j, i in enumerate(chosen):
        a = attrs[j]
        row: dict[str, Any] = {
            "path": listing.paths[i],
            "type": "dir" if is_dir[j] else "file",
            "size": size[j],
            "created": created[j],
            "modified": modified[j],
            "accessed": accessed[j],
            "attributes": names_of.setdefault(a, attribute_names(a)),
            "record": int(rec[j]),
            "links": links[j],
        }
        if a & (_SYSTEM | _REPARSE) or listing.reparse_tag[rec[j]]:
            _link_fields(vol, listing.entry(i), row)
        streams = listing.streams.get(int(rec[j]))
        if streams:
            row["streams"] = [{"name": n, "size": s} for n, s in streams]
        rows.append(row)
    return rows


_SYSTEM, _REPARSE = 0x4, 0x400


def _link_fields(vol: NtfsVolume, e: NtfsEntry, row: dict[str, Any]) -> None:
    link = link_of(vol, e)
    if link is not None:
        row["type"], target = link
        if target is not None:
            row["target"] = target


def _iso_times(filetimes: np.ndarray) -> list[str | None]:
    """FILETIME values as ISO 8601 UTC strings (None for 0), converted as one array."""
    micros = (filetimes - FILETIME_UNIX_OFFSET) // 10
    valid = (filetimes > 0) & (micros < 253402300799 * 10**6)  # before year 10000
    text = np.datetime_as_string(np.where(valid, micros, 0).astype("datetime64[us]"), "us")
    return [f"{t}+00:00" if v else None for t, v in zip(text.tolist(), valid.tolist(), strict=True)]


def _ntfs_ls(vol: NtfsVolume, path: str, recursive: bool, system: bool) -> list[dict[str, Any]]:
    top = vol.stat(path)
    listing = vol.scan()
    if not top.is_dir:
        return _ntfs_rows(vol, [vol._path_index()[top.path]])
    if recursive:
        prefix = f"{top.path}/"
        chosen = [i for i, p in enumerate(listing.paths) if p.startswith(prefix)]
    else:
        chosen = np.flatnonzero(listing.parent == top.record).tolist()
    if not system:
        owner = listing.owner
        chosen = [
            i
            for i in chosen
            if owner[i] >= FIRST_USER_RECORD and not listing.paths[i].startswith("/$Extend/")
        ]
    chosen.sort(key=listing.paths.__getitem__)
    return _ntfs_rows(vol, chosen)


# ---------------------------------------------------------------------------- FAT


def _fat_row(path: str, e: FatEntry) -> dict[str, Any]:
    return {
        "path": path or "/",
        "type": "dir" if e.is_dir else "file",
        "size": 0 if e.is_dir else e.size,
        "created": iso(e.created),
        "modified": iso(e.modified),
        "accessed": iso(e.accessed),
        "attributes": [name for bit, name in FAT_ATTRIBUTES.items() if e.attributes & bit],
        "short_name": e.short_name,
    }


def _fat_ls(vol: FatVolume, path: str, recursive: bool) -> list[dict[str, Any]]:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    base = "".join(f"/{p}" for p in parts)
    top = vol.stat(path)
    if not top.is_dir:
        return [_fat_row(base, top)]
    if recursive:
        prefix = f"{base}/" if base else "/"
        rows = [_fat_row(p, e) for p, e in vol.walk() if p.casefold().startswith(prefix.casefold())]
    else:
        rows = [_fat_row(f"{base}/{e.name}", e) for e in vol.listdir(path)]
    return sorted(rows, key=lambda r: r["path"])


# ---------------------------------------------------------------------------- verbs


def ls(
    target: str,
    path: str = "/",
    recursive: bool = False,
    system: bool = False,
    fmt: str | None = None,
    allowed_dirs: Sequence[str] = (),
) -> dict[str, Any]:
    """Entries under ``path`` (one level, or all with ``recursive``), with where they came from.

    ``system``: also NTFS metadata files ($MFT, $Extend/...).
    """
    with open_fs(target, fmt, allowed_dirs) as m:
        if isinstance(m.fs, NtfsVolume):
            rows = _ntfs_ls(m.fs, path, recursive, system)
            problems = [str(p) for p in m.fs.scan().problems]
        else:
            rows = _fat_ls(m.fs, path, recursive)
            problems = []
        return {
            "filesystem": m.kind,
            "partition": m.partition,
            "where": m.where,
            "entries": rows,
            "warnings": problems,
        }


@contextmanager
def cat(
    target: str, path: str, fmt: str | None = None, allowed_dirs: Sequence[str] = ()
) -> Iterator[Iterator[bytes]]:
    """The content of the file at ``path`` (``file:stream`` names an NTFS data stream)."""
    with open_fs(target, fmt, allowed_dirs) as m:
        if isinstance(m.fs, FatVolume) and ":" in path.rsplit("/", 1)[-1]:
            raise InvalidInput(f"{path}: FAT has no named streams")
        yield m.fs.iter_file(path)
