"""A composed image (or any block table) in the store, read as a BlockDevice.

A read decodes the distinct chunks its rows name on the store's worker threads, straight
into the caller's buffer, in as many jobs as there are workers: per-chunk futures cost more
than the decode of a 64 KiB chunk.  Frames adjacent in one pack are read with one ``pread``.
Read-ahead is the streaming caller's (``blockdev.copy.iter_blocks`` reads the next window on
a thread), so one read is in flight at a time and memory is the caller's buffers alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from strata.blockdev.base import BaseDevice, Extent, ExtentState, zero_fill
from strata.errors import CorruptImage, NotFound
from strata.store import CHUNK_ROW, ZERO_ID, Store, to_hex
from strata.store.index import Location

MERGE_GAP = 4096  # read two frames of a pack with one pread when this close


@dataclass
class _Chunk:
    """One distinct chunk of a read and where its bytes go in the caller's buffer."""

    cid: bytes
    place: Location
    length: int
    targets: list[tuple[int, int, int]] = field(default_factory=list)  # (dest lo, hi, src lo)


class StoreDevice(BaseDevice):
    """Rows of a ``chunks-v1`` table are DATA; everything else reads as zeros."""

    format_name = "store"

    def __init__(self, store: Store, table: np.ndarray, size: int, sector_size: int = 512) -> None:
        rows = np.asarray(table, CHUNK_ROW)
        rows = rows[rows["id"] != np.frombuffer(ZERO_ID, "V16")[0]]  # zero rows read as zeros
        order = np.argsort(rows["offset"], kind="stable")
        self.rows = rows[order]
        self.starts = self.rows["offset"].astype(np.int64)
        self.ends = self.starts + self.rows["length"].astype(np.int64)
        if len(self.rows) and (
            np.any(self.starts[1:] < self.ends[:-1]) or int(self.ends[-1]) > size
        ):
            raise CorruptImage(
                path=str(store.root), structure="block table", problem="rows overlap or overrun"
            )
        # Reads locate chunks on a connection of their own (they may run on a read-ahead
        # thread while this handle stores), which sees committed chunks only.
        store.flush()
        self.store = store
        self._size = size
        self._sector_size = sector_size
        self._pool: ThreadPoolExecutor | None = None
        self._threads = max(1, store.workers)  # the caller's thread decodes one job

    def _rows_in(self, offset: int, end: int) -> tuple[int, int]:
        first = int(np.searchsorted(self.ends, offset, side="right"))
        last = int(np.searchsorted(self.starts, end, side="left"))
        return first, last

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads - 1, thread_name_prefix="strata-read")
        return self._pool

    def _readinto(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        first, last = self._rows_in(offset, end)
        chunks = self._plan(first, last, offset, end)
        pos = offset
        starts, ends = self.starts[first:last].tolist(), self.ends[first:last].tolist()
        for start, stop in zip(starts, ends, strict=True):
            if start > pos:
                zero_fill(view[pos - offset : start - offset])
            pos = max(pos, min(stop, end))
        if pos < end:
            zero_fill(view[pos - offset :])
        jobs = _split(chunks, self._threads)
        futures = [self._workers().submit(self._decode_into, job, view) for job in jobs[1:]]
        try:
            if jobs:
                self._decode_into(jobs[0], view)
        finally:
            wait(futures)  # no worker may write into ``view`` after we return
        for future in futures:
            future.result()

    def _plan(self, first: int, last: int, offset: int, end: int) -> list[_Chunk]:
        """The distinct chunks of rows [first, last), in pack order, with their targets."""
        rows = self.rows[first:last]
        chunks: dict[bytes, _Chunk] = {}
        ids = [bytes(cid) for cid in rows["id"]]
        places = self.store.locate_committed(list(dict.fromkeys(ids)))
        for cid, start, stop in zip(
            ids, self.starts[first:last].tolist(), self.ends[first:last].tolist(), strict=True
        ):
            chunk = chunks.get(cid)
            if chunk is None:
                place = places.get(cid)
                if place is None:
                    raise NotFound(what=f"chunk {to_hex(cid)} of this image (not in the store)")
                self.store.check_place(cid, place, stop - start)
                chunk = chunks[cid] = _Chunk(cid, place, stop - start)
            lo, hi = max(start, offset), min(stop, end)
            chunk.targets.append((lo - offset, hi - offset, lo - start))
        return sorted(chunks.values(), key=lambda c: (c.place.pack, c.place.offset))

    def _decode_into(self, chunks: list[_Chunk], view: memoryview) -> None:
        """Each chunk is decoded into the first place in ``view`` that holds it whole (a
        scratch buffer when none does: a row cut by the read's ends), then copied to the
        others.  The whole ones of one pread go to the store's decoder in one call."""
        for group in _adjacent(chunks):
            head = group[0].place
            tail = group[-1].place
            span = tail.offset + tail.length - head.offset
            blob = memoryview(self.store.packs.read(head.pack, head.offset, span))
            wholes = [(chunk, _whole(chunk)) for chunk in group]
            run = [(c.cid, c.place, whole[0]) for c, whole in wholes if whole is not None]
            self.store.decode_run_into(head.offset, blob, run, view)
            for chunk, whole in wholes:
                if whole is None:
                    at = chunk.place.offset - head.offset
                    data = memoryview(bytearray(chunk.length))
                    frame = blob[at : at + chunk.place.length]
                    self.store.decode_chunk_into(chunk.cid, chunk.place, frame, data)
                else:
                    data = view[whole[0] : whole[1]]
                _copy_to_targets(chunk, whole, data, view)

    def _extents(self, offset: int, length: int) -> Iterator[Extent]:
        end = offset + length
        first, last = self._rows_in(offset, end)
        starts, ends = self.starts[first:last], self.ends[first:last]
        breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        run_starts = np.concatenate((starts[:1], starts[breaks]))
        run_ends = np.concatenate((ends[breaks - 1], ends[-1:])) if len(starts) else ends[:0]
        pos = offset
        for s, e in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
            s, e = max(s, offset), min(e, end)
            if s > pos:
                yield Extent(pos, s - pos, ExtentState.ZERO)
            yield Extent(s, e - s, ExtentState.DATA)
            pos = e
        if pos < end:
            yield Extent(pos, end - pos, ExtentState.ZERO)

    def close(self) -> None:
        """Stop the workers; the store belongs to the caller."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _whole(chunk: _Chunk) -> tuple[int, int, int] | None:
    return next((t for t in chunk.targets if t[1] - t[0] == chunk.length), None)


def _copy_to_targets(
    chunk: _Chunk, whole: tuple[int, int, int] | None, data: memoryview, view: memoryview
) -> None:
    for target in chunk.targets:
        if target is not whole:
            lo, hi, src = target
            view[lo:hi] = data[src : src + hi - lo]


def _adjacent(chunks: list[_Chunk]) -> Iterator[list[_Chunk]]:
    """Runs of chunks (sorted by pack and offset) whose frames one pread can cover."""
    group: list[_Chunk] = []
    for chunk in chunks:
        if group:
            prev = group[-1].place
            if chunk.place.pack != prev.pack or not (
                0 <= chunk.place.offset - (prev.offset + prev.length) <= MERGE_GAP
            ):
                yield group
                group = []
        group.append(chunk)
    if group:
        yield group


def _split(chunks: list[_Chunk], parts: int) -> list[list[_Chunk]]:
    """``chunks`` cut into at most ``parts`` contiguous jobs of about equal stored bytes."""
    if not chunks:
        return []
    weights = np.cumsum([c.place.length for c in chunks])
    bounds = np.searchsorted(weights, weights[-1] * np.arange(1, parts) / parts, side="right")
    edges = [0, *sorted(set(int(b) for b in bounds)), len(chunks)]
    return [chunks[a:b] for a, b in itertools.pairwise(edges) if b > a]
