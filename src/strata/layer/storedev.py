"""A composed image (or any block table) in the store, read as a BlockDevice.

Reads are sequential in practice (every writer streams), so the device decodes the next
window's chunks on worker threads while the caller writes the current one, and decodes a
chunk that repeats inside a window once.  Memory: two windows of decoded chunks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from strata.blockdev.base import BaseDevice, Extent, ExtentState, zero_fill
from strata.errors import CorruptImage, NotFound
from strata.store import CHUNK_ROW, ZERO_ID, Store, to_hex


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
        self.store = store
        self._size = size
        self._sector_size = sector_size
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[bytes, Future[bytes]] = {}

    def _rows_in(self, offset: int, end: int) -> tuple[int, int]:
        first = int(np.searchsorted(self.ends, offset, side="right"))
        last = int(np.searchsorted(self.starts, end, side="left"))
        return first, last

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="strata-read")
        return self._pool

    def _submit(self, first: int, last: int) -> dict[bytes, Future[bytes]]:
        """Futures for the distinct chunks of rows [first, last), reusing read-ahead ones."""
        rows = self.rows[first:last]
        wanted = {bytes(cid): int(n) for cid, n in zip(rows["id"], rows["length"], strict=True)}
        futures = {cid: f for cid in wanted if (f := self._pending.get(cid)) is not None}
        missing = [cid for cid in wanted if cid not in futures]
        places = self.store.locate(missing) if missing else {}
        for cid in missing:
            place = places.get(cid)
            if place is None:
                raise NotFound(what=f"chunk {to_hex(cid)} of this image (not in the store)")
            futures[cid] = self._workers().submit(self.store.read_chunk, cid, place, wanted[cid])
        return futures

    def _readinto(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        first, last = self._rows_in(offset, end)
        current = self._submit(first, last)
        ahead = self._rows_in(end, min(self._size, end + len(view)))
        upcoming = self._submit(*ahead) if ahead[0] < ahead[1] else {}
        self._pending = {**current, **upcoming}
        rows = self.rows[first:last]
        pos = offset
        chunks = (current[bytes(cid)].result() for cid in rows["id"])
        for start, stop, data in zip(
            self.starts[first:last], self.ends[first:last], chunks, strict=True
        ):
            lo, hi = max(int(start), offset), min(int(stop), end)
            if lo > pos:
                zero_fill(view[pos - offset : lo - offset])
            view[lo - offset : hi - offset] = memoryview(data)[lo - int(start) : hi - int(start)]
            pos = hi
        if pos < end:
            zero_fill(view[pos - offset :])

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
        """Stop the read-ahead; the store belongs to the caller."""
        for future in self._pending.values():
            future.cancel()
        self._pending = {}
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
