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
from dataclasses import dataclass

import numpy as np

from strata.blockdev.base import BaseDevice, Extent, ExtentState, zero_fill
from strata.errors import CorruptImage, NotFound
from strata.store import CHUNK_ROW, ZERO_ID, Store, to_hex
from strata.store.chunkstore import RUN_SPAN, adjacent_runs
from strata.store.index import Location


@dataclass
class _Plan:
    """The distinct chunks of one read, in pack order, as arrays: where each frame is and
    where its bytes go.  ``dest`` is the offset in the caller's buffer of a row that holds
    the chunk whole (decoded there), -1 when every row of it is cut by the read's ends (decoded
    into scratch); ``copies`` are the chunk's other places (chunk, dest lo, dest hi, src lo)."""

    ids: np.ndarray  # V16
    places: list[Location]
    offsets: np.ndarray  # int64 offset of the frame in its pack
    frame_lengths: np.ndarray  # int64
    lengths: np.ndarray  # int64 raw bytes
    dest: np.ndarray  # int64
    copies: dict[int, list[tuple[int, int, int]]]


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
        self._zero_gaps(first, last, offset, view)
        if first == last:
            return
        plan = self._plan(first, last, offset, end)
        jobs = _split(plan, self._threads)
        futures = [self._workers().submit(self._decode_into, plan, job, view) for job in jobs[1:]]
        try:
            if jobs:
                self._decode_into(plan, jobs[0], view)
        finally:
            wait(futures)  # no worker may write into ``view`` after we return
        for future in futures:
            future.result()

    def _zero_gaps(self, first: int, last: int, offset: int, view: memoryview) -> None:
        """Zero what no row of [first, last) covers."""
        end = offset + len(view)
        starts = np.maximum(self.starts[first:last], offset)
        ends = np.minimum(self.ends[first:last], end)
        gap_starts = np.concatenate(([offset], ends)).tolist()
        gap_ends = np.concatenate((starts, [end])).tolist()
        for lo, hi in zip(gap_starts, gap_ends, strict=True):
            if hi > lo:
                zero_fill(view[lo - offset : hi - offset])

    def _plan(self, first: int, last: int, offset: int, end: int) -> _Plan:
        starts, ends = self.starts[first:last], self.ends[first:last]
        ids, inverse = np.unique(self.rows["id"][first:last], return_inverse=True)
        places = self._locate(ids.tolist())
        self._check_lengths(ids, inverse, places, ends - starts)
        dest, copies = _destinations(starts, ends, inverse, len(ids), offset, end)
        order = _pack_order(places)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return _Plan(
            ids=ids[order],
            places=[places[i] for i in order.tolist()],
            offsets=np.array([places[i].offset for i in order.tolist()], np.int64),
            frame_lengths=np.array([places[i].length for i in order.tolist()], np.int64),
            lengths=np.array([places[i].raw_length for i in order.tolist()], np.int64),
            dest=dest[order],
            copies={int(rank[c]): t for c, t in copies.items()},
        )

    def _locate(self, ids: list[bytes]) -> list[Location]:
        found = self.store.locate_committed(ids)
        places = []
        for cid in ids:
            place = found.get(cid)
            if place is None:
                raise NotFound(what=f"chunk {to_hex(cid)} of this image (not in the store)")
            self.store.check_place(cid, place)
            places.append(place)
        return places

    def _check_lengths(
        self, ids: np.ndarray, inverse: np.ndarray, places: list[Location], table: np.ndarray
    ) -> None:
        """Every row as long as its chunk: a hostile table naming a chunk with another length
        would otherwise have the copies read past the decoded bytes."""
        stored = np.array([p.raw_length for p in places], np.int64)[inverse]
        bad = np.flatnonzero(stored != table)
        if len(bad):
            chunk = int(inverse[bad[0]])
            self.store.check_place(bytes(ids[chunk]), places[chunk], int(table[bad[0]]))

    def _decode_into(self, plan: _Plan, job: range, view: memoryview) -> None:
        """Decode ``plan``'s chunks ``job``: each pread's run of frames in one call of the
        store's decoder, into the row that holds each whole, then copy each to its others."""
        for group in _adjacent(plan, job):
            lo, hi = group.start, group.stop
            base = int(plan.offsets[lo])
            span = int(plan.offsets[hi - 1] + plan.frame_lengths[hi - 1]) - base
            pack = plan.places[lo].pack
            blob = memoryview(self.store.packs.read(pack, base, span))
            direct = np.flatnonzero(plan.dest[lo:hi] >= 0) + lo
            rows = np.stack(
                (
                    plan.offsets[direct] - base,
                    plan.frame_lengths[direct],
                    plan.dest[direct],
                    plan.lengths[direct],
                ),
                axis=1,
            )
            self.store.decode_run_into(pack, base, blob, rows, plan.ids[direct], view)
            for chunk in group:
                if plan.dest[chunk] >= 0 and chunk not in plan.copies:
                    continue
                self._copy_out(plan, chunk, base, blob, view)

    def _copy_out(
        self, plan: _Plan, chunk: int, base: int, blob: memoryview, view: memoryview
    ) -> None:
        """Copy ``chunk`` to its other places, decoding it into scratch first when no place
        holds it whole."""
        length, dest = int(plan.lengths[chunk]), int(plan.dest[chunk])
        if dest >= 0:
            data = view[dest : dest + length]
        else:
            place = plan.places[chunk]
            at = place.offset - base
            data = memoryview(bytearray(length))
            frame = blob[at : at + place.length]
            self.store.decode_chunk_into(bytes(plan.ids[chunk]), place, frame, data)
        for lo, hi, src in plan.copies.get(chunk, ()):
            view[lo:hi] = data[src : src + hi - lo]

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


def _destinations(
    starts: np.ndarray, ends: np.ndarray, inverse: np.ndarray, chunks: int, offset: int, end: int
) -> tuple[np.ndarray, dict[int, list[tuple[int, int, int]]]]:
    """Per chunk, the offset in the read of the first row that holds it whole (-1: none
    does), and the places of its other rows (dest lo, dest hi, src lo)."""
    count = len(starts)
    whole = np.where((starts >= offset) & (ends <= end), np.arange(count), count)
    chosen = np.full(chunks, count)
    np.minimum.at(chosen, inverse, whole)
    dest = np.where(chosen < count, starts[np.minimum(chosen, count - 1)] - offset, -1)
    copies: dict[int, list[tuple[int, int, int]]] = {}
    for row in np.flatnonzero(np.arange(count) != chosen[inverse]).tolist():
        lo, hi = max(int(starts[row]), offset), min(int(ends[row]), end)
        copies.setdefault(int(inverse[row]), []).append(
            (lo - offset, hi - offset, lo - int(starts[row]))
        )
    return dest, copies


def _pack_order(places: list[Location]) -> np.ndarray:
    """Indexes of ``places`` sorted by pack, then offset: the order frames lie on disk."""
    names = {name: code for code, name in enumerate(sorted({p.pack for p in places}))}
    offsets = np.array([p.offset for p in places], np.int64)
    return np.lexsort((offsets, np.array([names[p.pack] for p in places])))


def _adjacent(plan: _Plan, job: range) -> Iterator[range]:
    """Runs of ``job``'s chunks (in pack order) whose frames one pread can cover: the store's
    own rule (``adjacent_runs``), over the plan's indexes."""
    items = zip(job, plan.places[job.start : job.stop], strict=True)
    for run in adjacent_runs(items, RUN_SPAN):
        yield range(run[0][0], run[-1][0] + 1)


def _split(plan: _Plan, parts: int) -> list[range]:
    """``plan``'s chunks cut into at most ``parts`` contiguous jobs of about equal stored bytes."""
    if not len(plan.offsets):
        return []
    weights = np.cumsum(plan.frame_lengths)
    bounds = np.searchsorted(weights, weights[-1] * np.arange(1, parts) / parts, side="right")
    edges = [0, *sorted(set(int(b) for b in bounds)), len(weights)]
    return [range(a, b) for a, b in itertools.pairwise(edges) if b > a]
