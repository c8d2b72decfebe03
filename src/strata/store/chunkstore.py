"""The chunk store: put and get chunks on all cores, manifests, and durable commits.

References: strata store format 1 (structs.py); durability order after borg's repository
(write, fsync, then publish): frames are fsync'ed before their index rows commit, and a
manifest is write+fsync+rename'd before the catalog row naming it commits.

Layout of a store directory::

    store.json        format marker and settings (written once, atomically)
    catalog.db        SQLite (WAL): chunk index, layers, versions, images, history
    lock              flock: shared by every open store, exclusive for gc
    packs/*.pack      append-only frame files, one writer each
    manifests/xx/<id>.manifest   one frame each (magic SMFT)
    tmp/              files being written (gc removes leftovers)
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import os
import secrets
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from strata import jsontext
from strata.errors import (
    CorruptImage,
    IntegrityError,
    InvalidInput,
    NotFound,
    StateError,
    StrataError,
    SystemIOError,
    TruncatedImage,
    Unsupported,
)
from strata.native import is_zero
from strata.store import index
from strata.store.catalog import Catalog
from strata.store.db import connect, transaction
from strata.store.frames import Where, decode, decode_frames, decode_into, encode, encode_frames
from strata.store.ids import ZERO_ID, Buffer, chunk_id, to_hex
from strata.store.index import Location
from strata.store.locate import store_path
from strata.store.lock import StoreLock, claim
from strata.store.manifest import Manifest, chunk_table, parse
from strata.store.packs import PackFiles, PackWriter, fsync_dir
from strata.store.structs import CHUNK_MAGIC, FORMAT_VERSION, MANIFEST_MAGIC

CONFIG_NAME = "store.json"
DEFAULTS: dict[str, int] = {
    "max_chunk": 4 << 20,  # frames declaring more are refused before any allocation
    "level": 3,  # zstd level for publish; capture passes a faster one
    "pack_limit": 512 << 20,  # a writer starts a new pack past this size
    "max_manifest": 1 << 30,
}
WINDOW_BYTES = 8 << 20  # chunks checked against the index at once
INFLIGHT_BYTES = 32 << 20  # raw bytes handed to compressor threads and not yet written
FLUSH_ROWS = 16384  # pending index rows before a durability point
LOCK_TIMEOUT_S = 60.0
READ_WINDOW = 512  # ids located in one index query
READ_BATCH = 8  # chunks decoded per worker job
MERGE_GAP = 4096  # two frames of a pack this close are read with one pread
RUN_SPAN = 4 << 20  # a run of frames: at most this much read, and this much decoded
K = TypeVar("K")  # what names an item of adjacent_runs (a chunk id, a plan index)
# A compression job holds up to JOB_BYTES of chunks (at most JOB_CHUNKS): 64 KiB blocks go
# 8 to a job as before, while a file delta's thousand 100-byte files no longer make a
# thousand/8 thread round trips (measured: put+flush of 1 000 tiny chunks 17.5 -> 11.3 ms).
JOB_BYTES = 512 << 10
JOB_CHUNKS = 256


_Job = tuple[Future[tuple[bytes, list[int]]], list[tuple[bytes, int]]]


def _encode_batch(batch: list[tuple[bytes, bytes]], level: int) -> tuple[bytes, list[int]]:
    """The batch's frames back to back, and where each ends."""
    ids = b"".join(cid for cid, _ in batch)
    return encode_frames([data for _, data in batch], ids, level, CHUNK_MAGIC)


@dataclass
class PutStats:
    chunks: int = 0
    logical_bytes: int = 0
    zero_chunks: int = 0
    zero_bytes: int = 0
    duplicate_chunks: int = 0
    duplicate_bytes: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def durable_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    """write + fsync a temporary file, rename it into place, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as e:
        os.unlink(tmp)
        raise SystemIOError.of(e, tmp) from e
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(path.parent)


def no_store(root: Path) -> StrataError:
    """Why ``root`` (which has no store.json) is no store, with advice true for it:
    ``store init`` makes a store only in a new or empty directory."""
    if root.exists() and not root.is_dir():
        return InvalidInput(
            f"{root} is not a directory, so it is not a strata store (a store is a directory: "
            "name one, or a new or empty directory for `strata store init`)"
        )
    above = next((parent for parent in root.parents if parent.exists()), None)
    if above is not None and not above.is_dir():
        return InvalidInput(f"{root} cannot be a strata store: {above} is not a directory")
    if root.is_dir() and any(root.iterdir()):
        return InvalidInput(
            f"{root} is not a strata store (no {CONFIG_NAME}) and is not empty, so "
            "`strata store init` will not make one there: name a store, or a new or empty "
            "directory"
        )
    return NotFound(what=f"store {root} (create it with `strata store init`)")


def read_config(root: Path) -> dict[str, Any]:
    path = root / CONFIG_NAME
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError) as e:
        raise no_store(root) from e
    try:
        config = jsontext.parse(raw)
    except ValueError as e:
        raise CorruptImage(path=path, structure="store config", problem=f"not JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format") != "strata-store":
        raise CorruptImage(path=path, structure="store config", problem="not a strata store")
    if config.get("version") != FORMAT_VERSION:
        raise Unsupported(
            what=f"{path}: store format version {config.get('version')!r} "
            f"(this strata reads version {FORMAT_VERSION})"
        )
    return {key: _setting(config, key, path) for key in DEFAULTS}


def _setting(config: dict[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if type(value) is not int:
        raise CorruptImage(
            path=path,
            structure="store config",
            problem=f"setting {key!r} is {value!r}, not an integer",
            field=key,
        )
    return value


class Store:
    """One process's handle on a store. Not thread-safe; it runs its own worker threads."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        exclusive: bool = False,
        lock_timeout: float = LOCK_TIMEOUT_S,
        workers: int | None = None,
        level: int | None = None,
        readonly: bool = False,
    ) -> None:
        """``readonly``: a handle for reading only (lock and catalog opened without write
        access, so a store the user cannot write is read); it must not be written through."""
        self.root = store_path(root)
        self.config = read_config(self.root)
        self.max_chunk = self.config["max_chunk"]
        self.level = self.config["level"] if level is None else level
        self.readonly = readonly
        self._lock = StoreLock(self.root / "lock", exclusive, lock_timeout, readonly)
        try:
            self.db = connect(self.root / "catalog.db", create=False, readonly=readonly)
        except BaseException:
            self._lock.release()
            raise
        self.catalog = Catalog(self.db)
        self.packs = PackFiles(self.root / "packs")
        self._packs_dir = str(self.root / "packs")
        self.workers = workers or int(os.environ.get("STRATA_THREADS", 0)) or os.cpu_count() or 2
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="strata-store")
        self._writer: PackWriter | None = None
        self._rows: list[tuple[bytes, str, int, int, int]] = []
        self._pending: dict[bytes, Location | None] = {}
        self._inflight_bytes = 0
        self._reader_db: sqlite3.Connection | None = None
        self._closed = False
        self._reader_lock = threading.Lock()

    # -- life cycle ----------------------------------------------------------------------
    @classmethod
    def init(cls, root: str | os.PathLike[str] | None = None, **settings: int) -> Store:
        path = store_path(root)
        unknown = set(settings) - set(DEFAULTS)
        if unknown:
            raise InvalidInput(f"unknown store settings {sorted(unknown)}")
        if not (path / CONFIG_NAME).exists():
            refused = no_store(path)
            if isinstance(refused, InvalidInput):  # a file, or a directory of other things
                raise refused
        for sub in ("packs", "manifests", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        connect(path / "catalog.db", create=True).close()
        if not (path / CONFIG_NAME).exists():
            config = {"format": "strata-store", "version": FORMAT_VERSION, **DEFAULTS, **settings}
            durable_write(path / CONFIG_NAME, json.dumps(config, indent=1).encode(), path / "tmp")
        return cls(path)

    def close(self) -> None:
        """Flush and release everything; a second call does nothing (a close whose flush
        failed has still released all, and its rows can never commit)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self._rows = []
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._pool.shutdown(wait=True)
            self.packs.close()
            if self._reader_db is not None:
                self._reader_db.close()
            self.db.close()
            self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing chunks ------------------------------------------------------------------
    def put_many(
        self, chunks: Iterable[Buffer], *, level: int | None = None, stats: PutStats | None = None
    ) -> list[bytes]:
        """Store every chunk (deduplicated, zeros skipped); their ids, in order.

        Chunks may be views of a buffer the caller reuses: they are copied when kept.
        Durable (fsync'ed and indexed) after ``flush``, ``commit_version`` or ``close``.
        """
        level = self.level if level is None else level
        stats = stats if stats is not None else PutStats()
        ids: list[bytes] = []
        window: dict[bytes, bytes] = {}
        window_bytes = 0
        inflight: deque[_Job] = deque()
        try:
            for chunk in chunks:
                item = self._intake(chunk, ids, stats, window)
                if item is not None:
                    window[item[0]] = item[1]
                    window_bytes += len(item[1])
                if window_bytes >= WINDOW_BYTES:
                    self._submit(window, inflight, level, stats)
                    window, window_bytes = {}, 0
            self._submit(window, inflight, level, stats)
            self._drain(inflight, 0, stats)
        except BaseException:
            self._abandon(inflight)
            raise
        return ids

    def put(self, chunk: Buffer, *, level: int | None = None) -> bytes:
        return self.put_many([chunk], level=level)[0]

    def put_blocks(
        self,
        blocks: Iterable[tuple[int, Buffer]],
        *,
        level: int | None = None,
        stats: PutStats | None = None,
    ) -> np.ndarray:
        """Store (offset, chunk) pairs; the ``chunks-v1`` table describing them."""
        offsets: list[int] = []
        lengths: list[int] = []

        def chunks() -> Iterator[Buffer]:
            for offset, data in blocks:
                offsets.append(offset)
                lengths.append(memoryview(data).nbytes)
                yield data

        ids = self.put_many(chunks(), level=level, stats=stats)
        return chunk_table(offsets, lengths, np.frombuffer(b"".join(ids), "V16"))

    def _intake(
        self, chunk: Buffer, ids: list[bytes], stats: PutStats, window: dict[bytes, bytes]
    ) -> tuple[bytes, bytes] | None:
        view = memoryview(chunk)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        size = view.nbytes
        if size > self.max_chunk:
            raise InvalidInput(f"chunk of {size} bytes is above the store's max {self.max_chunk}")
        stats.chunks += 1
        stats.logical_bytes += size
        if is_zero(view):
            ids.append(ZERO_ID)
            stats.zero_chunks += 1
            stats.zero_bytes += size
            return None
        cid = chunk_id(view)
        ids.append(cid)
        if cid in self._pending or cid in window:
            stats.duplicate_chunks += 1
            stats.duplicate_bytes += size
            return None
        return cid, chunk if isinstance(chunk, bytes) else view.tobytes()

    def _submit(
        self, window: dict[bytes, bytes], inflight: deque[_Job], level: int, stats: PutStats
    ) -> None:
        """Hand the window's new chunks to the workers in jobs of about JOB_BYTES."""
        if not window:
            return
        known = index.present(self.db, list(window))
        batch: list[tuple[bytes, bytes]] = []
        batch_bytes = 0
        for cid, data in window.items():
            if cid in known:
                stats.duplicate_chunks += 1
                stats.duplicate_bytes += len(data)
                continue
            self._pending[cid] = None
            batch.append((cid, data))
            batch_bytes += len(data)
            if batch_bytes >= JOB_BYTES or len(batch) >= JOB_CHUNKS:
                self._queue(batch, inflight, level, stats)
                batch, batch_bytes = [], 0
        if batch:
            self._queue(batch, inflight, level, stats)

    def _queue(
        self, batch: list[tuple[bytes, bytes]], inflight: deque[_Job], level: int, stats: PutStats
    ) -> None:
        future = self._pool.submit(_encode_batch, batch, level)
        sizes = [(cid, len(data)) for cid, data in batch]
        inflight.append((future, sizes))
        self._inflight_bytes += sum(n for _, n in sizes)
        self._drain(inflight, INFLIGHT_BYTES, stats)

    def _drain(self, inflight: deque[_Job], limit: int, stats: PutStats) -> None:
        """Write finished frames in order until at most ``limit`` raw bytes are in flight."""
        while inflight and self._inflight_bytes > limit:
            future, sizes = inflight.popleft()
            self._inflight_bytes -= sum(n for _, n in sizes)
            try:
                blob, ends = future.result()
            except BaseException:
                for cid, _ in sizes:
                    self._pending.pop(cid, None)
                raise
            self._write_frames(blob, ends, sizes, stats)

    def _abandon(self, inflight: deque[_Job]) -> None:
        """After a failure: forget chunks queued but never written."""
        while inflight:
            future, sizes = inflight.popleft()
            future.cancel()
            for cid, raw_length in sizes:
                self._inflight_bytes -= raw_length
                if cid in self._pending and self._pending[cid] is None:
                    del self._pending[cid]

    def _write_frames(
        self, blob: bytes, ends: list[int], sizes: list[tuple[bytes, int]], stats: PutStats
    ) -> None:
        """Append a job's frames (back to back in ``blob``, each ending at ``ends``) to the
        open pack, a new pack once it reaches its limit (the frame that crosses it still goes
        in); index rows pending until ``flush``."""
        limit = self.config["pack_limit"]
        at = 0
        while at < len(ends):
            if self._writer is None:
                self._writer = PackWriter(self.root / "packs", self.root / "tmp")
            writer = self._writer
            start = ends[at - 1] if at else 0
            end = min(bisect.bisect_left(ends, start + limit - writer.size, at) + 1, len(ends))
            base = writer.append(memoryview(blob)[start : ends[end - 1]]) - start
            starts = [start, *ends[at : end - 1]]
            rows = [
                (cid, writer.name, base + a, b - a, raw_length)
                for (cid, raw_length), a, b in zip(sizes[at:end], starts, ends[at:end], strict=True)
            ]
            self._pending.update((row[0], Location(*row[1:])) for row in rows)
            self._rows += rows
            stats.new_chunks += len(rows)
            stats.new_bytes += sum(row[4] for row in rows)
            stats.stored_bytes += ends[end - 1] - start
            at = end
            if writer.size >= limit:
                self.flush()
                writer.close()
                self._writer = None
            elif len(self._rows) >= FLUSH_ROWS:
                self.flush()

    def flush(self) -> None:
        """Make every chunk written so far durable and visible to other processes."""
        if not self._rows:
            return
        assert self._writer is not None or not self._rows
        # The pack's fsync runs while SQLite takes the rows; they commit only after it.
        synced = self._writer.sync_in_background() if self._writer is not None else None
        index.insert(self.db, self._rows, before_commit=synced)
        self._rows = []
        self._pending = {cid: loc for cid, loc in self._pending.items() if loc is None}

    # -- reading chunks ------------------------------------------------------------------
    def get_many(
        self, ids: Iterable[bytes], lengths: Iterable[int] | None = None
    ) -> Iterator[bytes]:
        """The verified bytes of each chunk, in order. A zero id needs its length."""
        pairs = zip(ids, lengths, strict=True) if lengths is not None else ((i, None) for i in ids)
        inflight: deque[Future[list[bytes]] | list[bytes]] = deque()
        window: list[tuple[bytes, int | None]] = []
        for pair in pairs:
            window.append((bytes(pair[0]), pair[1]))
            if len(window) >= READ_WINDOW:
                yield from self._fetch(window, inflight)
                window = []
        yield from self._fetch(window, inflight)
        while inflight:
            yield from _value(inflight.popleft())

    def get(self, cid: bytes, length: int | None = None) -> bytes:
        return next(self.get_many([cid], None if length is None else [length]))

    def _fetch(
        self,
        window: list[tuple[bytes, int | None]],
        inflight: deque[Future[list[bytes]] | list[bytes]],
    ) -> Iterator[bytes]:
        """Read a window in jobs of READ_BATCH chunks (one future each, to keep overhead low)."""
        places = self.locate([cid for cid, _ in window if cid != ZERO_ID])
        batch: list[tuple[bytes, Location, int | None]] = []
        for cid, length in window:
            if cid == ZERO_ID:
                if length is None:
                    raise InvalidInput("reading a zero chunk needs its length")
                if batch:
                    inflight.append(self._pool.submit(self._read_batch, batch))
                    batch = []
                inflight.append([_zeros(length)])
                continue
            place = places.get(cid)
            if place is None:
                raise NotFound(what=f"chunk {to_hex(cid)} (not in the store's index)")
            batch.append((cid, place, length))
            if len(batch) >= READ_BATCH:
                inflight.append(self._pool.submit(self._read_batch, batch))
                batch = []
            while len(inflight) > 4 * self.workers:
                yield from _value(inflight.popleft())
        if batch:
            inflight.append(self._pool.submit(self._read_batch, batch))

    def _read_batch(self, batch: list[tuple[bytes, Location, int | None]]) -> list[bytes]:
        for cid, place, length in batch:
            self.check_place(cid, place, length)
        out: list[bytes] = []
        for run in adjacent_runs(((cid, place) for cid, place, _ in batch), RUN_SPAN):
            data, starts = self.read_run(run)
            view = memoryview(data)
            out += [bytes(view[a:b]) for a, b in itertools.pairwise(starts)]
        return out

    def read_run(
        self,
        run: list[tuple[bytes, Location]],
        on_error: Callable[[int, StrataError], None] | None = None,
    ) -> tuple[bytearray, list[int]]:
        """The verified bytes of ``run`` (chunks whose frames lie close together in one pack,
        as ``adjacent_runs`` gives them) back to back, and where each starts (one more entry:
        the end).  One ``pread`` and one call of the C decoder; a chunk that fails raises, or
        goes to ``on_error`` with its index in ``run``."""
        head, tail = run[0][1], run[-1][1]
        starts = list(itertools.accumulate((p.raw_length for _, p in run), initial=0))
        out = bytearray(starts[-1])
        try:
            blob = self.packs.read(head.pack, head.offset, tail.offset + tail.length - head.offset)
        except TruncatedImage:  # the pack ends early: find which frames, one by one
            for i, (cid, place) in enumerate(run):
                try:
                    out[starts[i] : starts[i + 1]] = self.read_chunk(cid, place)
                except StrataError as e:
                    if on_error is None:
                        raise
                    on_error(i, e)
            return out, starts
        plan = np.array(
            [
                (p.offset - head.offset, p.length, at, p.raw_length)
                for (_, p), at in zip(run, starts[:-1], strict=True)
            ],
            np.int64,
        )
        ids = np.frombuffer(b"".join(cid for cid, _ in run), "V16")
        self.decode_run_into(head.pack, head.offset, blob, plan, ids, memoryview(out), on_error)
        return out, starts

    def locate(self, ids: list[bytes]) -> dict[bytes, Location]:
        found = {cid: loc for cid in ids if (loc := self._pending.get(cid)) is not None}
        if found and self._writer is not None:
            self._writer.drain()  # written by this handle, maybe still queued for the file
        rest = [cid for cid in ids if cid not in found]
        if rest:
            found.update(index.locate(self.db, rest))
        return found

    def locate_committed(self, ids: list[bytes]) -> dict[bytes, Location]:
        """Where committed chunks are, asked on a connection of its own: safe from a
        read-ahead thread while this handle writes on its main one (finalize reads a base
        from the store while it stores the delta)."""
        with self._reader_lock:
            if self._reader_db is None:
                self._reader_db = connect(
                    self.root / "catalog.db", create=False, any_thread=True, readonly=self.readonly
                )
            return index.locate(self._reader_db, ids)

    def read_chunk(self, cid: bytes, place: Location, length: int | None = None) -> bytes:
        self.check_place(cid, place)
        frame = self.packs.read(place.pack, place.offset, place.length)
        return self.decode_chunk(cid, place, frame, length)

    def check_place(self, cid: bytes, place: Location, length: int | None = None) -> None:
        """Refuse an index entry whose sizes no chunk of this store can have, or (given the
        table's ``length`` of the chunk) that disagrees with the table, before reading."""
        if place.raw_length > self.max_chunk or place.length > 2 * self.max_chunk + 4096:
            raise CorruptImage(
                path=self.root / "catalog.db",
                structure="index entry",
                problem=f"chunk {to_hex(cid)} declares {place.raw_length} bytes",
                field="raw_length",
            )
        if length is not None and place.raw_length != length:
            raise CorruptImage(
                path=f"{self._packs_dir}/{place.pack}",
                structure="chunk",
                problem=f"chunk {to_hex(cid)} holds {place.raw_length} bytes, "
                f"the table says {length}",
                offset=place.offset,
            )

    def decode_chunk_into(
        self, cid: bytes, place: Location, frame: Buffer, out: memoryview
    ) -> None:
        """Decode chunk ``cid`` from its ``frame`` straight into ``out`` (the table's length
        of the chunk), verified, without holding the GIL while zstd runs."""
        self.check_place(cid, place, len(out))
        where = Where(f"{self._packs_dir}/{place.pack}", place.offset)
        decode_into(frame, where, CHUNK_MAGIC, self.max_chunk, cid, out)

    def decode_run_into(
        self,
        pack: str,
        base: int,
        blob: Buffer,
        plan: np.ndarray,
        ids: np.ndarray,
        out: memoryview,
        on_error: Callable[[int, StrataError], None] | None = None,
    ) -> None:
        """Decode the frames ``plan`` names (int64 rows: offset in ``blob``, frame length,
        offset in ``out``, raw length), all read from ``pack`` at offset ``base``, into
        ``out``, each verified against its id in ``ids`` (V16).  One call of the C decoder for
        the run; a frame it refuses is decoded again by the reference, which raises the error
        that names it, or, given ``on_error``, hands it over with the frame's row and goes on
        with the next frame."""
        plan = np.ascontiguousarray(plan, np.int64)
        start = 0
        while start < len(plan):
            failed = decode_frames(
                blob, plan[start:], ids[start:].tobytes(), out, CHUNK_MAGIC, self.max_chunk
            )
            if failed < 0:
                return
            row = start + failed
            try:
                self._name_failure(pack, base, blob, plan[row], bytes(ids[row]), out)
            except StrataError as e:
                if on_error is None:
                    raise
                on_error(row, e)
            start = row + 1

    def _name_failure(
        self, pack: str, base: int, blob: Buffer, row: np.ndarray, cid: bytes, out: memoryview
    ) -> None:
        """Raise the reference's error for a frame the C decoder refused."""
        at, length, dest, raw = (int(x) for x in row)
        place = Location(pack, base + at, length, raw)
        frame = memoryview(blob)[at : at + length]
        self.decode_chunk_into(cid, place, frame, out[dest : dest + raw])
        raise IntegrityError(
            what=f"chunk {to_hex(cid)}: the C frame decoder refused a frame its reference accepts"
        )

    def decode_chunk(
        self, cid: bytes, place: Location, frame: Buffer, length: int | None = None
    ) -> bytes:
        """The verified bytes of chunk ``cid`` from its ``frame``, read from ``place``."""
        where = Where(f"{self._packs_dir}/{place.pack}", place.offset)  # hot: no pathlib
        data = decode(frame, where, CHUNK_MAGIC, self.max_chunk, cid)
        if length is not None and len(data) != length:
            raise CorruptImage(
                path=where.path,
                structure="chunk",
                problem=f"chunk {to_hex(cid)} holds {len(data)} bytes, the table says {length}",
                offset=place.offset,
            )
        return data

    # -- manifests and commits -----------------------------------------------------------
    def manifest_path(self, mid: bytes) -> Path:
        text = to_hex(mid)
        return self.root / "manifests" / text[:2] / f"{text}.manifest"

    def put_manifest(self, manifest: Manifest) -> bytes:
        """Write the manifest durably; its id."""
        raw = manifest.to_bytes()
        if len(raw) > self.config["max_manifest"]:
            raise InvalidInput(f"manifest of {len(raw)} bytes is above the store's maximum")
        mid = chunk_id(raw)
        path = self.manifest_path(mid)
        if not path.exists():
            durable_write(path, encode(raw, mid, 3, MANIFEST_MAGIC), self.root / "tmp")
        return mid

    def get_manifest(self, mid: bytes) -> Manifest:
        path = self.manifest_path(mid)
        cap = self.config["max_manifest"]
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > 2 * cap + 4096:
                    raise CorruptImage(
                        path=path, structure="manifest", problem=f"{size} bytes is too large"
                    )
                buf = f.read(size)
        except FileNotFoundError as e:
            raise NotFound(what=f"manifest {to_hex(mid)} ({path})") from e
        raw = decode(buf, Where(str(path), 0), MANIFEST_MAGIC, cap, mid)
        return parse(raw, str(path))

    def _checked_sizes(self, manifest: Manifest, mid: bytes) -> tuple[int, int]:
        ids = manifest.chunk_ids()
        absent = index.missing(self.db, ids)
        if absent:
            raise NotFound(
                what=f"chunk {to_hex(absent[0])} named by manifest {to_hex(mid)}"
                + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
            )
        return manifest.logical_size(), index.stored_bytes(self.db, ids)

    def commit_version(self, layer: str, version: str, mid: bytes, comment: str = "") -> None:
        """finalizing -> deployable, once its chunks and manifest are durable."""
        self.flush()
        try:
            state = self.catalog.version(layer, version)["state"]
            if state != "finalizing":
                raise StateError(
                    what=f"version {version!r} of {layer!r} is {state}; only a finalizing "
                    "version can be committed"
                )
            manifest = self.get_manifest(mid)
            with transaction(self.db):
                logical, stored = self._checked_sizes(manifest, mid)
                self.catalog.commit(layer, version, mid, logical, stored, comment)
        except StrataError as e:
            self.catalog.log(
                "commit-version",
                "failed",
                layer=layer,
                version=version,
                comment=comment,
                details={"error": e.message},
            )
            raise

    def commit_image(
        self, name: str, mid: bytes, template: dict[str, Any], comment: str = ""
    ) -> None:
        self.flush()
        manifest = self.get_manifest(mid)
        with transaction(self.db):
            logical, stored = self._checked_sizes(manifest, mid)
            self.catalog.add_image(name, mid, template, logical, stored, comment)

    def claim_version(self, layer: str, version: str) -> AbstractContextManager[None]:
        """This process's claim on ``layer:version`` (an import, a finalize, a delete): another
        process claiming it meanwhile gets Conflict before it changes anything."""
        key = to_hex(chunk_id(json.dumps([layer, version]).encode()))
        what = f"work on {layer}:{version} (an import, finalize or delete)"
        return claim(self.root / "tmp" / f"claim-{key}.lock", what)

    # -- facts ---------------------------------------------------------------------------
    def pack_files(self) -> list[Path]:
        return sorted((self.root / "packs").glob("*.pack"))

    def stats(self) -> dict[str, Any]:
        chunks, raw, stored = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(raw_length), 0), COALESCE(SUM(length), 0) FROM chunks"
        ).fetchone()
        versions, logical = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(logical_size), 0) FROM versions"
            " WHERE manifest IS NOT NULL"
        ).fetchone()
        images, image_logical = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(logical_size), 0) FROM images"
        ).fetchone()
        packs = self.pack_files()
        pack_bytes = sum(p.stat().st_size for p in packs)
        logical_all = logical + image_logical
        return {
            "store": str(self.root),
            "layers": self.db.execute("SELECT COUNT(*) FROM layers").fetchone()[0],
            "versions": versions,
            "images": images,
            "chunks": chunks,
            "logical_bytes": logical_all,
            "unique_bytes": raw,
            "stored_bytes": stored,
            "pack_files": len(packs),
            "pack_bytes": pack_bytes,
            "reclaimable_bytes": max(0, pack_bytes - stored - 16 * len(packs)),
            "dedup_ratio": round(logical_all / raw, 3) if raw else None,
            "compression_ratio": round(raw / stored, 3) if stored else None,
            "manifests": sum(1 for _ in (self.root / "manifests").glob("*/*.manifest")),
        }


def _value(item: Future[list[bytes]] | list[bytes]) -> list[bytes]:
    return item if isinstance(item, list) else item.result()


@functools.lru_cache(maxsize=8)
def _zeros(length: int) -> bytes:
    return bytes(length)


def adjacent_runs(
    items: Iterable[tuple[K, Location]], max_span: int
) -> Iterator[list[tuple[K, Location]]]:
    """Consecutive ``items`` grouped into runs whose frames one ``pread`` of at most
    ``max_span`` bytes covers (same pack, each starting at most ``MERGE_GAP`` after the last)
    and whose decoded bytes add up to at most ``max_span`` too (a run of well-compressed
    frames would otherwise decode to many times its span)."""
    run: list[tuple[K, Location]] = []
    raw = 0
    for item in items:
        place = item[1]
        if run:
            head, prev = run[0][1], run[-1][1]
            gap = place.offset - (prev.offset + prev.length)
            if (
                place.pack != prev.pack
                or not 0 <= gap <= MERGE_GAP
                or place.offset + place.length - head.offset > max_span
                or raw + place.raw_length > max_span
            ):
                yield run
                run, raw = [], 0
        run.append(item)
        raw += place.raw_length
    if run:
        yield run
