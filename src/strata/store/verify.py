"""``verify``: read every indexed chunk and every live manifest back and check them.

References: strata store format 1. A problem names the chunk (id, pack, offset) and every
layer version or image whose manifest uses it. Bytes in packs that no index row names
(left by a crash or a lost race) and indexed chunks no manifest uses are not problems:
they are reported as reclaimable, and ``gc`` removes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from strata.errors import StrataError
from strata.store.chunkstore import RUN_SPAN, Store, adjacent_runs
from strata.store.ids import to_hex
from strata.store.index import Location, load_id_set, missing
from strata.store.manifest import ID_DTYPE, LiveSet
from strata.store.packs import check_pack_header

Progress = Callable[[int, int], None]


@dataclass
class Problem:
    kind: str  # pack | chunk | manifest | missing-chunk
    message: str
    chunk: str | None = None
    pack: str | None = None
    offset: int | None = None
    manifest: str | None = None
    users: list[str] = field(default_factory=list)


def verify(store: Store, progress: Progress | None = None) -> dict[str, Any]:
    problems: list[Problem] = []
    indexed = {r[0] for r in store.db.execute("SELECT DISTINCT pack FROM chunks")}
    for path in store.pack_files():
        if path.name not in indexed:
            continue  # nothing committed lives there: garbage for gc, not damage
        try:
            check_pack_header(path)
        except StrataError as e:
            problems.append(Problem("pack", e.message, pack=path.name))
    checked, checked_bytes, bad = _check_chunks(store, progress)
    uses = _manifest_uses(store, list(bad))
    unread = any(p.kind == "manifest" for p in uses.problems)
    for cid, (place, message) in bad.items():
        users = uses.users.get(cid, [])
        problems.append(
            Problem("chunk", message, to_hex(cid), place.pack, place.offset, users=users)
        )
    problems += uses.problems
    return {
        "store": str(store.root),
        "clean": not problems,
        "problems": [asdict(p) for p in problems],
        "chunks_checked": checked,
        "bytes_checked": checked_bytes,
        "manifests_checked": uses.readable,
        **_reclaimable(store, uses.live.ids(), every_manifest_read=not unread),
    }


@dataclass
class _Uses:
    live: LiveSet = field(default_factory=LiveSet)
    users: dict[bytes, list[str]] = field(default_factory=dict)  # of the damaged chunks
    problems: list[Problem] = field(default_factory=list)
    readable: int = 0


def _manifest_uses(store: Store, damaged: list[bytes]) -> _Uses:
    """Every live manifest read once, one at a time (memory: one manifest and the distinct
    live set): its ids gathered, who uses each ``damaged`` chunk, a problem for each chunk it
    names that the store lacks, and one for each manifest that cannot be read."""
    out = _Uses()
    damaged_ids = np.frombuffer(b"".join(damaged), ID_DTYPE)
    for mid, who in store.catalog.live_manifests():
        try:
            ids = store.get_manifest(mid).chunk_ids()
        except StrataError as e:
            out.problems.append(Problem("manifest", e.message, manifest=to_hex(mid), users=[who]))
            continue
        out.readable += 1
        out.live.add(ids)
        for k in np.flatnonzero(np.isin(damaged_ids, ids)).tolist():
            out.users.setdefault(damaged[k], []).append(who)
        for cid in missing(store.db, ids):
            out.problems.append(
                Problem(
                    "missing-chunk",
                    f"manifest {to_hex(mid)} names chunk {to_hex(cid)}, which the store lacks",
                    chunk=to_hex(cid),
                    manifest=to_hex(mid),
                    users=[who],
                )
            )
    return out


def _rows(store: Store) -> Iterator[tuple[bytes, Location]]:
    cursor = store.db.execute(
        "SELECT id, pack, offset, length, raw_length FROM chunks ORDER BY pack, offset"
    )
    for row in cursor:
        yield bytes(row[0]), Location(*row[1:])


def _check_chunks(
    store: Store, progress: Progress | None
) -> tuple[int, int, dict[bytes, tuple[Location, str]]]:
    """Every indexed chunk read back and verified, in pack order, streamed from the index
    (memory stays the runs in flight, whatever the store's size), each run of adjacent frames
    in one job: one pread and one call of the C decoder, on the store's workers."""
    total = store.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    inflight: deque[Future[_RunResult]] = deque()
    bad: dict[bytes, tuple[Location, str]] = {}
    done = checked_bytes = 0

    def settle() -> None:
        nonlocal done, checked_bytes
        count, good_bytes, failures = inflight.popleft().result()
        done += count
        checked_bytes += good_bytes
        bad.update(failures)
        if progress:
            progress(done, total)

    for run in adjacent_runs(_rows(store), RUN_SPAN):
        inflight.append(store._pool.submit(_check_run, store, run))
        if len(inflight) >= 2 * store.workers:
            settle()
    while inflight:
        settle()
    return done, checked_bytes, bad


_RunResult = tuple[int, int, dict[bytes, tuple[Location, str]]]


def _check_run(store: Store, run: list[tuple[bytes, Location]]) -> _RunResult:
    """(chunks, verified bytes, failures) of one run; a failure never stops the others."""
    bad: dict[bytes, tuple[Location, str]] = {}
    plausible = []
    for cid, place in run:
        try:
            store.check_place(cid, place)
            plausible.append((cid, place))
        except StrataError as e:
            bad[cid] = (place, e.message)
    good = 0
    for part in adjacent_runs(plausible, RUN_SPAN):
        failed: dict[int, StrataError] = {}
        store.read_run(part, on_error=failed.__setitem__)
        for i, (cid, place) in enumerate(part):
            if i in failed:
                bad[cid] = (place, failed[i].message)
            else:
                good += place.raw_length
    return len(run), good, bad


def _reclaimable(store: Store, live: np.ndarray, every_manifest_read: bool) -> dict[str, Any]:
    """What gc would free.  While a live manifest cannot be read, the chunks only it names
    would count as orphans, and gc refuses to run: the orphans are then unknown (None)."""
    orphans = orphan_bytes = None
    if every_manifest_read:
        load_id_set(store.db, "live", live)
        orphans, orphan_bytes = store.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length), 0) FROM chunks"
            " WHERE id NOT IN (SELECT id FROM live)"
        ).fetchone()
    indexed = store.db.execute("SELECT COALESCE(SUM(length), 0) FROM chunks").fetchone()[0]
    packs = store.pack_files()
    on_disk = sum(p.stat().st_size for p in packs)
    return {
        "orphan_chunks": orphans,
        "orphan_bytes": orphan_bytes,
        "unindexed_pack_bytes": max(0, on_disk - indexed - 16 * len(packs)),
    }
