"""Compose independently packaged layers at file level on their OS layer's FAT and NTFS
volumes.

References: docs/architecture.md ("Layers at file level"); Microsoft fatgen103 (the FAT
editor); libntfs-3g (the NTFS editor, ``fs.ntfs.editor``, applied by ``layer.ntfsmerge``).

The OS layer's table is read as a device; a copy-on-write overlay (a sparse temporary file
and a bitmap of the 64 KiB blocks written) takes every edit.  Each layer's file delta is
applied in order (apps by ascending priority, the platform layer last), so a later layer wins
a path.  A layer's blocks outside those volumes are applied as block deltas when no two
layers change the same block there (a layer captured on top of another may).  NTFS volumes
are merged when strata was built with libntfs-3g; without it they count as outside.  Only
the overlay's blocks are stored anew; the image table is the OS table, those outside blocks
and the merged blocks.  Publish uses it for a template, packaging-disk create
for prerequisite layers, whenever the layers were not captured one on top of the other.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from strata.blockdev.base import BaseDevice, BlockDevice
from strata.blockdev.rawfile import pwrite_all
from strata.errors import CorruptImage, IntegrityError, StateError
from strata.fs.fat import FatEditor, FatEntry, open_fat
from strata.fs.fat import structs as fat
from strata.fs.ntfs import editor as ntfs_editor
from strata.fs.volumes import open_volume, where
from strata.layer.compose import compose_tables
from strata.layer.filedelta import (
    CHANGE_NAMES,
    DELETED,
    DIRECTORY,
    HAS_CONTENT,
    OPAQUE,
    FileDelta,
    Volume,
    file_volumes,
    load,
    read_content,
    unstamp,
)
from strata.layer.ntfsmerge import NtfsApply, OsFiles, content_ids
from strata.layer.storedev import StoreDevice
from strata.partition import read_table
from strata.store import CHUNK_ROW, Manifest, Store
from strata.store.ids import ZERO_ID, to_hex

BLOCK = 64 << 10
BATCH_BYTES = 8 << 20  # small files fetched from the store together
BATCH_FILES = 4096


class LayerLike(Protocol):
    @property
    def ref(self) -> list[str]: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def table(self) -> np.ndarray: ...


class OverlayDevice(BaseDevice):
    """Copy-on-write over ``source``: written blocks live in a sparse temporary file."""

    format_name = "overlay"

    def __init__(self, source: BlockDevice, directory: str | None = None) -> None:
        self.source = source
        self._size = source.size
        self._sector_size = source.sector_size
        self.writable = True
        self.path = getattr(source, "path", None)
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by close)
        self._file.truncate(self._size)
        self.written = np.zeros(-(-self._size // BLOCK), bool)

    def _runs(self, offset: int, end: int) -> Iterator[tuple[int, int, bool]]:
        first, last = offset // BLOCK, (end - 1) // BLOCK
        if first == last:  # most reads: an editor's sector, record or cluster, in one block
            yield offset, end, bool(self.written[first])
            return
        flags = self.written[first : last + 1]
        breaks = np.flatnonzero(flags[1:] != flags[:-1]) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        stops = np.concatenate((breaks, [len(flags)])).tolist()
        for lo, hi in zip(starts, stops, strict=True):
            a = max(offset, (first + lo) * BLOCK)
            b = min(end, (first + hi) * BLOCK)
            yield a, b, bool(flags[lo])

    def _readinto(self, offset: int, view: memoryview) -> None:
        for a, b, mine in self._runs(offset, offset + len(view)):
            part = view[a - offset : b - offset]
            if mine:
                os.preadv(self._file.fileno(), [part], a)
            else:
                self.source.readinto(a, part)

    def _write(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        for edge in {offset // BLOCK, (end - 1) // BLOCK}:
            lo, hi = edge * BLOCK, min((edge + 1) * BLOCK, self._size)
            if not self.written[edge] and (offset > lo or end < hi):
                buf = bytearray(hi - lo)
                self.source.readinto(lo, buf)
                pwrite_all(self._file.fileno(), lo, memoryview(buf))
        first, last = offset // BLOCK, (end - 1) // BLOCK
        if first == last:
            self.written[first] = True
        else:
            self.written[first : last + 1] = True
        pwrite_all(self._file.fileno(), offset, view)

    def changed_blocks(self) -> Iterator[tuple[int, bytes]]:
        for index in np.flatnonzero(self.written).tolist():
            lo = index * BLOCK
            yield lo, os.pread(self._file.fileno(), min(BLOCK, self._size - lo), lo)

    def close(self) -> None:
        self._file.close()


class _ChunkStream(io.RawIOBase):
    """A file's content from the store as a readable stream (for ``FatEditor.write_file``)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        out = memoryview(buf).cast("B")
        while not self._left:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._left = memoryview(piece)
        n = min(len(out), len(self._left))
        out[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


@dataclass
class MergeResult:
    table: np.ndarray
    conflicts: list[dict[str, Any]]
    volumes: list[int]
    merged_blocks: int
    outside_blocks: int
    applied: dict[str, int] = field(default_factory=dict)
    ntfs_volumes: list[int] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    hives: list[dict[str, Any]] = field(default_factory=list)  # merged key by key


def _label(layer: LayerLike) -> str:
    return ":".join(layer.ref)


def _ranges(volumes: Sequence[Volume]) -> list[tuple[int, int]]:
    return [(v.start, v.start + v.length) for v in volumes]


def _inside(offsets: np.ndarray, lengths: np.ndarray, ranges: Sequence[tuple[int, int]]) -> Any:
    hit = np.zeros(len(offsets), bool)
    ends = offsets + lengths
    for lo, hi in ranges:
        hit |= (offsets < hi) & (ends > lo)
    return hit


def merge(
    store: Store,
    layers: Sequence[LayerLike],
    size: int,
    sector_size: int = 512,
    *,
    workdir: str | None = None,
) -> MergeResult:
    """The image table of ``layers`` (OS first, then in the order they apply), merged at file
    level on the OS layer's FAT (and NTFS) volumes; StateError when they cannot be combined."""
    os_layer, upper = layers[0], list(layers[1:])
    base = StoreDevice(store, os_layer.table, size, sector_size)
    overlay = OverlayDevice(base, workdir)
    try:
        ptable = read_table(overlay)
        volumes = merged_volumes(overlay, ptable)
        _refuse_misordered(upper)
        deltas = [_delta_for(layer, volumes) for layer in upper]
        for layer, delta in zip(upper, deltas, strict=True):
            _refuse_absent_chunks(store, layer, delta, volumes)
        outside = _outside_rows(upper, volumes)
        _refuse_overlaps(upper, outside)
        merger = _Merger(store, overlay, volumes, base, workdir)
        for layer, delta in zip(upper, deltas, strict=True):
            if delta is not None:
                below = {":".join(ref) for ref in captured_stack(layer)}
                merger.apply(_label(layer), delta, below)
        merged = store.put_blocks(overlay.changed_blocks())
        table = compose_tables([os_layer.table, *outside, merged])
        return MergeResult(
            table,
            merger.conflicts(),
            [v.partition for v in volumes if v.fs == "fat"],
            len(merged),
            int(sum(len(t) for t in outside)),
            merger.applied,
            [v.partition for v in volumes if v.fs == "ntfs"],
            merger.warnings,
            merger.hives,
        )
    finally:
        overlay.close()
        base.close()


def merged_volumes(disk: BlockDevice, table: Any) -> list[Volume]:
    """The volumes merged at file level: FAT, and NTFS when libntfs-3g is built in."""
    return file_volumes(disk, table, ("fat", "ntfs") if ntfs_editor.available() else ("fat",))


def _delta_for(layer: LayerLike, volumes: Sequence[Volume]) -> FileDelta | None:
    """The layer's file delta; refused when it changed a volume it has no delta for."""
    delta = load(layer.manifest)
    rows = np.asarray(layer.table, CHUNK_ROW)
    for vol in volumes:
        touched = _inside(
            rows["offset"].astype(np.int64), rows["length"].astype(np.int64), _ranges([vol])
        ).any()
        if touched and (delta is None or delta.volume(vol.partition) is None):
            why = ""
            if delta is not None:
                why = "; " + "; ".join(
                    s["reason"] for s in delta.skipped if s.get("partition") == vol.partition
                )
            raise StateError(
                what=f"layer {_label(layer)} changed the {vol.fs.upper()} volume "
                f"({where(vol.partition)}) but carries no file delta for it{why}; a file-level "
                "merge cannot place its changes"
            )
        if delta is not None and delta.volume(vol.partition) not in (None, vol):
            raise StateError(
                what=f"layer {_label(layer)}: its {vol.fs.upper()} volume "
                f"({where(vol.partition)}) lies elsewhere than on the OS layer; a file-level "
                "merge needs the same partition table"
            )
    return delta


def _refuse_absent_chunks(
    store: Store, layer: LayerLike, delta: FileDelta | None, volumes: Sequence[Volume]
) -> None:
    """Every chunk the merge will read for ``layer`` is in the store, before anything is
    written (a version is committed only with all its chunks: one gone is damage)."""
    if delta is None:
        return
    rows = np.flatnonzero(
        np.isin(delta.entries["partition"], [v.partition for v in volumes])
        & (delta.entries["flags"] & HAS_CONTENT).astype(bool)
        & (delta.entries["kind"] != DIRECTORY)
    )
    counts = delta.entries["chunk_count"][rows].astype(np.int64)
    firsts = delta.entries["first_chunk"][rows].astype(np.int64)
    at = np.repeat(firsts, counts) + (
        np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    )
    pieces = [(delta.chunks["id"][at], np.repeat(rows, counts), "file-chunks")]
    ntfs = [v.partition for v in volumes if v.fs == "ntfs"]
    for row, table, chunks in content_ids(
        delta, np.flatnonzero(np.isin(delta.entries["partition"], ntfs))
    ):  # named streams, security descriptors and reparse values
        pieces.append((chunks["id"], np.full(len(chunks), row), table))
    ids = np.concatenate([p[0] for p in pieces])
    distinct = [bytes(i) for i in np.unique(ids)]
    found = store.locate([cid for cid in distinct if cid != ZERO_ID])
    absent = [cid for cid in distinct if cid != ZERO_ID and cid not in found]
    if not absent:
        return
    wanted = np.frombuffer(absent[0], "V16")[0]
    held, owners, table = next(p for p in pieces if (p[0] == wanted).any())
    row = int(owners[int(np.flatnonzero(held == wanted)[0])])
    raise IntegrityError(
        what=f"layer {_label(layer)}: the file delta's content of {delta.path(row)} "
        f"(row {row}) names chunk {to_hex(absent[0])} (field {table}.id), which the "
        f"store does not hold ({len(absent)} chunk(s) absent)"
    )


def captured_stack(layer: LayerLike) -> list[list[str]]:
    """The layers ``layer`` was packaged on (meta ``stack``: [name, version] pairs)."""
    stack = layer.manifest.meta.get("stack", [])
    pairs = isinstance(stack, list) and all(
        isinstance(ref, list) and len(ref) == 2 and all(isinstance(x, str) for x in ref)
        for ref in stack
    )
    if not pairs:
        raise CorruptImage(
            path=f"layer {_label(layer)}",
            structure="layer manifest",
            problem=f"stack {stack!r}"[:200] + " is not a list of [layer, version] pairs",
            field="meta.stack",
        )
    return stack


def _refuse_misordered(layers: Sequence[LayerLike]) -> None:
    """A layer packaged on top of another is a delta against it, so it must apply after it."""
    position = {tuple(layer.ref): at for at, layer in enumerate(layers)}
    for at, layer in enumerate(layers):
        for below in captured_stack(layer)[1:]:
            if position.get(tuple(below), -1) > at:
                raise StateError(
                    what=f"layer {_label(layer)} was packaged on {':'.join(below)}, so it must "
                    "apply after it; give it a higher priority"
                )


def _outside_rows(layers: Sequence[LayerLike], volumes: Sequence[Volume]) -> list[np.ndarray]:
    out = []
    for layer in layers:
        rows = np.asarray(layer.table, CHUNK_ROW)
        inside = _inside(
            rows["offset"].astype(np.int64), rows["length"].astype(np.int64), _ranges(volumes)
        )
        out.append(rows[~inside])
    return out


def _refuse_overlaps(layers: Sequence[LayerLike], outside: Sequence[np.ndarray]) -> None:
    """Two layers changing one block outside the FAT volumes cannot both be right, unless one
    was captured on top of the other."""
    for j, later in enumerate(layers):
        below = [list(x) for x in captured_stack(later)]
        for i in range(j):
            if list(layers[i].ref) in below:
                continue
            both = np.intersect1d(outside[i]["offset"], outside[j]["offset"])
            if len(both):
                where = ", ".join(str(int(o)) for o in both[:4])
                raise StateError(
                    what=f"layers {_label(layers[i])} and {_label(later)} both change "
                    f"{len(both)} block(s) outside the volumes merged at file level (disk "
                    f"offsets {where}{', …' if len(both) > 4 else ''}); a file-level merge "
                    "cannot combine block changes there — package one layer on top of the "
                    f"other{_NO_NTFS_HINT if not ntfs_editor.available() else ''}"
                )


_NO_NTFS_HINT = (
    " (this strata was built without libntfs-3g, so NTFS volumes are not merged at file "
    "level: install ntfs-3g-dev and reinstall)"
)


@dataclass
class _Touch:
    layer: str
    change: str
    kind: str
    digest: bytes


class _Merger:
    """Applies file deltas to the overlay and remembers who touched which path."""

    def __init__(
        self,
        store: Store,
        overlay: OverlayDevice,
        volumes: Sequence[Volume],
        base: BlockDevice | None = None,
        workdir: str | None = None,
    ) -> None:
        self.store = store
        self.overlay = overlay
        self.base = base  # the OS layer alone: hives merge against it
        self.workdir = workdir
        self.partitions = {v.partition for v in volumes}
        self.touches: dict[tuple[int, str], tuple[str, list[_Touch]]] = {}
        self.shadowed: list[dict[str, Any]] = []
        self.applied: dict[str, int] = {}
        self.below: dict[str, set[str]] = {}
        self.fs = {v.partition: v.fs for v in volumes}
        self.warnings: list[dict[str, Any]] = []
        self.hives: list[dict[str, Any]] = []
        self.registry: list[dict[str, Any]] = []  # registry values a later layer overrode
        self.os_files = OsFiles(base) if base is not None else None

    def apply(self, label: str, delta: FileDelta, below: set[str] | None = None) -> None:
        """Apply ``delta`` as layer ``label``, packaged on the layers ``below`` (changes over
        theirs are updates, not conflicts)."""
        self.below[label] = below or set()
        count = 0
        for vol in delta.volumes:
            if vol.partition not in self.partitions:
                continue
            if self.fs[vol.partition] == "ntfs":
                count += self._apply_ntfs(label, delta, vol.partition)
                continue
            editor = open_fat(open_volume(self.overlay, vol.partition), writable=True)
            assert isinstance(editor, FatEditor)
            rows = delta.rows_of(vol.partition)
            changes = delta.entries["change"][rows]
            with editor.batch():  # the overlay is thrown away if publish fails
                for row in rows[changes == DELETED]:  # whiteouts first
                    count += self._whiteout(editor, label, vol.partition, delta, int(row))
                for batch in _batches(delta, rows[changes != DELETED]):
                    contents = self._prefetch(delta, batch)
                    for row in batch:
                        self._place(editor, label, vol.partition, delta, row, contents.get(row))
                        count += 1
            editor.flush()
        self.applied[label] = count

    def _apply_ntfs(self, label: str, delta: FileDelta, partition: int) -> int:
        """One layer's delta on an NTFS volume (see ``layer.ntfsmerge``); entries applied."""
        rows = delta.rows_of(partition)
        changes = delta.entries["change"][rows]
        count = 0
        with ntfs_editor.NtfsEditor(open_volume(self.overlay, partition)) as editor:
            apply = NtfsApply(
                self.store,
                editor,
                delta,
                label,
                self.os_files.of(partition) if self.os_files is not None else None,
                self.workdir,
            )
            for row in rows[changes == DELETED].tolist():  # whiteouts first
                self._touch(label, partition, delta, row)
                count += apply.whiteout(row)
            for batch in _batches(delta, rows[changes != DELETED]):
                contents = self._prefetch(delta, batch)
                for row in batch:
                    self._touch(label, partition, delta, row)
                    apply.place(row, contents.get(row))
                    count += 1
            apply.finish()
        self.warnings += apply.warnings
        self.hives += [{"partition": partition, **h} for h in apply.hives]
        for hive, key, value in apply.overridden:
            _, seen = self.touches[(partition, hive.upper())]
            earlier = [t.layer for t in seen if t.layer != label]
            self.registry.append(
                {
                    "partition": partition,
                    "path": f"{hive}:{key}\\{value or '(default)'}",
                    "layers": [*dict.fromkeys(earlier), label],
                    "winner": label,
                    "kind": "registry value",
                }
            )
        return count

    def _touch(self, label: str, partition: int, delta: FileDelta, row: int) -> None:
        path = delta.path(row)
        e = delta.entries[row]
        kind = "dir" if int(e["kind"]) == DIRECTORY else "file"
        change = CHANGE_NAMES[int(e["change"])]
        key = (partition, path.upper())
        _, seen = self.touches.get(key, (path, []))
        seen.append(_Touch(label, change, kind, bytes(e["digest"])))
        self.touches[key] = (path, seen)
        if change in ("deleted", "opaque"):
            self._shadow(label, partition, path)

    def _shadow(self, label: str, partition: int, path: str) -> None:
        """A whiteout or opaque directory hides what other layers put below it."""
        prefix = path.upper() + "/"
        for (part, key), (below, seen) in self.touches.items():
            if part == partition and key.startswith(prefix):
                others = sorted({t.layer for t in seen} - {label} - self.below[label])
                if others:
                    self.shadowed.append(
                        {
                            "partition": partition,
                            "path": below,
                            "layers": [*others, label],
                            "winner": label,
                            "reason": f"{path} removed by {label}",
                        }
                    )

    def _whiteout(self, ed: FatEditor, label: str, part: int, delta: FileDelta, row: int) -> int:
        self._touch(label, part, delta, row)
        path = delta.path(row)
        if not ed.exists(path):
            return 0
        ed.delete(path, recursive=True)
        return 1

    def _prefetch(self, delta: FileDelta, batch: list[int]) -> dict[int, bytes]:
        """The contents of a batch of small files, fetched from the store in one call."""
        small = [r for r in batch if _carried(delta, r) and int(delta.entries[r]["size"]) > 0]
        if not small or int(delta.entries["size"][small].sum()) > BATCH_BYTES:
            return {}
        tables = [delta.chunk_rows(r) for r in small]
        rows = np.concatenate(tables)
        pieces = iter(self.store.get_many([bytes(i) for i in rows["id"]], rows["length"].tolist()))
        return {
            r: b"".join(next(pieces) for _ in range(len(t)))
            for r, t in zip(small, tables, strict=True)
        }

    def _place(
        self,
        ed: FatEditor,
        label: str,
        part: int,
        delta: FileDelta,
        row: int,
        content: bytes | None,
    ) -> None:
        self._touch(label, part, delta, row)
        e = delta.entries[row]
        path = delta.path(row)
        current = ed.stat(path) if ed.exists(path) else None
        if int(e["kind"]) == DIRECTORY:
            if current is not None and (not current.is_dir or int(e["change"]) == OPAQUE):
                ed.delete(path, recursive=True)
                current = None
            if current is None:
                current = ed.mkdir(path, parents=True)
        elif _carried(delta, row):
            if current is not None and current.is_dir:
                ed.delete(path, recursive=True)
            parent = path.rpartition("/")[0]
            if parent and not ed.exists(parent):
                ed.mkdir(parent, parents=True)
            size = int(e["size"])
            data: Any = content
            if data is None:
                data = _ChunkStream(read_content(self.store, delta.chunk_rows(row)))
            modified = unstamp(int(e["modified"]))
            current = ed.write_file(path, data, size=size, modified=modified)
        elif current is None or current.is_dir:
            return  # metadata for a file another layer removed or replaced
        _set_metadata(ed, path, current, e)

    def conflicts(self) -> list[dict[str, Any]]:
        out = list(self.shadowed) + self.registry
        merged = {(h["partition"], h["path"].upper()) for h in self.hives}
        for (partition, _), (path, seen) in self.touches.items():
            layers = list(dict.fromkeys(t.layer for t in seen))
            if not set(layers) - {seen[-1].layer} - self.below[seen[-1].layer]:
                continue  # one layer, or a layer updating those it was packaged on
            if all(t.kind == "dir" and t.change in ("added", "modified") for t in seen):
                continue  # several layers creating one directory agree
            out.append(
                {
                    "partition": partition,
                    "path": path,
                    "layers": layers,
                    "winner": seen[-1].layer,
                    "changes": {t.layer: t.change for t in seen},
                    "same_content": len({t.digest for t in seen}) == 1
                    and all(t.change != "deleted" for t in seen),
                    **({"merged": "registry"} if (partition, path.upper()) in merged else {}),
                }
            )
        return sorted(out, key=lambda c: (c["partition"], c["path"].upper()))


def _carried(delta: FileDelta, row: int) -> bool:
    return int(delta.entries[row]["kind"]) != DIRECTORY and bool(
        int(delta.entries[row]["flags"]) & HAS_CONTENT
    )


def _batches(delta: FileDelta, rows: np.ndarray) -> Iterator[list[int]]:
    """Rows in order, cut so that each batch's small files fit in BATCH_BYTES; a large file
    goes alone (and is streamed)."""
    batch: list[int] = []
    held = 0
    for row in rows.tolist():
        size = int(delta.entries[row]["size"]) if _carried(delta, row) else 0
        if batch and (held + size > BATCH_BYTES or len(batch) >= BATCH_FILES):
            yield batch
            batch, held = [], 0
        batch.append(row)
        held += size
    if batch:
        yield batch


def _set_metadata(ed: FatEditor, path: str, current: FatEntry, e: np.void) -> None:
    """Attributes and times as captured, in one directory-entry update when any differs."""
    attributes = (current.attributes & fat.ATTR_DIRECTORY) | (
        int(e["attributes"]) & fat.ATTR_SETTABLE
    )
    created, modified = unstamp(int(e["created"])), unstamp(int(e["modified"]))
    accessed = unstamp(int(e["accessed"]))
    day = accessed.date() if accessed is not None else None
    wanted = (attributes, created or current.created, modified or current.modified)
    if wanted == (current.attributes, current.created, current.modified) and (
        day is None or day == current.accessed
    ):
        return
    ed.set_metadata(
        path,
        attributes=attributes & fat.ATTR_SETTABLE,
        created=created,
        modified=modified,
        accessed=day,
    )
