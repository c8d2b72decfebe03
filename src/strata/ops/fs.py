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

from strata.blockdev.base import BlockDevice
from strata.errors import InvalidInput, NotFound, Unsupported
from strata.formats import registry
from strata.fs import detect
from strata.fs.fat import FatEntry, FatVolume
from strata.fs.ntfs import NtfsEntry, NtfsVolume, attribute_names, filetime, link_of
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


def _ntfs_row(vol: NtfsVolume, e: NtfsEntry) -> dict[str, Any]:
    kind, target = "dir" if e.is_dir else "file", None
    link = link_of(vol, e) if (e.reparse_tag or e.attributes & 0x4) else None
    if link is not None:
        kind, target = link
    row: dict[str, Any] = {
        "path": e.path or "/",
        "type": kind,
        "size": e.size,
        "created": iso(filetime(e.created)),
        "modified": iso(filetime(e.modified)),
        "accessed": iso(filetime(e.accessed)),
        "attributes": attribute_names(e.attributes),
        "record": e.record,
        "links": e.links,
    }
    if target is not None:
        row["target"] = target
    if e.streams:
        row["streams"] = [{"name": n, "size": size} for n, size in e.streams]
    return row


def _ntfs_ls(vol: NtfsVolume, path: str, recursive: bool, system: bool) -> list[dict[str, Any]]:
    top = vol.stat(path)
    if not top.is_dir:
        return [_ntfs_row(vol, top)]
    if recursive:
        prefix = f"{top.path}/"
        chosen = [e for e in vol.walk() if e.path.startswith(prefix)]
    else:
        chosen = vol.listdir(path)
    if not system:
        chosen = [e for e in chosen if not e.is_system]
    return [_ntfs_row(vol, e) for e in sorted(chosen, key=lambda e: e.path)]


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
